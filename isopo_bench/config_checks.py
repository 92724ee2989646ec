"""Validation of a RunConfig before anything is loaded (`RunConfig.validate()`): names resolve in their
registries, sizes divide, local model folders exist, the data-parallel layout can work. Every error names
the config field and the fix; checks specific to one algorithm, task or engine are the plug-in's own
`validate`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path


from isopo_bench.capabilities import check_pairing
from isopo_bench.diagnostics.monitor import StepDiagnostics
from isopo_bench.config import ModelConfig, RunConfig
from isopo_bench.errors import ConfigError, UnknownNameError
from isopo_bench.item_record import MAX_ITEMS as MAX_RECORDED_ITEMS
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
    check_value_ranges(cfg)  # before the divisibility checks below divide by any of these
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
    for field_name, value in (("tracking.checkpoint_every", cfg.tracking.checkpoint_every), ("eval.every", cfg.eval.every)):
        if value < 0:
            raise ConfigError(field_name, f"must be >= 0, got {value}", "use 0 to disable")
    _check_algorithm_section(cfg)
    StepDiagnostics.validate(cfg.diagnostics)
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


# ------------------------------------------------------------------------------------------------
# Value ranges of the core settings (a wrong value must be refused, never run as if fine or crash later).
TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")


def _finite(field_name: str, value: float, fix: str) -> None:
    if not math.isfinite(value):
        raise ConfigError(field_name, f"must be a finite number, got {value}", fix)


def _at_least(field_name: str, value: float, low: float, fix: str) -> None:
    if not value >= low:
        raise ConfigError(field_name, f"must be >= {low}, got {value}", fix)


def check_value_ranges(cfg: RunConfig) -> None:
    o, r, m = cfg.optim, cfg.rollout, cfg.model
    _finite("optim.lr", o.lr, "typical values: 1e-6 (0.6B models) to 1e-4 (tiny model)")
    _positive("optim.minibatches_per_step", o.minibatches_per_step, "use 1 (one optimizer step per rollout batch) "
              "or a divisor of prompts_per_step * samples_per_prompt")
    _at_least("optim.warmup_steps", o.warmup_steps, 0, "use 0 for no warmup")
    _finite("optim.weight_decay", o.weight_decay, "use 0.01, or 0 to disable")
    _at_least("optim.weight_decay", o.weight_decay, 0, "use 0.01, or 0 to disable")
    _finite("optim.grad_clip", o.grad_clip, "use 1.0, or 0 to disable clipping")
    _at_least("optim.grad_clip", o.grad_clip, 0, "use 1.0, or 0 to disable clipping")
    if len(o.betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in o.betas):
        raise ConfigError("optim.betas", f"each must be in [0, 1), got {' '.join(map(str, o.betas))}",
                          "use the AdamW default --optim.betas 0.9 0.999")
    if not (math.isfinite(o.momentum) and 0 <= o.momentum < 1):
        raise ConfigError("optim.momentum", f"must be in [0, 1), got {o.momentum}", "use 0.9 (heavy-ball), or 0 for plain SGD")
    _positive("task.eval_items", cfg.task.eval_items, "score at least one held-out item (e.g. 128)")
    if cfg.task.eval_items > MAX_RECORDED_ITEMS:  # each run records every item's correctness in one MLflow tag
        raise ConfigError("task.eval_items", f"{cfg.task.eval_items} items exceed the {MAX_RECORDED_ITEMS} whose "
                          "per-item results fit one MLflow tag", f"evaluate at most {MAX_RECORDED_ITEMS} items")
    _positive("rollout.generation_batch_size", r.generation_batch_size, "use 64 (sequences generated together)")
    _positive("rollout.max_prompt_tokens", r.max_prompt_tokens, "use 256 or more")
    _finite("rollout.temperature", r.temperature, "use 1.0 for training rollouts")
    _at_least("eval.max_new_tokens", cfg.eval.max_new_tokens, 0, "use 0 to follow rollout.max_new_tokens")
    _at_least("threads", cfg.threads, 0, "use 0 for torch's default, or the number of CPU cores to use")
    _at_least("tracking.log_samples", cfg.tracking.log_samples, 0, "use 0 to log no samples")
    _finite("algorithm.kl_coef", cfg.algorithm.kl_coef, "use 0 to disable the KL penalty")
    _at_least("algorithm.kl_coef", cfg.algorithm.kl_coef, 0, "use 0 to disable the KL penalty")
    _at_least("algorithm.loss_agg_max_len", cfg.algorithm.loss_agg_max_len, 0, "use 0 for rollout.max_new_tokens")
    if m.name_or_path == "tiny":
        for name in ("tiny_hidden_size", "tiny_layers", "tiny_heads", "tiny_kv_heads", "tiny_intermediate_size"):
            _positive(f"model.{name}", getattr(m, name), "the tiny model's defaults: hidden 128, 4 layers, 4 heads, "
                      "2 kv heads, MLP 256")
        if m.tiny_hidden_size // m.tiny_heads in (32, 64) and m.tiny_heads % m.tiny_kv_heads:  # else: head_dim check
            raise ConfigError("model.tiny_kv_heads", f"{m.tiny_kv_heads} does not divide tiny_heads {m.tiny_heads}",
                              "e.g. 4 heads with 2 kv heads")
    _check_dtype_device(m)
    _check_tracking_uri(cfg.tracking.uri)


def _check_dtype_device(m: ModelConfig) -> None:
    if m.dtype != "float16":
        return
    import torch

    on_cpu = m.device == "cpu" or (m.device == "auto" and not torch.cuda.is_available())
    if on_cpu:
        raise ConfigError("model.dtype", "float16 training is not supported on the CPU (it "
                          "fails in the first training step)",
                          "use --model.dtype float32 (or bfloat16) on the CPU; float16 only with a CUDA device")


def _check_tracking_uri(uri: str) -> None:
    """Only the store kinds MLflow can open; an unknown scheme would fail deep inside MLflow."""
    if not uri or "://" not in uri:
        return  # empty: the default; a plain path: a local file store
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError("tracking.uri", f"unknown store scheme `{scheme}://` in `{uri}`",
                          "use sqlite:///PATH/mlflow.db (the default, sqlite:///mlflow.db), http://HOST:5000 for a "
                          "tracking server, or leave it empty")
    if scheme == "sqlite" and not uri.startswith("sqlite:///"):
        raise ConfigError("tracking.uri", f"`{uri}` is not a file URI (sqlite needs three slashes)",
                          "write sqlite:///relative/mlflow.db or sqlite:////absolute/mlflow.db")
