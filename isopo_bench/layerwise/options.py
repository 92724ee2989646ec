"""What a layer-wise method declares to the engine: the statistics it needs and how they are computed.

`Needs` lists the per-sequence statistics of each Linear layer the method's weight function reads;
the engine computes only those, each in the cheapest exact form. `EngineOptions` are the numerics and
parameter-policy choices a method may expose as its own settings (ISOPO and npg_rank1 do; a method
without them runs with the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Needs:
    euclid_norms: bool = False
    """N_i = ||G_i||_F for every sequence i."""
    fisher_norms: bool = False
    """O_i = ||(<G_i, J_k>)_k|| / sqrt(tr F) against S Fisher probes J_k = g_k a_k^T (ISOPO's Fisher norm)."""
    ntk: bool = False
    """The layer NTK K_ij = <G_i, G_j> (B x B)."""
    ntk_row: bool = False
    """Row j of K for the microbatch's drawn sequence j (draws.sample_index)."""


@dataclass(frozen=True)
class EngineOptions:
    mode: str = "fast"
    """`fast`: cheapest exact forms; `faithful`: materialised G_i, probes J_k used directly (the reference)."""
    fast_plan: str = "auto"
    """Fast mode, per layer: `auto` (by cost), `ghost` or `materialise` (chunked when over budget)."""
    materialise_budget_mb: int = 1024
    """Most memory (MiB) one layer's materialised G_i may take; larger layers go by output-row chunks."""
    num_probes: int = 250
    """Fisher probe tokens per layer and microbatch (S = min(num_probes, N))."""
    share_probes: bool = True
    """One probe set per microbatch shared by all layers (False: redrawn per layer)."""
    other_params: str = "reinforce"
    """Parameters that are not Linear weights: `reinforce`, `freeze` or `reference` (param_rules.py)."""
    tied_embedding: str = "split"
    """Tied lm_head/embedding: `split` or `reference` (param_rules.py)."""
    ema_decay: float = 0.9
    """EMA decay of the per-layer statistics a method smooths."""
    ema_cumulative: bool = False
    """Keep collected statistics across steps (cumulative mean; the ISOPO reference's behaviour)."""
