"""The algorithm contract.

Two kinds of method fit it:
- loss-based (REINFORCE, GRPO, CISPO, ...): implement `loss` only;
- gradient-transform (ISOPO, npg_rank1): `loss` returns an advantage-free objective and `backward_context`
  installs per-layer rules (isopo_bench.layerwise) that produce the weight gradients inside the backward
  pass; `finalize_grads` runs once per optimizer step before clipping and the optimizer.

A plug-in owns its settings and presets: `Settings` is a frozen dataclass (one docstring per field: the
CLI's `--algorithm.<field>` help), `presets` maps preset names to `AlgorithmPreset`s. It is built from an
`AlgorithmSetup` (its settings plus the few run facts it may read), never from a whole run config, so the
same class serves the text and the control track.

The one driver of the contract is isopo_bench.step_driver.step_gradients; per optimizer step it calls
    algo.begin_step(ctx)                                   # ctx: StepContext (step, global microbatches, ...)
    for each of this process's microbatches (index = global microbatch index):
        with algo.backward_context(model, mb, ctx, index):
            logp_BT = ctx.logprobs(model, mb)
            loss, metrics = algo.loss(logp_BT, mb, ctx.totals)
            loss.backward()
    metrics |= algo.finalize_grads(model, ctx)
then the caller clips and steps the optimizer. Algorithms never see the task, the engine or MLflow;
metrics are dicts of floats namespaced `algo/...` (isopo_bench.metric_names).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, ContextManager, Sequence

import torch

from isopo_bench.batch import BatchTotals, TrainBatch, sequence_logprobs


@dataclass(frozen=True)
class NoSettings:
    """An algorithm without settings of its own."""


@dataclass(frozen=True)
class AlgorithmPreset:
    """A named configuration of one algorithm: its settings plus the shared algorithm fields it fixes."""

    settings: Any = None
    """The algorithm's Settings instance; None = its defaults."""
    advantage: str = "grpo"
    loss_agg: str = "token-mean"
    description: str = ""


@dataclass(frozen=True)
class AlgorithmSetup:
    """What a plug-in is told about the run."""

    name: str
    """The registered name it was selected by (one class may serve several names)."""
    settings: Any
    """Its own Settings instance."""
    loss_agg: str = "token-mean"
    """Loss aggregation over the optimizer batch (isopo_bench.aggregation)."""
    kl_coef: float = 0.0
    """k3 KL penalty to the reference policy (0: off)."""
    seed: int = 0
    """The run's seed (algorithms seed their own draws from it, the step and the microbatch index)."""
    world_size: int = 1
    """Data-parallel ranks."""
    sharded_parameters: bool = False
    """True under FSDP2: a rank holds a shard of each parameter, never the full tensor."""
    track: str = "text"
    """`text` (the LLM trainer) or `control` (the differentiable-control track)."""


def no_reduction(local: torch.Tensor) -> torch.Tensor:
    return local


@dataclass
class StepContext:
    """One optimizer step, as every algorithm hook sees it."""

    step: int
    """Optimizer step index, counted over the whole run (resumes continue it)."""
    microbatches: Sequence[TrainBatch]
    """ALL microbatches of the step, in global order (under data parallelism a rank trains on a share of
    them; they may live on CPU)."""
    totals: BatchTotals
    """Denominators of the whole optimizer batch (the microbatch split never changes a gradient)."""
    reducer: Callable[[torch.Tensor], torch.Tensor] = no_reduction
    """Sums a tensor over data-parallel ranks (identity in one process)."""
    logprobs: Callable[..., torch.Tensor] = sequence_logprobs
    """How this track computes a microbatch's token log-probs, `logprobs(model, mb)` (an algorithm that reruns
    a sequence uses it): the text trainer's is sequence_logprobs at the rollout temperature, so the trainer
    differentiates the distribution that was sampled; the driver also asks it for `with_entropy=True`."""


class Algorithm:
    """Base class of every registered algorithm. Register with `@ALGORITHMS.register("name")`."""

    Settings: ClassVar[type] = NoSettings
    """Frozen dataclass of the algorithm's own settings."""
    presets: ClassVar[dict[str, AlgorithmPreset]] = {}
    """Named presets (`--algo-preset NAME`); names are unique across all algorithms."""
    needs_old_logp: ClassVar[bool] = False
    """True when `loss` reads `mb.old_logp_BT` (the trainer then computes pi_old before the update)."""
    gradient_signal: ClassVar[str] = "score-function"
    """What the method differentiates: `score-function` (log-probs of sampled tokens) or `pathwise`."""
    tracks: ClassVar[tuple[str, ...]] = ("text", "control")
    """Tracks the method runs on (the control track uses trajectories as sequences)."""

    def __init__(self, setup: AlgorithmSetup):
        self.setup = setup
        self.settings = setup.settings

    @classmethod
    def validate(cls, setup: AlgorithmSetup) -> None:
        """Raise ConfigError for settings this algorithm cannot run with (called before loading models).
        Fields are named as the CLI names them: `algorithm.<field>` for the algorithm's own settings."""

    def attach(self, model: torch.nn.Module) -> dict[str, str]:
        """Called once with the policy before training; returns descriptive params to log."""
        return {}

    @property
    def needs_ref_logp(self) -> bool:
        return self.setup.kl_coef > 0

    def loss(self, logp_BT: torch.Tensor, mb: TrainBatch, totals: BatchTotals) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def begin_step(self, ctx: StepContext) -> None:
        """Called once per optimizer step before its first microbatch."""

    def backward_context(self, model: torch.nn.Module, mb: TrainBatch, ctx: StepContext, index: int) -> ContextManager:
        """Hooks active during the forward and backward of global microbatch `index`; default: none."""
        return contextlib.nullcontext()

    def finalize_grads(self, model: torch.nn.Module, ctx: StepContext) -> dict[str, float]:
        """Finish gradients after all microbatches of the step (the caller then clips and steps)."""
        return {}

    def state_dict(self) -> dict:
        """Persistent statistics (e.g. EMAs) saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class MicrobatchResult:
    loss: float
    metrics: dict[str, float]
    logp_BT: torch.Tensor
    """Detached trainer log-probs of the microbatch (the trainer compares them with the sampler's)."""
    entropy_BT: torch.Tensor | None
    mb: TrainBatch = field(repr=False, default=None)
    """The microbatch as it was run (on the compute device)."""
