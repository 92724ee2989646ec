"""The algorithm contract.

Two kinds of method fit it:
- loss-based (REINFORCE, GRPO, CISPO, ...): implement `loss` only;
- gradient-transform (ISOPO): `loss` returns an advantage-free objective and `backward_context` installs
  per-layer rules that produce the weight gradients inside the backward pass; `finalize_grads` runs once
  per optimizer step before clipping and the optimizer.

The trainer calls, per optimizer step:
    algo.begin_step(all microbatches of the step, totals)      # most algorithms ignore it
    for each microbatch mb:
        with algo.backward_context(model, mb, totals):
            logp_BT = sequence_logprobs(model, mb)
            loss, metrics = algo.loss(logp_BT, mb, totals)
            loss.backward()
    metrics |= algo.finalize_grads(model)
    clip, optimizer.step()
Algorithms never see the task, the engine or MLflow; metrics are returned as dicts of floats whose keys
are namespaced `algo/...` (see isopo_bench.metric_names).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, ContextManager, Sequence

import torch

from isopo_bench.batch import BatchTotals, TrainBatch, sequence_logprobs

if TYPE_CHECKING:
    from isopo_bench.config import RunConfig

log = logging.getLogger(__name__)


class Algorithm:
    """Base class of every registered algorithm. Subclasses are registered with
    `@ALGORITHMS.register("name")` and constructed as `cls(run_config)`."""

    needs_old_logp: ClassVar[bool] = False
    """True when `loss` reads `mb.old_logp_BT` (the trainer then computes pi_old before the update)."""
    gradient_signal: ClassVar[str] = "score-function"
    """What the method differentiates: `score-function` (log-probs of sampled tokens) or `pathwise`."""

    def __init__(self, cfg: "RunConfig"):
        self.cfg = cfg
        self.acfg = cfg.algorithm

    @classmethod
    def validate(cls, cfg: "RunConfig") -> None:
        """Raise ConfigError for settings this algorithm cannot run with (called before loading models)."""

    def attach(self, model: torch.nn.Module) -> dict[str, str]:
        """Called once with the policy before training; returns descriptive params to log (e.g. the
        policy for parameters the method does not transform)."""
        return {}

    @property
    def needs_ref_logp(self) -> bool:
        return self.acfg.kl_coef > 0

    def loss(self, logp_BT: torch.Tensor, mb: TrainBatch, totals: BatchTotals) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def begin_step(self, microbatches: Sequence[TrainBatch], totals: BatchTotals) -> None:
        """Called once per optimizer step before its first microbatch, with ALL the step's microbatches (the
        global ones under data parallelism, where this rank trains on a share of them; possibly on CPU).
        For methods whose finalize_grads needs sequences of the step beyond the rank's own (npg_rank1_model)."""

    def backward_context(self, model: torch.nn.Module, mb: TrainBatch, totals: BatchTotals) -> ContextManager:
        """Hooks active during this microbatch's forward and backward; default: none."""
        return contextlib.nullcontext()

    def finalize_grads(self, model: torch.nn.Module) -> dict[str, float]:
        """Finish gradients after all microbatches of an optimizer step; returns metrics."""
        return {}

    def state_dict(self) -> dict:
        """Persistent statistics (e.g. EMAs) saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# ------------------------------------------------------------------------------------------------
# Driving the contract. Every caller (the trainer, data-parallel updates, the overhead benchmark, the
# tests' references) goes through these two functions, so what is tested is what trains.
@dataclass
class MicrobatchResult:
    loss: float
    metrics: dict[str, float]
    logp_BT: torch.Tensor
    """Detached trainer log-probs of the microbatch (the trainer compares them with the sampler's)."""
    entropy_BT: torch.Tensor | None


def microbatch_backward(algorithm: Algorithm, model: torch.nn.Module, mb: TrainBatch, totals: BatchTotals, *,
                        forward_model: torch.nn.Module | None = None, global_index: int | None = None,
                        sync_context: ContextManager | None = None, with_entropy: bool = False,
                        check_loss: Callable[[torch.Tensor], None] | None = None,
                        loss_scale: float = 1.0) -> MicrobatchResult:
    """Forward, loss and backward of one microbatch, adding its share of the optimizer step's gradient.

    `model` is what the algorithm hooks (parameter names, Linear layers); `forward_model` what the batch
    runs through (a DDP wrapper of `model`; default `model`). `global_index` is the microbatch's index in
    the optimizer batch: ISOPO seeds its probes with it, so under data parallelism every rank must pass the
    global index, not its local count. `sync_context` encloses forward AND backward (DDP decides at forward
    time whether the backward all-reduces). `check_loss` runs before backward (the trainer's NaN guard).
    `loss_scale` exists only for the control test of the loss-times-world-size trick."""
    if global_index is not None and hasattr(algorithm, "micro"):
        algorithm.micro = global_index
    forward_model = forward_model if forward_model is not None else model
    with (sync_context or contextlib.nullcontext()), algorithm.backward_context(model, mb, totals):
        if with_entropy:
            logp_BT, entropy_BT = sequence_logprobs(forward_model, mb, with_entropy=True)
        else:
            logp_BT, entropy_BT = sequence_logprobs(forward_model, mb), None
        loss, metrics = algorithm.loss(logp_BT, mb, totals)
        if check_loss is not None:
            check_loss(loss)
        (loss * loss_scale if loss_scale != 1.0 else loss).backward()
    return MicrobatchResult(float(loss.detach()), metrics, logp_BT.detach(),
                            None if entropy_BT is None else entropy_BT.detach())


def accumulate(algorithm: Algorithm, model: torch.nn.Module, microbatches: Sequence[TrainBatch],
               totals: BatchTotals) -> dict[str, float]:
    """One optimizer step's gradient in one process: zero .grad, every microbatch in order, then
    `finalize_grads`. Returns the algorithm's finalize metrics."""
    model.zero_grad(set_to_none=True)
    algorithm.begin_step(microbatches, totals)
    for index, mb in enumerate(microbatches):
        microbatch_backward(algorithm, model, mb, totals, global_index=index)
    return algorithm.finalize_grads(model)
