"""Run configuration: frozen dataclasses, one docstring per field (tyro turns them into --help).

`RunConfig.validate()` runs before any model is loaded; every error names the field and the fix. The checks
live in isopo_bench/config_checks.py; algorithm-, task- and engine-specific ones are delegated to the plug-in
that owns the setting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from isopo_bench.diagnostics.settings import DiagnosticsConfig
from isopo_bench.errors import ConfigError
from isopo_bench.model_identity import model_identity
from isopo_bench.rollout_correction import CorrectionConfig

AggregationMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "token-sum"]


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "tiny"
    """Hugging Face hub id or local folder of a causal LM; `tiny` builds the random tiny Qwen3 model."""
    init_from: str = ""
    """Optional local folder whose weights replace the initial ones (e.g. a warm-start checkpoint)."""
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = "float32"
    """Parameter dtype of the trained policy."""
    device: str = "auto"
    """`auto` (cuda when available, else cpu), `cpu`, `cuda` or `cuda:N`."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    tiny_hidden_size: int = 128
    """Tiny model only: hidden width."""
    tiny_layers: int = 4
    """Tiny model only: number of decoder layers."""
    tiny_heads: int = 4
    """Tiny model only: attention heads (head_dim = hidden / heads must be 32 or 64 for vLLM CPU)."""
    tiny_kv_heads: int = 2
    """Tiny model only: key/value heads (grouped-query attention)."""
    tiny_intermediate_size: int = 256
    """Tiny model only: MLP width."""
    tiny_tie_embeddings: bool = True
    """Tiny model only: tie lm_head to the input embedding (as Qwen3-0.6B does)."""


@dataclass(frozen=True)
class TaskConfig:
    name: str = "arithmetic"
    """Registered task name (see `isopo-bench list`)."""
    settings: Any = None
    """The task's own settings (its `Settings` dataclass; None = its defaults); on the command line
    `--task.<field>` (`isopo-bench train --task.name NAME --help` lists them)."""
    data_dir: str = ""
    """Local dataset folder for file-backed tasks (GSM8K: train.jsonl/test.jsonl); empty = env var or hub."""
    eval_items: int = 128
    """Held-out items scored greedily at each evaluation."""


@dataclass(frozen=True)
class VllmConfig:
    dtype: str = "auto"
    """vLLM weight dtype (`auto` follows the model)."""
    max_model_len: int = 0
    """Longest prompt + response vLLM must hold; 0 = max prompt + max new tokens."""
    kv_cache_bytes: int = 0
    """KV cache size in bytes (required on CPU); 0 = use gpu_memory_utilization."""
    gpu_memory_utilization: float = 0.3
    """GPU memory fraction for vLLM when colocated with training."""
    enforce_eager: bool = True
    """Disable CUDA graphs / compilation (fast start, needed on CPU)."""
    tensor_parallel_size: int = 1
    """Tensor parallel degree (GPU only)."""


