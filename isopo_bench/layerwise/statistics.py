"""Per-layer statistics of one microbatch: what a method declared in `Needs`, computed in the planned form
(planner.py) from the layer's masked input a and output gradient g, and handed to the method as a
`LayerStats`.

`compute_chunked` computes the same statistics for a layer whose output gradient arrives by output-column
chunks (the chunked LM head): every statistic is a sum over output rows (||G_i||^2, K_ij, K_jB, the probe
overlaps <G_i, J_k> and ||g_k||^2), so per-chunk parts are added and the norms taken at the end.

A method's weight function reads the statistics and the advantages, and may smooth a statistic over
steps (`smoothed`: EMA keyed by statistic and layer, ema.py) and log diagnostics (`log`); both go to the
algorithm's own step-level stores, which the engine passes in when it builds the LayerStats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from isopo_bench.layerwise import kernels as K
from isopo_bench.layerwise.ema import EmaStats, MetricSums
from isopo_bench.layerwise.options import Needs
from isopo_bench.layerwise.planner import overlaps_from_G_cheaper, overlaps_from_G_cheaper_at, row_chunks
from isopo_bench.layerwise.session import MicrobatchSession


@dataclass
class LayerStats:
    """One Linear layer in one microbatch, as a method's `sequence_weights` sees it (fields it did not
    declare in `Needs` are None)."""

    name: str
    index: int
    """Position among the model's Linears (seeds per-layer probe draws)."""
    adv_B: torch.Tensor
    """Advantages, in the statistics dtype."""
    faithful: bool
    ema: EmaStats
    metrics: MetricSums
    euclid_norm: torch.Tensor | None = None
    fisher_norm: torch.Tensor | None = None
    ntk: torch.Tensor | None = None
    ntk_row: torch.Tensor | None = None
    drawn: int | None = None
    """The sequence j whose row `ntk_row` is."""

    def smoothed(self, stat: str, current: torch.Tensor) -> torch.Tensor:
        """EMA of `stat` for this layer over earlier steps (the current mean before its first update);
        `current` is collected for this step's update."""
        key = f"{stat}/{self.name}"
        value = self.ema.value(key, current)
        self.ema.collect(key, current)
        return value

    def log(self, key: str, values: torch.Tensor) -> None:
        """Add to the step's mean of metric `key` (every element counts once)."""
        self.metrics.add(key, values)

    def log_norm_ratio(self, key: str, numerator: torch.Tensor, denominator: torch.Tensor) -> None:
        """Add ||numerator|| / (||denominator|| + 1e-12) to the step's mean of `key` (computed at the step's
        end, for every layer at once)."""
        self.metrics.add_norm_ratio(key, numerator, denominator, K.EPS_NORM)


@dataclass
class LayerGroup:
    """The Linears of one weight shape in one microbatch, as a method's `group_weights` sees them under
    small-layer batching (batched.py): LayerStats' statistics with a leading layer axis L."""

    names: list[str]
    adv_B: torch.Tensor
    ema: EmaStats
    metrics: MetricSums
    ntk: torch.Tensor
    """(L, B, B): each layer's NTK."""

    def smoothed(self, stat: str, current_L: torch.Tensor) -> torch.Tensor:
        """LayerStats.smoothed for every layer of the group: (L,) in, (L,) out, the same EMA keys."""
        keys = [f"{stat}/{name}" for name in self.names]
        value = self.ema.value_many(keys, current_L)
        self.ema.collect_many(keys, current_L)
        return value

    def log(self, key: str, values_L: torch.Tensor) -> None:
        """One value per layer, as LayerStats.log of each layer's value."""
        self.metrics.add(key, values_L)

    def log_norm_ratio(self, key: str, numerator_LB: torch.Tensor, denominator_B: torch.Tensor) -> None:
        """LayerStats.log_norm_ratio for each layer's row."""
        self.metrics.add_norm_ratio(key, numerator_LB, denominator_B, K.EPS_NORM)


def compute(stats: LayerStats, session: MicrobatchSession, needs: Needs, plan: str, x: torch.Tensor,
            a: torch.Tensor, g: torch.Tensor, prefix: str) -> torch.Tensor | None:
    """Fill `stats` with what `needs` asks for; returns the materialised G_BOI when the plan keeps it."""
    B, T = session.shape
    G = None
    if plan == "materialise" and (needs.euclid_norms or needs.ntk or needs.ntk_row or stats.faithful):
        G = K.seq_grads(a, g, out=session.workspace((B, g.shape[-1], a.shape[-1]), a))
    budget = session.options.materialise_budget_mb
    if needs.euclid_norms:
        with K.stage(f"{prefix}/norms"):
            if G is not None:
                stats.euclid_norm = torch.linalg.vector_norm(G, dim=(1, 2))
            elif plan == "chunked":
                stats.euclid_norm = sum(Gc.pow(2).sum(dim=1) for Gc in row_chunks(a, g, budget)).sqrt()
            else:
                gram_a = session.shared(x, ("gram",), lambda: torch.bmm(a, a.transpose(1, 2)))
                stats.euclid_norm = K.ghost_sq_norms(a, g, gram_a).clamp(min=0).sqrt()
    if needs.fisher_norms:
        with K.stage(f"{prefix}/probes"):
            stats.fisher_norm = _fisher_norms(stats, session, x, a, g, G, prefix)
    if needs.ntk:
        with K.stage(f"{prefix}/ntk"):
            if G is not None:
                stats.ntk = K.row_gram(G.reshape(B, -1))
            elif plan == "chunked":
                stats.ntk = sum(Gc @ Gc.T for Gc in row_chunks(a, g, budget))
            else:
                stats.ntk = K.gram_ntk(a, g)
    if needs.ntk_row:
        with K.stage(f"{prefix}/ntk"):
            j = stats.drawn = session.drawn()
            if G is not None:
                stats.ntk_row = G.flatten(1) @ G[j].flatten()
            else:  # the input half of the row is shared by q/k/v and by gate/up (same input tensor)
                a_row = session.shared(x, ("input_row", j, a.dtype), lambda: K.input_row(a, j))
                stats.ntk_row = K.ghost_row(a, g, j, a_row)
    return G


