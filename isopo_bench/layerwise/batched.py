"""Small-layer batching: the per-sequence weights of every Linear of a microbatch computed at once, after
its backward, for methods whose weights are a function of the layer NTK alone (interacting ISOPO,
npg_rank1 with fisher=all).

On a small model a layer's NTK, damped solve and combination are a dozen tiny tensor ops, and inside a
backward pass, between large matrix products, each costs 10-30 us of dispatch and cold caches: more than
the arithmetic of the layer. So while batching is on, a Linear's backward only writes its per-sequence
gradients G_i into its slot of one buffer per layer shape (B, d_out, d_in) and returns no weight gradient;
when the microbatch's backward has finished, per shape, K = G G^T (one batched product), the method's
`group_weights` (one batched solve), and sum_i w_i G_i (one batched product) are computed and added to
each weight's .grad. The result is the per-layer path's, to rounding (batched BLAS/LAPACK calls).

When it applies (`LayerBatching.plan`): the method implements `group_weights`, the fast mode, one process
(under data parallelism the wrapper all-reduces .grad during the backward, so weight gradients must exist
by then: the per-layer path is kept), and every batched layer's G_i, all held at once, within
`MAX_BATCHED_MB` (the buffers are reused across microbatches; at real widths the per-op cost is
negligible against the layers' own products, and the per-layer path's one shared workspace is kept). The
LM head under the chunked head, frozen weights, and a Linear whose backward runs twice in one microbatch
(its second call) take the per-layer path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

MAX_BATCHED_MB = 64
"""Most memory (MiB) the batched layers' per-sequence gradients may take together."""


@dataclass
class ShapeGroup:
    """The Linears of one weight shape: their slots in one (L, B, d_out, d_in) buffer."""

    names: list[str]
    params: list[nn.Parameter]
    indices: list[int]
    """Positions among the model's Linears (the per-layer path's LayerStats.index)."""
    buffer: torch.Tensor | None = None
    filled: list[bool] = field(default_factory=list)


class LayerBatching:
    """The slots of one algorithm's batched layers, by module; buffers kept across microbatches."""

    def __init__(self, linears: dict[str, nn.Linear], exclude: set[int]):
        self.groups: dict[tuple[int, int], ShapeGroup] = {}
        self.slot_of: dict[int, tuple[ShapeGroup, int]] = {}
        """id(module) -> (its group, its slot)."""
        for index, (name, module) in enumerate(linears.items()):
            if id(module) in exclude or not module.weight.requires_grad:
                continue
            shape = tuple(module.weight.shape)
            group = self.groups.setdefault(shape, ShapeGroup([], [], []))
            self.slot_of[id(module)] = (group, len(group.names))
            group.names.append(name)
            group.params.append(module.weight)
            group.indices.append(index)

    def fits(self, B: int, dtype: torch.dtype) -> bool:
        per_seq = sum(len(g.names) * o * i for (o, i), g in self.groups.items())
        return B * per_seq * torch.finfo(dtype).bits // 8 <= MAX_BATCHED_MB * 2**20

    def begin(self, B: int, dtype: torch.dtype, device: torch.device) -> None:
        """Buffers for a microbatch of B sequences (reallocated only when B, dtype or device change)."""
        for (o, i), group in self.groups.items():
            buf = group.buffer
            if buf is None or buf.shape[1] != B or buf.dtype != dtype or buf.device != device:
                group.buffer = torch.empty(len(group.names), B, o, i, dtype=dtype, device=device)
            group.filled = [False] * len(group.names)

    def slot(self, module: nn.Module, B: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The (B, d_out, d_in) slot this Linear's G_i go to, or None for the per-layer path."""
        entry = self.slot_of.get(id(module))
        if entry is None:
            return None
        group, k = entry
        buf = group.buffer
        if group.filled[k] or buf is None or buf.shape[1] != B or buf.dtype != dtype:
            return None
        group.filled[k] = True
        return buf[k]

    def pending(self) -> list[ShapeGroup]:
        return [g for g in self.groups.values() if any(g.filled)]

    def clear(self) -> None:
        for group in self.groups.values():
            group.filled = [False] * len(group.names)


def finish(groups: list[ShapeGroup], weights_of) -> None:
    """Per shape group: K = G G^T, w = weights_of(group, K, rows) (L, B), grad += sum_i w_i G_i."""
    for group in groups:
        rows = [k for k, f in enumerate(group.filled) if f]
        L, B, O, I = group.buffer.shape
        G = group.buffer if len(rows) == L else group.buffer[rows]  # a copy only when some slot is empty
        G_flat = G.view(len(rows), B, O * I)
        K_LBB = torch.bmm(G_flat, G_flat.transpose(1, 2))
        w_LB = weights_of(group, K_LBB, rows)
        grads = torch.bmm(w_LB.to(G.dtype).unsqueeze(1), G_flat).view(len(rows), O, I)
        for r, k in enumerate(rows):
            p = group.params[k]
            grad = grads[r] if grads.dtype == p.dtype else grads[r].to(p.dtype)
            if p.grad is None:
                p.grad = grad
            else:
                p.grad.add_(grad)
