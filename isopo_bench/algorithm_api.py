"""The algorithm contract.

Two kinds of method fit it:
- loss-based (REINFORCE, GRPO, CISPO, ...): implement `loss` only;
- gradient-transform (ISOPO): `loss` returns an advantage-free objective and `backward_context` installs
  per-layer rules that produce the weight gradients inside the backward pass; `finalize_grads` runs once
  per optimizer step before clipping and the optimizer.

The trainer calls, per optimizer step:
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
from typing import TYPE_CHECKING, ClassVar, ContextManager

import torch

from isopo_bench.batch import BatchTotals, TrainBatch

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
