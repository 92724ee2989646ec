"""Parsing and checking of `task.params` (key=value strings) shared by the built-in tasks."""

from __future__ import annotations

from typing import Any

from isopo_bench.config import TaskConfig, parse_key_values
from isopo_bench.errors import ConfigError

FIELD = "task.params"


def parse_params(cfg: TaskConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    """Defaults overridden by cfg.params, converted to the defaults' types; unknown keys raise."""
    given = parse_key_values(FIELD, cfg.params)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(
            FIELD, f"task `{cfg.name}` has no setting {', '.join(unknown)}", f"known: {', '.join(sorted(defaults))}"
        )
    out = dict(defaults)
    for key, text in given.items():
        out[key] = _convert(key, text, type(defaults[key]))
    return out


def _convert(key: str, text: str, kind: type) -> Any:
    if kind is bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(FIELD, f"`{key}={text}` is not a boolean", f"write {key}=true or {key}=false")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(FIELD, f"`{key}={text}` is not a {kind.__name__}", f"give {key} a {kind.__name__}") from None


def check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(FIELD, f"{key}={value} is outside [{low}, {high}]", f"choose {key} in [{low}, {high}]")