@dataclass(frozen=True)
class RolloutConfig:
    engine: str = "hf"
    """Rollout engine: `hf` (transformers generate) or `vllm`."""
    prompts_per_step: int = 8
    """P: prompts sampled per training step."""
    samples_per_prompt: int = 8
    """G: completions per prompt (the group for advantages)."""
    temperature: float = 1.0
    """Sampling temperature for training rollouts (evaluation is greedy)."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_new_tokens: int = 32
    """Longest completion; generation stops earlier at EOS."""
    max_prompt_tokens: int = 256
    """Prompts longer than this are rejected with an error (never silently truncated)."""
    generation_batch_size: int = 64
    """Sequences generated together by the HF engine."""
    vllm: VllmConfig = field(default_factory=VllmConfig)
    """vLLM engine settings."""


@dataclass(frozen=True)
class AlgorithmConfig:
    name: str = "reinforce"
    """Registered algorithm (see `isopo-bench list`)."""
    advantage: str = "grpo"
    """Advantage estimator: `grpo` (z-score), `mean` (Dr.GRPO baseline), `rloo`, `reinforce++`, `reinforce++-baseline` (`isopo-bench list`)."""
    loss_agg: AggregationMode = "token-mean"
    """Loss aggregation over the optimizer batch."""
    loss_agg_max_len: int = 0
    """L_max for seq-mean-token-sum-norm; 0 = rollout.max_new_tokens."""
    kl_coef: float = 0.0
    """k3 KL penalty to the initial (reference) policy; 0 disables and skips the reference forward."""
    old_logp_source: Literal["recompute", "sampler"] = "recompute"
    """pi_old log-probs: recomputed by the trainer before the update, or taken from the rollout engine."""
    settings: Any = None
    """The algorithm's own settings (its `Settings` dataclass; None = its defaults). On the command line its
    fields are `--algorithm.<field>` (`isopo-bench train --algorithm.name NAME --help` lists them)."""


@dataclass(frozen=True)
class OptimConfig:
    steps: int = 50
    """Training steps (one rollout batch each)."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """`adamw` (decoupled weight decay), or `sgd`: SGD with heavy-ball momentum, where the gradient's scale and
    direction reach the parameters directly (AdamW's per-coordinate normalisation can mask what a
    natural-gradient method changes in the raw gradient)."""
    lr: float = 1e-4
    """Learning rate of the optimizer (the scales differ: SGD typically needs a far larger one than AdamW)."""
    weight_decay: float = 0.01
    """Weight decay: decoupled for AdamW; for SGD the L2 term torch adds to the gradient."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (unused by SGD)."""
    momentum: float = 0.9
    """SGD heavy-ball momentum (unused by AdamW)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 disables."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Learning-rate schedule over all optimizer steps (after warmup)."""
    warmup_steps: int = 0
    """Linear warmup in optimizer steps."""
    minibatches_per_step: int = 1
    """Optimizer steps per rollout batch (the batch is split into this many minibatches)."""
    epochs: int = 1
    """Passes over each rollout batch."""
    microbatch_size: int = 8
    """Sequences per forward/backward pass (gradient accumulation inside a minibatch)."""
    padding_side: Literal["right", "left"] = "right"
    """Padding side of training batches (results must not depend on it)."""


@dataclass(frozen=True)
class EvalConfig:
    every: int = 10
    """Greedy held-out evaluation every this many steps (0 disables periodic eval; the final eval always runs)."""
    at_start: bool = True
    """Also evaluate before the first step."""
    max_new_tokens: int = 0
    """Completion budget for evaluation; 0 = rollout.max_new_tokens."""
    samples: int = 0
    """Sampled evaluation next to the greedy one: n samples per item at rollout.temperature / top_p, scored
    as mean@n and pass@k (unbiased estimator); 0 = off."""
    pass_k: int = 1
    """k of pass@k (1 <= k <= samples)."""


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = ""
    """MLflow tracking URI; empty = $MLFLOW_TRACKING_URI or sqlite:///mlflow.db in the working directory."""
    experiment: str = "isopo-bench"
    """MLflow experiment name."""
    run_name: str = ""
    """MLflow run name; empty = algorithm-task-seed."""
    output_dir: str = "isopo_runs"
    """Where run folders (checkpoints, resolved config) are written."""
    checkpoint_every: int = 10
    """Checkpoint every this many steps (0 = only at the end)."""
    log_samples: int = 8
    """Sample completions with rewards saved as an artifact at each evaluation."""
    suite: str = ""
    """Suite name/version tag (set by the suite runner)."""
    algorithm_label: str = ""
    """How the leaderboard names the algorithm (the suite sets the preset name, so `dapo` and `grpo` stay
    apart); empty = algorithm.name. Not part of the experiment's identity."""


