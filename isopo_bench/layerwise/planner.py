"""The cost planner: per layer, which exact form computes the statistics a method needs.

- `ghost`: ghost norms / Gram products / NTK rows from token products, cost ~ T^2 (d_in + d_out) per
  sequence pair (B T^2 for norms, (B T)^2 for the full NTK);
- `materialise`: keep every G_i (B d_out d_in memory); the statistics are then cheap and the final gradient
  is a B-term sum of them;
- `chunked`: G_i by output-row chunks that fit the memory budget, not kept (the final gradient is then
  formed as in `ghost`).
The faithful mode always materialises, as the reference does. The numbers are flop counts of the dominant
products, which is what decides on CPU and GPU alike for these shapes.
"""

from __future__ import annotations

import functools

import torch

from isopo_bench.layerwise import kernels as K
from isopo_bench.layerwise.options import EngineOptions


def _bytes(dt: torch.dtype) -> int:
    return torch.finfo(dt).bits // 8


def fits_budget(B: int, d_in: int, d_out: int, dt: torch.dtype, opts: EngineOptions) -> bool:
    """Whether one layer's B per-sequence gradients (B x d_out x d_in) fit `materialise_budget_mb`."""
    return B * d_out * d_in * _bytes(dt) <= opts.materialise_budget_mb * 2**20


@functools.lru_cache(maxsize=4096)  # called for every Linear of every microbatch with a handful of shapes
def plan_layer(B: int, T: int, d_in: int, d_out: int, dt: torch.dtype, full_ntk: bool, opts: EngineOptions) -> str:
    """`materialise`, `chunked` or `ghost`. `full_ntk`: the method needs all of K (cost (B T)^2 by products)."""
    fits = fits_budget(B, d_in, d_out, dt, opts)
    if opts.mode == "faithful":
        return "materialise"
    if opts.fast_plan != "auto":
        return "chunked" if opts.fast_plan == "materialise" and not fits else opts.fast_plan
    keep_or_redo = B * d_out * d_in if fits else B * T * d_out * d_in
    if full_ntk:
        cost_ghost, cost_mat = (B * T) ** 2 * (d_in + d_out), B * B * d_out * d_in + keep_or_redo
    else:
        cost_ghost, cost_mat = B * T * T * (d_in + d_out), keep_or_redo
    if cost_ghost <= cost_mat:
        return "ghost"
    return "materialise" if fits else "chunked"


def row_chunks(a_BTI: torch.Tensor, g_BTO: torch.Tensor, budget_mb: int):
    """G_i restricted to output-row chunks within the budget, each flattened to (B, rows * d_in)."""
    B, _, d_in = a_BTI.shape
    rows = max(1, budget_mb * 2**20 // (B * d_in * _bytes(a_BTI.dtype)))
    for start in range(0, g_BTO.shape[-1], rows):
        yield K.seq_grads(a_BTI, g_BTO[..., start : start + rows]).reshape(B, -1)


def overlaps_from_G_cheaper(G_BOI: torch.Tensor, S: int, num_tokens: int) -> bool:
    """Probe overlaps g_k^T G_i a_k cost B S d_out d_in from materialised G_i, S N (d_in + d_out) from
    token products (narrow layers and long sequences favour the former)."""
    B, d_out, d_in = G_BOI.shape
    return overlaps_from_G_cheaper_at(B, d_out, d_in, S, num_tokens)


def overlaps_from_G_cheaper_at(B: int, d_out: int, d_in: int, S: int, num_tokens: int) -> bool:
    """`overlaps_from_G_cheaper` from the layer's shape (the chunked LM head decides once for all chunks)."""
    return B * S * d_out * d_in < S * num_tokens * (d_in + d_out)
