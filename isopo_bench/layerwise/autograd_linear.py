"""The layer-wise Linear: a custom autograd Function and the temporary forward override that installs it.

Inside the backward, grad_input is computed as usual and the weight gradient is whatever the layer's
`weight_grad(x, grad_out)` callable returns (the engine's sum_i w_i G_i), so autograd never computes (and
then discards) its own weight gradient, accumulation over microbatches is autograd's own, and data-parallel
wrappers (DDP/FSDP) see and communicate the transformed gradient as an ordinary gradient (SCALE_OUT.md,
option A). Linear biases get a zero gradient, as in the ISOPO reference.

The override is an instance attribute `forward` set on entry and deleted on exit, so after the context the
module is byte-for-byte the plain module again: no hook handles, no extra attributes, no saved tensors.
The callable is a closure over one microbatch's session (isopo_bench.layerwise.engine), never state
assigned onto a module, and it is stateless across calls, so gradient checkpointing (which reruns forwards)
needs no special care.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from isopo_bench.layerwise.kernels import cast_to

WeightGrad = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]
"""(input x, output gradient) -> the layer's weight gradient (None: the engine adds it to .grad after the
backward, small-layer batching)."""


class LayerwiseLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, weight_grad: WeightGrad):
        ctx.weight_grad = weight_grad
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        # Under autocast the output (hence grad_out) is in the autocast dtype; compute in it, as autograd does.
        # (Casts only where dtypes differ: even a no-op `.to` is a dispatched op, ~10 us per Linear.)
        x_c, w_c = cast_to(x, grad_out.dtype), cast_to(weight, grad_out.dtype)
        grad_x = cast_to(grad_out @ w_c, x.dtype) if ctx.needs_input_grad[0] else None
        grad_w = ctx.weight_grad(x_c, grad_out) if ctx.needs_input_grad[1] else None
        if grad_w is not None:  # None: the engine adds this weight's gradient after the backward
            grad_w = cast_to(grad_w, weight.dtype)
        grad_b = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        return grad_x, grad_w, grad_b, None


def transforms_now(module: nn.Module) -> bool:
    """Rules act only in training forwards that build a graph (not evaluation, not no_grad recompute)."""
    return module.training and torch.is_grad_enabled()


def linear_forward(module: nn.Linear, weight_grad: WeightGrad,
                   when: Callable[[nn.Module], bool] = transforms_now) -> Callable:
    """`when(module)` decides per call whether the custom Function is used (default: training forwards that
    build a graph; the diagnostics' capture uses it in any graph-building forward, evaluation mode included)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        if when(module) and module.weight.requires_grad:
            return LayerwiseLinearFn.apply(x, module.weight, module.bias, weight_grad)
        return F.linear(x, module.weight, module.bias)

    return forward


def check_plain_linear(name: str, module: nn.Module) -> None:
    """Linear subclasses with their own forward (LoRA, quantised layers) would be silently mis-handled."""
    if type(module).forward is not nn.Linear.forward:
        raise TypeError(
            f"layer-wise engine: `{name}` is a {type(module).__name__}, a Linear subclass with its own forward; "
            "the per-layer rule only covers plain nn.Linear (merge adapters or add a rule)"
        )


@contextlib.contextmanager
def overridden_forwards(overrides: dict[nn.Module, Callable]) -> Iterator[None]:
    """Set `module.forward` for each module for the duration of the block; restore exactly afterwards."""
    installed = []
    try:
        for module, forward in overrides.items():
            if "forward" in module.__dict__:
                raise RuntimeError(
                    f"layer-wise engine: a {type(module).__name__} already has an instance-level forward (another "
                    "library's hook?); refusing to stack overrides"
                )
            module.forward = forward
            installed.append(module)
        yield
    finally:
        for module in installed:
            del module.forward
