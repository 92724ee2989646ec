"""Validation of a RunConfig before anything is loaded (`RunConfig.validate()`): names resolve in their
registries, sizes divide, local model folders exist, the data-parallel layout can work. Every error names
the config field and the fix; checks specific to one algorithm, task or engine are the plug-in's own
`validate`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


from isopo_bench.capabilities import check_pairing
from isopo_bench.config import ModelConfig, RunConfig
from isopo_bench.errors import ConfigError, UnknownNameError
from isopo_bench.plugin_settings import algorithm_settings, run_algorithm_setup, task_settings
from isopo_bench.plugins import ADVANTAGES, ALGORITHMS, ENGINES, TASKS


def _positive(field_name: str, value: float, fix: str = "use a positive value") -> None:
    if not value > 0:
        raise ConfigError(field_name, f"must be > 0, got {value}", fix)


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or os.path.isdir(path)


def _check_model_paths(model: ModelConfig) -> None:
    """Local model folders must exist now; hub ids are left to transformers (which may download)."""
    name = model.name_or_path
    if name != "tiny" and _looks_local(name) and not (Path(name).expanduser() / "config.json").exists():
        raise ConfigError("model.name_or_path", f"`{name}` is not a model folder (no config.json)",
                          "give a hub id (e.g. Qwen/Qwen3-0.6B) or a folder written by save_pretrained")
    if model.init_from and not (Path(model.init_from).expanduser() / "config.json").exists():
        raise ConfigError("model.init_from", f"no model folder at `{model.init_from}`",
                          "point it at a save_pretrained folder (e.g. one written by `isopo-bench warmstart`)")


def validate_run_config(cfg: RunConfig) -> None:
    for field_name, registry, name in (
        ("algorithm.name", ALGORITHMS, cfg.algorithm.name),
        ("algorithm.advantage", ADVANTAGES, cfg.algorithm.advantage),
        ("task.name", TASKS, cfg.task.name),
        ("rollout.engine", ENGINES, cfg.rollout.engine),
    ):
        try:
            registry.get(name)
        except UnknownNameError as exc:
            hint = " (pathwise methods such as bptt and rpo run with `isopo-bench control-train`)" if registry is ALGORITHMS else ""
            raise ConfigError(field_name, str(exc), f"pick one of: {', '.join(registry.names())}{hint}") from None
    algo_cls, task_cls = ALGORITHMS.get(cfg.algorithm.name), TASKS.get(cfg.task.name)
    check_pairing(algo_cls, cfg.algorithm.name, task_cls, cfg.task.name, track="text")
    r, o = cfg.rollout, cfg.optim
    _positive("rollout.prompts_per_step", r.prompts_per_step)
    _positive("rollout.samples_per_prompt", r.samples_per_prompt)
    _positive("rollout.max_new_tokens", r.max_new_tokens)
    if r.temperature < 0:
        raise ConfigError("rollout.temperature", f"must be >= 0, got {r.temperature}", "use 1.0 for training rollouts")
    if not 0 < r.top_p <= 1:
        raise ConfigError("rollout.top_p", f"must be in (0, 1], got {r.top_p}", "use 1.0 to disable nucleus sampling")
    _positive("optim.steps", o.steps)
    _positive("optim.lr", o.lr, "typical values: 1e-6 (0.6B models) to 1e-4 (tiny model)")
    _positive("optim.microbatch_size", o.microbatch_size)
    _positive("optim.epochs", o.epochs)
    batch = r.prompts_per_step * r.samples_per_prompt
    if batch % o.minibatches_per_step:
        raise ConfigError(
            "optim.minibatches_per_step",
            f"{o.minibatches_per_step} does not divide the rollout batch of {batch} sequences",
            "choose a divisor of prompts_per_step * samples_per_prompt",
        )
    if (batch // o.minibatches_per_step) % o.microbatch_size:
        raise ConfigError(
            "optim.microbatch_size",
            f"{o.microbatch_size} does not divide the minibatch of {batch // o.minibatches_per_step} sequences",
            "choose a divisor of the minibatch size",
        )
    _check_parallel(cfg)
    if cfg.model.device not in ("auto", "cpu") and not cfg.model.device.startswith("cuda"):
        raise ConfigError("model.device", f"unknown device `{cfg.model.device}`", "use auto, cpu, cuda or cuda:N")
    if cfg.model.name_or_path == "tiny" and cfg.model.tiny_hidden_size // cfg.model.tiny_heads not in (32, 64):
        raise ConfigError(
            "model.tiny_heads", "tiny head_dim = hidden / heads must be 32 or 64", "e.g. hidden 128 with 4 heads"
        )
    _check_model_paths(cfg.model)
    if cfg.tracking.checkpoint_every < 0 or cfg.eval.every < 0:
        raise ConfigError("tracking.checkpoint_every", "must be >= 0", "use 0 to disable")
    _check_algorithm_section(cfg)
    algo_cls.validate(run_algorithm_setup(cfg))
    task_cls.validate(dataclasses.replace(cfg.task, settings=task_settings(cfg.task)))
    engine_validate = getattr(ENGINES.get(cfg.rollout.engine), "validate", None)
    if engine_validate is not None:
        engine_validate(cfg)


def _check_algorithm_section(cfg: RunConfig) -> None:
    """The settings belong to the algorithm; the aggregation's L_max is meaningful."""
    algorithm_settings(cfg.algorithm)  # ConfigError when they are another plug-in's
    if cfg.algorithm.loss_agg_max_len < 0:
        raise ConfigError("algorithm.loss_agg_max_len", f"must be >= 0, got {cfg.algorithm.loss_agg_max_len}",
                          "use 0 (= rollout.max_new_tokens)")


def _check_parallel(cfg: RunConfig) -> None:
    p, r, o = cfg.parallel, cfg.rollout, cfg.optim
    _positive("parallel.world_size", p.world_size)
    if p.world_size == 1:
        return
    if r.prompts_per_step < p.world_size:
        raise ConfigError("parallel.world_size", f"{p.world_size} ranks cannot share {r.prompts_per_step} prompts "
                          "(each rank generates whole groups)", f"raise rollout.prompts_per_step to >= {p.world_size}")
    micro = r.prompts_per_step * r.samples_per_prompt // o.minibatches_per_step // o.microbatch_size
    if micro < p.world_size or (p.mode == "fsdp2" and micro % p.world_size):
        need = "a multiple of" if p.mode == "fsdp2" else "at least"
        raise ConfigError("optim.microbatch_size", f"a minibatch has {micro} microbatches; {p.world_size} ranks under "
                          f"{p.mode} need {need} {p.world_size}", "lower optim.microbatch_size or raise the batch")
    if p.mode == "fsdp2" and r.engine == "hf":
        raise ConfigError("parallel.mode", "fsdp2 with the hf engine would generate with the sharded training model, "
                          "whose every forward is a collective the ranks' unequal generation lengths would deadlock",
                          "use --rollout.engine vllm (its own full copy of the weights), or --parallel.mode ddp")
