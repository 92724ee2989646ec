"""The optimizer-step driver: the one place that runs the algorithm contract's sequence
(zero_grad, begin_step, each microbatch's forward/loss/backward inside its backward context,
finalize_grads). The trainer, data parallelism, the overhead benchmark, the control track and the tests'
references all call `step_gradients`, so what is tested is what trains. Clipping and the optimizer step
stay with the caller (they differ: rank-aware norms, schedulers, NaN guards).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import torch

from isopo_bench.algorithm_api import Algorithm, MicrobatchResult, StepContext
from isopo_bench.batch import TrainBatch


@dataclass
class MicrobatchWork:
    """One microbatch this process computes: its global index, the batch (on the compute device) and the
    context that encloses its forward and backward (DDP's no_sync; None = nothing)."""

    index: int
    mb: TrainBatch
    sync: ContextManager | None = None


@dataclass
class StepGradients:
    microbatches: list[MicrobatchResult]
    metrics: dict[str, float]
    """What finalize_grads returned."""


def microbatch_backward(algorithm: Algorithm, model: torch.nn.Module, work: MicrobatchWork, ctx: StepContext, *,
                        forward_model: torch.nn.Module | None = None, with_entropy: bool = False,
                        check_loss: Callable[[torch.Tensor], None] | None = None,
                        loss_scale: float = 1.0) -> MicrobatchResult:
    """Forward, loss and backward of one microbatch, adding its share of the step's gradient to .grad.

    `model` is what the algorithm hooks; `forward_model` what the batch runs through (a DDP wrapper of
    `model`). The sync context encloses forward AND backward (DDP decides at forward time whether the
    backward all-reduces). `check_loss` runs before backward (the trainer's NaN guard). `loss_scale` exists
    only for the control test of the loss-times-world-size trick."""
    forward_model = forward_model if forward_model is not None else model
    mb = work.mb
    with (work.sync or contextlib.nullcontext()), algorithm.backward_context(model, mb, ctx, work.index):
        if with_entropy:
            logp_BT, entropy_BT = ctx.logprobs(forward_model, mb, with_entropy=True)
        else:
            logp_BT, entropy_BT = ctx.logprobs(forward_model, mb), None
        loss, metrics = algorithm.loss(logp_BT, mb, ctx.totals)
        if check_loss is not None:
            check_loss(loss)
        (loss * loss_scale if loss_scale != 1.0 else loss).backward()
    return MicrobatchResult(float(loss.detach()), metrics, logp_BT.detach(),
                            None if entropy_BT is None else entropy_BT.detach(), mb)


def step_gradients(algorithm: Algorithm, model: torch.nn.Module, ctx: StepContext,
                   work: Sequence[MicrobatchWork] | None = None, **microbatch_options) -> StepGradients:
    """The step's gradient in .grad: zero it, begin_step, this process's microbatches in order
    (`work`; default: every microbatch of `ctx`, in one process), finalize_grads.
    `microbatch_options` go to `microbatch_backward`."""
    model.zero_grad(set_to_none=True)
    algorithm.begin_step(ctx)
    if work is None:
        work = [MicrobatchWork(i, mb) for i, mb in enumerate(ctx.microbatches)]
    results = [microbatch_backward(algorithm, model, w, ctx, **microbatch_options) for w in work]
    return StepGradients(results, algorithm.finalize_grads(model, ctx))


def accumulate(algorithm: Algorithm, model: torch.nn.Module, microbatches: Sequence[TrainBatch], totals,
               step: int = 0) -> dict[str, float]:
    """One process, one step, default options: the tests' and benchmarks' shorthand. Returns the
    finalize metrics."""
    return step_gradients(algorithm, model, StepContext(step, list(microbatches), totals)).metrics
