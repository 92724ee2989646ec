"""Finite-state guard: after every optimizer step the parameters and the optimizer's moments must be finite.

The loss and gradient-norm checks in the trainer see a bad update coming; they cannot see weight decay or an
enormous learning rate pushing finite gradients into infinite weights. This check runs after each step
(one fused norm per tensor group, one device sync), so a non-finite state is refused before it reaches a
checkpoint, and the last checkpoint on disk is always one written from a finite state.

It also turns the sampler's `probability tensor contains either inf, nan or element < 0` (transformers'
generate on non-finite logits) into the same NonFiniteError with the same advice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch

from isopo_bench.errors import NonFiniteError

FIX = ("lower --optim.lr (now {lr}; decoupled weight decay moves the weights by lr * weight_decay per step), keep "
       "--optim.grad-clip > 0, or use float32/bfloat16 instead of float16")


def _local(t: torch.Tensor) -> torch.Tensor:
    """The shard this process holds (FSDP2 DTensors), detached."""
    return (t.to_local() if hasattr(t, "to_local") else t).detach()


def _named_state(model: torch.nn.Module, optimizer) -> Iterator[tuple[str, torch.Tensor]]:
    names = {id(p): n for n, p in model.named_parameters()}
    for name, p in model.named_parameters():
        yield name, _local(p)
    if optimizer is None:
        return
    for p, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.is_floating_point():
                yield f"optimizer {key} of {names.get(id(p), '?')}", _local(value)


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, int, int] | None:
    """(name, non-finite count, size) of the first tensor holding inf/nan, else None. The fast path is one
    norm per tensor (inf/nan propagate into it) and one sync; only a non-finite total is searched exactly
    (a huge but finite tensor can overflow its norm, which is not an error)."""
    named = [(n, t) for n, t in named if t.numel()]
    if not named:
        return None
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for _, t in named:
        by_device.setdefault(t.device, []).append(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t)
    totals = [torch.stack(torch._foreach_norm(ts)).sum() for ts in by_device.values()]
    if all(math.isfinite(float(total)) for total in totals):
        return None
    for name, t in named:
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            return name, bad, t.numel()
    return None


def check_finite_state(model: torch.nn.Module, optimizer, step: int, lr: float, ranks=None, run_dir=None) -> None:
    """Raise NonFiniteError (on every rank together) when any parameter or optimizer moment is inf/nan."""
    found = first_nonfinite(_named_state(model, optimizer))
    if ranks is not None and not ranks.any(found is not None):
        return
    if ranks is None and found is None:
        return
    what = (f"{found[0]} holds {found[1]} of {found[2]} values inf/nan" if found
            else "another rank's parameters or optimizer state hold inf/nan")
    where = f" in {run_dir}" if run_dir else ""
    raise NonFiniteError(
        f"the model state is not finite after the optimizer step of training step {step} ({what}); the run is "
        f"marked FAILED and its last checkpoint{where}, written from a finite state, is kept. Fix: "
        + FIX.format(lr=lr))


def check_finite_model(model: torch.nn.Module, where: str) -> None:
    """For checkpoints: refuse to write or load non-finite weights."""
    found = first_nonfinite((n, _local(p)) for n, p in model.named_parameters())
    if found:
        raise NonFiniteError(f"{where}: parameter {found[0]} holds {found[1]} of {found[2]} values inf/nan. Fix: "
                             + FIX.format(lr="see the run's config"))


SAMPLER_MESSAGE = "probability tensor contains"


def sampling_error(exc: BaseException, lr: float) -> NonFiniteError | None:
    """The project's error for transformers' sampling failure on non-finite probabilities, else None."""
    if isinstance(exc, RuntimeError) and SAMPLER_MESSAGE in str(exc):
        return NonFiniteError(
            "rollout sampling failed: the policy's next-token probabilities contain inf/nan (its weights or logits "
            "are not finite); the run is marked FAILED and its last checkpoint is kept. Fix: " + FIX.format(lr=lr))
    return None