@dataclass(frozen=True)
class ParallelConfig:
    world_size: int = 1
    """Data-parallel training ranks. >1: launch with `torchrun --nproc_per_node N -m isopo_bench.cli train ...`
    (one process per GPU); each rank generates rollouts for its share of the prompts and the ranks' gradient
    shares are summed (isopo_bench.distributed)."""
    mode: Literal["ddp", "fsdp2"] = "ddp"
    """Data-parallel wrapper when world_size > 1: ddp (full replicas) or fsdp2 (sharded parameters; needs
    the vllm engine, whose copy of the weights generates independently of the training shards)."""


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    correction: CorrectionConfig = field(default_factory=CorrectionConfig)
    """Rollout correction of the sampler/trainer mismatch (TIS / MIS), for every loss-based algorithm."""
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    """Per-step proximity and natural-gradient diagnostics (isopo_bench.diagnostics); not in the config hash."""
    seed: int = 0
    """Seed for model init, prompt order, sampling and ISOPO probes."""
    threads: int = 0
    """torch CPU threads; 0 = torch's default."""

    def to_dict(self) -> dict:
        """Every setting, the plug-ins' settings made explicit (None -> the plug-in's defaults)."""
        # Imported here: the registries import the plug-in modules, which import this module.
        from isopo_bench.plugin_settings import resolved_run

        return dataclasses.asdict(resolved_run(self))

    def config_hash(self) -> str:
        return experiment_hash(self.to_dict())

    def validate(self) -> "RunConfig":
        from isopo_bench.config_checks import validate_run_config

        validate_run_config(self)
        self.correction.validate()
        if self.eval.samples and not 1 <= self.eval.pass_k <= self.eval.samples:
            raise ConfigError("eval.pass_k", f"must be in [1, eval.samples = {self.eval.samples}], got {self.eval.pass_k}",
                              "set eval.pass_k <= eval.samples")
        return self


def experiment_hash(config: dict) -> str:
    """Identity of an experiment: every setting except where results are written and thread counts. The
    algorithm and task sections hold only the chosen plug-ins' own settings (adding a field to another
    plug-in leaves this hash alone), and a local model folder is named by its content hash."""
    d = json.loads(json.dumps(config))
    if "model" in d:
        d["model"] = model_identity_fields(d["model"])
    for key in ("uri", "run_name", "output_dir", "checkpoint_every", "log_samples", "algorithm_label"):
        d["tracking"].pop(key, None)
    d.pop("threads", None)
    d.pop("diagnostics", None)  # diagnostics only read the run (tests/test_diagnostics.py: bit-identical weights)
    # DDP and FSDP2 compute the same update (tests/test_distributed.py), so the wrapper is not part of the
    # experiment; the world size is (each rank samples its share of the rollouts with its own seed). One
    # process is the default and leaves the hash as it was before data parallelism existed.
    parallel = d.pop("parallel", {})
    if parallel.get("world_size", 1) != 1:
        d["parallel"] = {"world_size": parallel["world_size"]}
    # Settings added later leave the hash of runs that do not use them as it was.
    if d.get("correction", {}).get("mode", "off") == "off":
        d.pop("correction", None)
    optim = d.get("optim", {})
    if optim.get("optimizer", "adamw") == "adamw":
        optim.pop("optimizer", None)
        optim.pop("momentum", None)
    else:
        optim.pop("betas", None)  # SGD never reads them
    if not d.get("eval", {}).get("samples", 0):
        d.get("eval", {}).pop("samples", None)
        d.get("eval", {}).pop("pass_k", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def model_identity_fields(model: dict) -> dict:
    model = dict(model)
    if model.get("init_from"):
        model["init_from"] = model_identity(model["init_from"])
    if model.get("name_or_path", "tiny") != "tiny":
        model["name_or_path"] = model_identity(model["name_or_path"])
        for key in [k for k in model if k.startswith("tiny_")]:
            del model[key]  # the tiny model's shape means nothing for a real model
    return model


def replace(cfg, **changes):
    """dataclasses.replace with dotted keys: replace(run, **{"optim.lr": 1e-5})."""
    nested: dict[str, dict] = {}
    flat = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[key] = value
    for head, sub in nested.items():
        flat[head] = replace(getattr(cfg, head), **sub)
    return dataclasses.replace(cfg, **flat)


def parse_key_values(field_name: str, items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(field_name, f"`{item}` is not key=value", "write e.g. `max_operand=99`")
        out[key.strip()] = value.strip()
    return out