def _fisher_norms(stats: LayerStats, session: MicrobatchSession, x, a, g, G, prefix: str) -> torch.Tensor:
    """O_i = ||(<G_i, J_k>)_k||_2 / sqrt(tr F) over the layer's probe tokens k."""
    B, T = session.shape
    probes = session.probes_for(stats.index)
    stats.metrics.add(f"algo/{prefix}_probes_mean", float(probes.numel()))
    a_N, g_N = a.reshape(B * T, -1), g.reshape(B * T, -1)
    if stats.faithful or (G is not None and overlaps_from_G_cheaper(G, probes.numel(), B * T)):
        a_S, g_S = a_N[probes], g_N[probes]
        P_SB = K.probe_overlaps_materialised(G, a_S, g_S)
        denom = K.fisher_trace_sqrt(a_S.norm(dim=1), g_S.norm(dim=1))
    else:
        # Only a shared probe set makes input-side products reusable across layers.
        probe_key = -1 if session.options.share_probes else stats.index
        side_a = session.shared(x, ("probe", probe_key), lambda: K.probe_side(a_N, probes))
        side_g = K.probe_side(g_N, probes)
        P_SB = K.probe_overlaps(side_a, side_g, B, T)
        denom = K.fisher_trace_sqrt(side_a[1], side_g[1])
    return P_SB.norm(dim=0) / denom


def compute_chunked(stats: LayerStats, session: MicrobatchSession, needs: Needs, plan: str, x: torch.Tensor,
                    a: torch.Tensor, g_chunks, d_out: int, prefix: str,
                    keep: list[torch.Tensor] | None = None) -> bool:
    """`compute` with the output gradient as chunks g_c (B, T, c) of its d_out columns, re-iterable
    (`g_chunks()`, each call recomputing them). G_i is formed per chunk (B x c x d_in) where `compute` would
    keep it; returns whether it would have (the materialised-fraction metric). With `keep` (a list) and
    such a plan, every chunk's G_i is appended to it instead of being overwritten by the next."""
    B, T = session.shape
    with_G = plan == "materialise" and (needs.euclid_norms or needs.ntk or needs.ntk_row or stats.faithful)
    with_G = with_G or (plan == "chunked" and (needs.euclid_norms or needs.ntk or needs.ntk_row))
    a_N = a.reshape(B * T, -1)
    if needs.fisher_norms:
        probes = session.probes_for(stats.index)
        stats.metrics.add(f"algo/{prefix}_probes_mean", float(probes.numel()))
        S = probes.numel()
        from_G = stats.faithful or (plan == "materialise" and with_G
                                    and overlaps_from_G_cheaper_at(B, d_out, a.shape[-1], S, B * T))
        a_S = a_N[probes]
        if not from_G:
            side_a = session.shared(x, ("probe", -1 if session.options.share_probes else stats.index),
                                    lambda: K.probe_side(a_N, probes))
    if needs.ntk_row:
        j = stats.drawn = session.drawn()
        if not with_G:
            a_row = session.shared(x, ("input_row", j, a.dtype), lambda: K.input_row(a, j))
    if needs.euclid_norms and not with_G:
        gram_a = session.shared(x, ("gram",), lambda: torch.bmm(a, a.transpose(1, 2)))
    sq_norm = ntk = row = overlaps = g_sq_S = 0
    with K.stage(f"{prefix}/head_chunks"):
        for g in g_chunks():
            G = None
            if with_G:
                out = None if keep is not None else session.workspace((B, g.shape[-1], a.shape[-1]), a)
                G = K.seq_grads(a, g, out=out)
                if keep is not None:
                    keep.append(G)
            if needs.euclid_norms:
                sq_norm = sq_norm + (G.pow(2).sum(dim=(1, 2)) if G is not None else K.ghost_sq_norms(a, g, gram_a))
            if needs.ntk:
                ntk = ntk + (K.row_gram(G.reshape(B, -1)) if G is not None else K.gram_ntk(a, g))
            if needs.ntk_row:
                row = row + (G.flatten(1) @ G[j].flatten() if G is not None else K.ghost_row(a, g, j, a_row))
            if needs.fisher_norms:
                g_N = g.reshape(B * T, -1)
                g_S = g_N[probes]
                g_sq_S = g_sq_S + g_S.pow(2).sum(dim=1)
                if from_G:
                    part = K.probe_overlaps_materialised(G, a_S, g_S)
                else:
                    part = K.probe_overlaps(side_a, (g_S @ g_N.T, None), B, T)
                overlaps = overlaps + part
    if needs.euclid_norms:
        stats.euclid_norm = sq_norm.clamp(min=0).sqrt()
    if needs.ntk:
        stats.ntk = ntk
    if needs.ntk_row:
        stats.ntk_row = row
    if needs.fisher_norms:
        stats.fisher_norm = overlaps.norm(dim=0) / K.fisher_trace_sqrt(a_S.norm(dim=1), g_sq_S.sqrt())
    return with_G and plan == "materialise"
