"""Per-layer statistics of one microbatch: what a method declared in `Needs`, computed in the planned form
(planner.py) from the layer's masked input a and output gradient g, and handed to the method as a
`LayerStats`.

A method's weight function reads the statistics and the advantages, and may smooth a statistic over
steps (`smoothed`: EMA keyed by statistic and layer, ema.py) and log diagnostics (`log`); both go to the
algorithm's own step-level stores, which the engine passes in when it builds the LayerStats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.profiler import record_function

from isopo_bench.layerwise import kernels as K
from isopo_bench.layerwise.ema import EmaStats, MetricSums
from isopo_bench.layerwise.options import Needs
from isopo_bench.layerwise.planner import overlaps_from_G_cheaper, row_chunks
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


def compute(stats: LayerStats, session: MicrobatchSession, needs: Needs, plan: str, x: torch.Tensor,
            a: torch.Tensor, g: torch.Tensor, prefix: str) -> torch.Tensor | None:
    """Fill `stats` with what `needs` asks for; returns the materialised G_BOI when the plan keeps it."""
    B, T = session.shape
    G = None
    if plan == "materialise" and (needs.euclid_norms or needs.ntk or needs.ntk_row or stats.faithful):
        G = K.seq_grads(a, g, out=session.workspace((B, g.shape[-1], a.shape[-1]), a))
    budget = session.options.materialise_budget_mb
    if needs.euclid_norms:
        with record_function(f"{prefix}/norms"):
            if G is not None:
                stats.euclid_norm = torch.linalg.vector_norm(G, dim=(1, 2))
            elif plan == "chunked":
                stats.euclid_norm = sum(Gc.pow(2).sum(dim=1) for Gc in row_chunks(a, g, budget)).sqrt()
            else:
                gram_a = session.shared(x, ("gram",), lambda: torch.bmm(a, a.transpose(1, 2)))
                stats.euclid_norm = K.ghost_sq_norms(a, g, gram_a).clamp(min=0).sqrt()
    if needs.fisher_norms:
        with record_function(f"{prefix}/probes"):
            stats.fisher_norm = _fisher_norms(stats, session, x, a, g, G, prefix)
    if needs.ntk:
        with record_function(f"{prefix}/ntk"):
            if G is not None:
                stats.ntk = K.row_gram(G.reshape(B, -1))
            elif plan == "chunked":
                stats.ntk = sum(Gc @ Gc.T for Gc in row_chunks(a, g, budget))
            else:
                stats.ntk = K.gram_ntk(a, g)
    if needs.ntk_row:
        with record_function(f"{prefix}/ntk"):
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
    stats.metrics.add(f"algo/{prefix}_probes_mean", torch.tensor(float(probes.numel())))
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
