"""Checks shared by the built-in tasks, and the key=value pass-through of reasoning-gym dataset fields."""

from __future__ import annotations

from typing import Any

from isopo_bench.config import parse_key_values
from isopo_bench.errors import ConfigError

FIELD = "task.dataset_params"


def parse_params(items: tuple[str, ...], task_name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """Defaults overridden by key=value `items`, converted to the defaults' types; unknown keys raise."""
    given = parse_key_values(FIELD, items)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(
            FIELD, f"task `{task_name}` has no setting {', '.join(unknown)}", f"known: {', '.join(sorted(defaults))}"
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
        raise ConfigError(f"task.{key}", f"{value} is outside [{low}, {high}]", f"choose a value in [{low}, {high}]")
