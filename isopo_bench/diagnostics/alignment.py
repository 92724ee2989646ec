"""Alignment with the damped natural gradient of the batch, in Woodbury form (never a P x P matrix).

From the captured scores (capture.py) every parameter's per-sequence gradient is formed in row chunks of at
most `budget_mb` (B x rows x cols), on this rank's sequences, placed in the global (B, n) block and summed
over ranks with the step context's reducer. Each chunk C adds C C^T to the B x B Gram K and C x to the
B-vectors U x of the directions x of interest (the algorithm's gradient and the applied update). A Linear
weight also keeps its own K_l and U_l x (the layer-block figures); for a tied lm_head that block is the head
use only (the gradient the Linear sees), while the whole-model K uses the full tied gradient (head and
lookup parts summed, cross terms included).

Then with w_i = c_i A_i (the run's aggregation weight times the advantage; g = U^T w is the vanilla
policy gradient) and lambda = rho tr(K) / B^2:
    v = (K / B + lambda I)^-1 w,  d_lambda = U^T v,
    cos(x, d_lambda) = (U x) . v / (|x| sqrt(v^T K v)),   cos(x, g) = (U x) . w / (|x| sqrt(w^T K w)),
    Fisher length of Delta = |U Delta|^2 / B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from isopo_bench import metric_names as M
from isopo_bench.diagnostics.capture import MicrobatchScores, ScoreCapture, Use


@dataclass
class Projections:
    """The B x B Gram and the B-vectors U x of the named directions, for one block of parameters."""

    K: torch.Tensor
    Ux: dict[str, torch.Tensor]
    sq_norm: dict[str, float] = field(default_factory=dict)


def _use_rows(use: Use, scores: MicrobatchScores, r0: int, r1: int) -> torch.Tensor | None:
    """(B_mb, n) per-sequence gradient of rows [r0, r1) of the parameter, from one use."""
    if use.kind == "linear_w":
        a, g = scores.linear[use.module]
        return torch.bmm(g[..., r0:r1].transpose(1, 2), a).flatten(1)
    if use.kind == "linear_b":
        _, g = scores.linear[use.module]
        return g[..., r0:r1].sum(1)
    if use.kind == "norm":
        return scores.norm[use.module][:, r0:r1]
    if use.kind == "embedding":
        ids, gy = scores.embedding
        onehot = (ids.unsqueeze(-1) == torch.arange(r0, r1, device=ids.device)).to(gy.dtype)
        return torch.einsum("btv,btd->bvd", onehot, gy).flatten(1)
    raise ValueError(use.kind)


def _global(B: int, local: Sequence[tuple[int, MicrobatchScores]], sizes: dict[int, int], offsets: dict[int, int],
            fn: Callable[[MicrobatchScores], torch.Tensor], n: int, dtype, reducer) -> torch.Tensor:
    if len(local) == len(sizes):  # one process: every microbatch is here, nothing to reduce
        return torch.cat([fn(scores).to(dtype).cpu() for _, scores in sorted(local, key=lambda e: e[0])])
    out = torch.zeros(B, n, dtype=dtype)
    for index, scores in local:
        out[offsets[index] : offsets[index] + sizes[index]] = fn(scores).to(dtype).cpu()
    return reducer(out)


def project(capture: ScoreCapture, local: Sequence[tuple[int, MicrobatchScores]], sizes: dict[int, int],
            directions: dict[str, dict[str, torch.Tensor]], reducer, budget_mb: int = 256,
            dtype: torch.dtype | None = None) -> tuple[Projections, dict[str, Projections]]:
    """(whole model, {linear name: its weight's block}). `local`: (global microbatch index, scores) of this
    rank; `sizes`: sequences per global microbatch; `directions`: {direction: {param name: tensor}}.
    Chunks are formed in the statistics dtype (float64 for float64 models, else float32); K, U x and the
    solves are accumulated in float64."""
    if dtype is None:
        dtype = torch.float64 if next(iter(capture.params.values())).dtype == torch.float64 else torch.float32
    B = sum(sizes.values())
    offsets, acc = {}, 0
    for index in sorted(sizes):
        offsets[index] = acc
        acc += sizes[index]
    acc_dt = torch.float64
    zeros = lambda: torch.zeros(B, B, dtype=acc_dt)  # noqa: E731
    whole = Projections(zeros(), {d: torch.zeros(B, dtype=acc_dt) for d in directions},
                        {d: 0.0 for d in directions})
    layers: dict[str, Projections] = {}
    for pname, uses in capture.uses.items():
        p = capture.params[pname]
        rows_total = p.shape[0]
        per_row = max(1, p.numel() // rows_total)
        rows = max(1, budget_mb * 2**20 // (B * per_row * 8))
        xs = {d: dirs[pname].detach().to(dtype).cpu().reshape(rows_total, -1) for d, dirs in directions.items()}
        for d, x in xs.items():
            whole.sq_norm[d] += float(x.pow(2).sum())
        layer_uses = [u for u in uses if u.kind == "linear_w"]
        for u in layer_uses:
            layers[u.module] = Projections(zeros(), {d: torch.zeros(B, dtype=acc_dt) for d in directions},
                                           {d: float(x.pow(2).sum()) for d, x in xs.items()})
        for r0 in range(0, rows_total, rows):
            r1 = min(rows_total, r0 + rows)
            n = (r1 - r0) * per_row
            parts = {u: _global(B, local, sizes, offsets, lambda s, u=u: _use_rows(u, s, r0, r1), n, dtype, reducer)
                     for u in uses}
            C = sum(parts.values())
            KC = (C @ C.T).to(acc_dt)
            X = torch.stack([x[r0:r1].flatten().to(dtype) for x in xs.values()], 1)
            UX = (C @ X).to(acc_dt)
            whole.K += KC
            for d, col in zip(xs, UX.unbind(1)):
                whole.Ux[d] += col
            for u in layer_uses:
                lp, Cl = layers[u.module], parts[u]
                single = len(uses) == 1  # the layer block is the whole parameter: reuse its products
                lp.K += KC if single else (Cl @ Cl.T).to(acc_dt)
                for d, col in zip(xs, (UX if single else (Cl @ X).to(acc_dt)).unbind(1)):
                    lp.Ux[d] += col
    return whole, layers


def natural_coefficients(K: torch.Tensor, w: torch.Tensor, rho: float) -> torch.Tensor:
    """v = (K / B + lambda I)^-1 w with lambda = rho tr(K) / B^2 (d_lambda = U^T v)."""
    B = K.shape[0]
    lam = rho * float(K.diagonal().sum()) / B**2
    return torch.linalg.solve(K / B + lam * torch.eye(B, dtype=K.dtype), w)


def _cos(num: float, x_sq: float, d_sq: float) -> float | None:
    den = math.sqrt(max(x_sq, 0.0)) * math.sqrt(max(d_sq, 0.0))
    return num / den if den > 0 else None


def alignment_metrics(whole: Projections, layers: dict[str, Projections], w: torch.Tensor,
                      rhos: Sequence[float]) -> dict[str, float]:
    """Cosines of each direction with g and with d_lambda (whole model, per-layer mean, block-diagonal),
    the Fisher length of the update."""
    out: dict[str, float] = {}
    B = whole.K.shape[0]
    put = lambda key, value: out.__setitem__(key, value) if value is not None else None  # noqa: E731
    g_sq = float(w @ whole.K @ w)
    for d, Ux in whole.Ux.items():
        put(M.diag_cos(d, "vanilla"), _cos(float(Ux @ w), whole.sq_norm[d], g_sq))
    for rho in rhos:
        v = natural_coefficients(whole.K, w, rho)
        nat_sq = float(v @ whole.K @ v)
        vl = {name: natural_coefficients(lp.K, w, rho) for name, lp in layers.items()}
        for d, Ux in whole.Ux.items():
            put(M.diag_cos(d, "natural", rho), _cos(float(Ux @ v), whole.sq_norm[d], nat_sq))
            per_layer = [_cos(float(lp.Ux[d] @ vl[n]), lp.sq_norm[d], float(vl[n] @ lp.K @ vl[n]))
                         for n, lp in layers.items()]
            per_layer = [c for c in per_layer if c is not None]
            if per_layer:
                out[M.diag_cos(d, "layer_natural", rho)] = sum(per_layer) / len(per_layer)
            num = sum(float(lp.Ux[d] @ vl[n]) for n, lp in layers.items())
            x_sq = sum(lp.sq_norm[d] for lp in layers.values())
            nat_bd = sum(float(vl[n] @ lp.K @ vl[n]) for n, lp in layers.items())
            put(M.diag_cos(d, "blockdiag_natural", rho), _cos(num, x_sq, nat_bd))
    if "update" in whole.Ux:
        out[M.DIAG_FISHER_LEN] = float(whole.Ux["update"].pow(2).sum()) / B
    return out


def layer_cosines(layers: dict[str, Projections], w: torch.Tensor, direction: str, rho: float) -> dict[str, float]:
    """Per-layer cosine of `direction` with that layer's damped natural gradient (tests, notebooks)."""
    out = {}
    for name, lp in layers.items():
        v = natural_coefficients(lp.K, w, rho)
        c = _cos(float(lp.Ux[direction] @ v), lp.sq_norm[direction], float(v @ lp.K @ v))
        if c is not None:
            out[name] = c
    return out


def aggregation_weights(mbs: Sequence, loss_agg: str, totals) -> torch.Tensor:
    """c_i of every sequence (global order): the derivative of the run's aggregated loss with respect to
    one of sequence i's per-token losses (constant within a sequence in every aggregation mode)."""
    from isopo_bench.aggregation import aggregate

    out = []
    for mb in mbs:
        mask = mb.response_mask_BT.double()
        x = torch.zeros_like(mask, requires_grad=True)
        (c_BT,) = torch.autograd.grad(aggregate(x, mask, loss_agg, totals), [x])
        out.append((c_BT * mask).sum(1) / mask.sum(1).clamp(min=1.0))
    return torch.cat(out)
