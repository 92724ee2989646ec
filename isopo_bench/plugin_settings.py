"""Plug-ins own their settings: resolving a config's `settings` against the registered class, building the
narrow `AlgorithmSetup` a plug-in sees, and the presets the plug-ins declare.

The core config (isopo_bench.config) holds `settings: Any` for the algorithm and the task; what type it
must be is known only to the registry, so everything that needs the concrete type comes through here.
"""

from __future__ import annotations

import dataclasses

from isopo_bench.algorithm_api import Algorithm, AlgorithmPreset, AlgorithmSetup
from isopo_bench.config import AlgorithmConfig, RunConfig, TaskConfig
from isopo_bench.errors import ConfigError, UnknownNameError
from isopo_bench.plugins import ALGORITHMS, TASKS

# The shared algorithm fields; a plug-in's own field may not reuse one of these names (its flag would clash).
SHARED_ALGORITHM_FIELDS = frozenset(f.name for f in dataclasses.fields(AlgorithmConfig))


def settings_of(registry, kind_field: str, name: str, given):
    """`given` checked against the plug-in's `Settings` class (None -> its defaults)."""
    cls = registry.get(name)
    settings_cls = getattr(cls, "Settings", None)
    if settings_cls is None:
        if given is not None:
            raise ConfigError(f"{kind_field}.settings", f"`{name}` takes no settings", "leave settings unset")
        return None
    if given is None:
        return settings_cls()
    if not isinstance(given, settings_cls):
        raise ConfigError(
            f"{kind_field}.settings",
            f"settings of type {type(given).__name__} given to `{name}`, which takes {settings_cls.__name__}",
            f"use an {settings_cls.__name__} (or pick the algorithm these settings belong to)",
        )
    return given


def algorithm_settings(acfg: AlgorithmConfig):
    return settings_of(ALGORITHMS, "algorithm", acfg.name, acfg.settings)


def resolved(acfg: AlgorithmConfig) -> AlgorithmConfig:
    """The config with its settings made explicit (hashes and saved configs always hold them)."""
    return dataclasses.replace(acfg, settings=algorithm_settings(acfg))


def task_settings(tcfg: TaskConfig):
    return settings_of(TASKS, "task", tcfg.name, tcfg.settings)


def resolved_run(cfg: RunConfig) -> RunConfig:
    """`cfg` with both plug-ins' settings explicit. Unknown names are left as they are (validation reports
    them with the known names)."""
    changes = {}
    if cfg.algorithm.name in ALGORITHMS:
        changes["algorithm"] = resolved(cfg.algorithm)
    if cfg.task.name in TASKS:
        changes["task"] = dataclasses.replace(cfg.task, settings=task_settings(cfg.task))
    return dataclasses.replace(cfg, **changes)


def algorithm_setup(acfg: AlgorithmConfig, *, seed: int = 0, world_size: int = 1, sharded_parameters: bool = False,
                    track: str = "text") -> AlgorithmSetup:
    return AlgorithmSetup(name=acfg.name, settings=algorithm_settings(acfg), loss_agg=acfg.loss_agg,
                          kl_coef=acfg.kl_coef, seed=seed, world_size=world_size,
                          sharded_parameters=sharded_parameters, track=track)


def run_algorithm_setup(cfg: RunConfig) -> AlgorithmSetup:
    p = cfg.parallel
    return algorithm_setup(cfg.algorithm, seed=cfg.seed, world_size=p.world_size,
                           sharded_parameters=p.world_size > 1 and p.mode == "fsdp2")


def algorithm_config(name: str, **fields) -> AlgorithmConfig:
    """An AlgorithmConfig from flat fields, as the CLI takes them: shared ones (loss_agg, advantage, ...)
    and the algorithm's own settings (e.g. clip_eps_high for grpo). An unknown field is a ConfigError."""
    settings_cls = getattr(ALGORITHMS.get(name), "Settings", None)
    own_names = {f.name for f in dataclasses.fields(settings_cls)} if settings_cls is not None else set()
    unknown = set(fields) - own_names - SHARED_ALGORITHM_FIELDS
    if unknown:
        raise ConfigError(f"algorithm.{sorted(unknown)[0]}", f"`{name}` has no setting {', '.join(sorted(unknown))}",
                          f"its settings: {', '.join(sorted(own_names)) or '(none)'}")
    own = {k: v for k, v in fields.items() if k in own_names}
    shared = {k: v for k, v in fields.items() if k not in own_names}
    settings = settings_cls(**own) if settings_cls is not None else None
    return AlgorithmConfig(name=name, settings=settings, **shared)


def build_algorithm(acfg: AlgorithmConfig, **setup_fields) -> Algorithm:
    """The registered algorithm built from its config (`setup_fields`: see `algorithm_setup`)."""
    return ALGORITHMS.get(acfg.name)(algorithm_setup(acfg, **setup_fields))


# ------------------------------------------------------------------------------------------------
def algorithm_presets() -> dict[str, AlgorithmConfig]:
    """Every registered algorithm's presets as AlgorithmConfigs, by preset name (unique across plug-ins)."""
    out: dict[str, AlgorithmConfig] = {}
    owner: dict[str, str] = {}
    for name in ALGORITHMS.names():
        cls = ALGORITHMS.get(name)
        for preset_name, preset in getattr(cls, "presets", {}).items():
            if preset_name in owner and owner[preset_name] != name:
                raise ValueError(f"algorithm preset `{preset_name}` is declared by both `{owner[preset_name]}` and "
                                 f"`{name}`; rename one")
            owner[preset_name] = name
            out[preset_name] = preset_config(name, preset)
    return out


def preset_config(name: str, preset: AlgorithmPreset) -> AlgorithmConfig:
    return resolved(AlgorithmConfig(name=name, advantage=preset.advantage, loss_agg=preset.loss_agg,
                                    settings=preset.settings))


def algorithm_preset(name: str) -> AlgorithmConfig:
    presets = algorithm_presets()
    if name not in presets:
        raise UnknownNameError(f"unknown algorithm preset `{name}`. Known: {', '.join(sorted(presets))}")
    return presets[name]
