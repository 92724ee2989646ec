"""npg_rank1: the damped low-rank inverse-Fisher natural policy gradient (Huo, Dash, Stoican, Kaski, Sun;
arXiv 2601.18626), per Linear layer, on the layer-wise engine (SEED_METHODS.md).

The paper steps along F^-1 g with F = lambda I + u u^T, u the score of one sampled action, inverted by
Sherman-Morrison: d = (g - u (u.g) / (lambda + |u|^2)) / lambda, lambda = mean |u|^2. Here, per Linear
layer and microbatch, with per-sequence layer gradients G_i of the advantage-free loss and
g = sum_i A_i G_i, the layer gradient is d = lambda (lambda' I + sum_{u in S} u u^T)^-1 g, lambda' =
lambda + 1e-8, for the Fisher samples S chosen by `algorithm.fisher`. By the push-through identity every d
is again sum_i A~_i G_i, so only the advantages change:
- `one` (default, the paper's): S = {G_j}, one sequence drawn per microbatch (the same j for every layer):
  A~ = (lambda / lambda') (A - e_j (K_j. A) / (lambda' + K_jj)); needs row j of the layer NTK only;
- `own`: each sequence's own score for its own term, A~_i = A_i lambda / (lambda' + |G_i|^2); equals
  `isopo` with (p, q, r) = (2, 0, 0) and the keep-small regulariser c_N = damping (up to its 1e-8 constants);
- `mean`: S = {mean_i G_i}; REINFORCE with every advantage shifted by one constant;
- `all`: S = all sequences, A~ = lambda (K + lambda' I)^-1 A; exactly `isopo-interacting`.
The factor lambda makes huge damping equal REINFORCE. lambda = damping * EMA[tr K / B] (K the layer NTK),
the EMA as ISOPO's (ALGORITHMS.md 5.3); `one` estimates tr K / B by the drawn sequence's own K_jj = |G_j|^2
(unbiased for a uniform j, and already in the row; the exact trace would cost as much again).

Settings (NpgSettings): fisher, damping, the EMA, the engine's numerics (mode, fast_plan,
materialise_budget_mb) and the policy for parameters that are not Linear weights (default: their
REINFORCE gradient). No KL penalty. Whole-model scope is `npg_rank1_model`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

from isopo_bench.algorithm_api import AlgorithmPreset
from isopo_bench.errors import ConfigError
from isopo_bench.layerwise import EngineOptions, LayerGroup, LayerStats, LayerwiseAlgorithm, Needs
from isopo_bench.layerwise.kernels import EPS_DAMP, damped_ntk_solve, damped_solve_eigh, scaled
from isopo_bench.plugins import ALGORITHMS

FISHER_SETTINGS = ("one", "own", "mean", "all")


@dataclass(frozen=True)
class NpgSettings:
    fisher: Literal["one", "own", "mean", "all"] = "one"
    """Fisher samples S of the damped rank-|S| natural gradient lambda (lambda I + sum_S u u^T)^-1 g, per Linear
    layer: `one` = one sequence of the microbatch (seeded draw), `own` = each sequence's own score, `mean` = the
    mean score, `all` = all sequences (= isopo-interacting)."""
    damping: float = 1.0
    """c: lambda = c * EMA[tr K / B] (mean squared per-sequence layer-gradient norm), as interacting ISOPO;
    `one` estimates tr K / B by the sampled sequence's own |G_j|^2 (unbiased, and free given K's row j)."""
    ema_decay: float = 0.9
    """EMA decay of the per-layer damping statistic."""
    ema_cumulative: bool = False
    """Keep collected statistics (cumulative mean) instead of clearing each step."""
    mode: Literal["fast", "faithful"] = "fast"
    """`faithful`: materialised per-sequence gradients (and eigh for `all`); `fast`: equivalent cheap forms."""
    fast_plan: Literal["auto", "ghost", "materialise"] = "auto"
    """Fast mode, per layer: `auto` picks the cheaper exact form by cost; `ghost` / `materialise` force one (tests)."""
    materialise_budget_mb: int = 1024
    """Most memory (MiB) one layer's materialised per-sequence gradients may take (else output-row chunks)."""
    other_params: Literal["reinforce", "freeze", "reference"] = "reinforce"
    """Parameters that are not Linear weights: REINFORCE gradient, frozen, or the advantage-free -logp gradient."""
    tied_embedding: Literal["split", "reference"] = "split"
    """Tied lm_head/embedding: `split` = npg for the head part + `other_params` for the lookup; `reference` = npg for all."""


def adv_one(K_jB: torch.Tensor, A_B: torch.Tensor, j: int, lam: torch.Tensor) -> torch.Tensor:
    """S = {G_j}: d = (lambda / lambda')(g - G_j <G_j, g> / (lambda' + |G_j|^2)); only A_j changes."""
    lam_eff = lam + EPS_DAMP
    A_t = A_B.clone()
    A_t[j] = A_B[j] - (K_jB @ A_B) / (lam_eff + K_jB[j])
    return (lam / lam_eff) * A_t


def adv_own(diag_B: torch.Tensor, A_B: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """S_i = {G_i} for sequence i's own term: A~_i = A_i lambda / (lambda' + |G_i|^2)."""
    return A_B * lam / (lam + EPS_DAMP + diag_B)


def adv_mean(K1_B: torch.Tensor, A_B: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """S = {u}, u = mean_i G_i: u.g = 1^T K A / B, |u|^2 = 1^T K 1 / B^2; every A_i shifts by one constant."""
    B = A_B.shape[0]
    lam_eff = lam + EPS_DAMP
    shift = (K1_B @ A_B / B) / (lam_eff + K1_B.sum() / B**2) / B
    return (lam / lam_eff) * (A_B - shift)


@ALGORITHMS.register("npg_rank1")
class NpgRank1(LayerwiseAlgorithm):
    Settings = NpgSettings
    metric_prefix = "npg"
    presets = {"npg_rank1": AlgorithmPreset(NpgSettings(fisher="one", damping=1.0),
                                            description="one sampled Fisher sequence per microbatch, per layer")}

    @functools.cached_property
    def needs(self) -> Needs:
        fisher = self.settings.fisher
        return Needs(ntk=fisher in ("mean", "all"), ntk_row=fisher == "one", euclid_norms=fisher == "own")

    @functools.cached_property
    def options(self) -> EngineOptions:
        s = self.settings
        return EngineOptions(mode=s.mode, fast_plan=s.fast_plan, materialise_budget_mb=s.materialise_budget_mb,
                             other_params=s.other_params, tied_embedding=s.tied_embedding, ema_decay=s.ema_decay,
                             ema_cumulative=s.ema_cumulative)

    @classmethod
    def validate(cls, setup) -> None:
        super().validate(setup)
        s = setup.settings
        if s.fisher not in FISHER_SETTINGS:
            raise ConfigError("algorithm.fisher", f"unknown `{s.fisher}`", f"pick one of {', '.join(FISHER_SETTINGS)}")
        if not s.damping > 0:
            raise ConfigError("algorithm.damping", f"must be > 0, got {s.damping}", "use 1.0 (lambda = mean |u|^2)")
        if not 0 <= s.ema_decay < 1:
            raise ConfigError("algorithm.ema_decay", f"must be in [0, 1), got {s.ema_decay}", "use 0.9")

    def attach(self, model: torch.nn.Module) -> dict[str, str]:
        s = self.settings
        return super().attach(model) | {"npg/fisher": s.fisher, "npg/damping": str(s.damping), "npg/scope": "layer"}

    def sequence_weights(self, layer: LayerStats) -> torch.Tensor:
        fisher, A = self.settings.fisher, layer.adv_B
        if fisher == "all":  # exactly interacting ISOPO's computation, so the two agree bit for bit
            K = layer.ntk
            if self.settings.mode == "faithful":
                A_t = damped_solve_eigh(K, A, self._damping(layer, K.diagonal().sum() / K.shape[0]))
            else:
                A_t, _ = damped_ntk_solve(K, A, lambda mean_eig: self._damping(layer, mean_eig))
        elif fisher == "mean":
            K = layer.ntk
            A_t = adv_mean(K.sum(dim=1), A, self._damping(layer, K.diagonal().sum() / K.shape[0]))
        elif fisher == "one":
            K_jB, j = layer.ntk_row, layer.drawn
            A_t = adv_one(K_jB, A, j, self._damping(layer, K_jB[j]))
        else:
            diag_B = layer.euclid_norm**2
            A_t = adv_own(diag_B, A, self._damping(layer, diag_B.sum() / A.shape[0]))
        layer.log_norm_ratio("algo/npg_adv_ratio_mean", A_t, A)
        return A_t

    @property
    def group_weights(self):
        """Small-layer batching (the engine's `group_weights`) for fisher=all, whose weights are a function
        of the layer NTK alone; interacting ISOPO's batched computation, so the two agree bit for bit."""
        return self._group_weights_all if self.settings.fisher == "all" else None

    def _group_weights_all(self, group: LayerGroup) -> torch.Tensor:
        def damping_of(mean_eig_L):
            lam = scaled(self.settings.damping, group.smoothed("ntk_mean_eig", mean_eig_L))
            group.log("algo/npg_damping_mean", lam)
            return lam

        A_t, _ = damped_ntk_solve(group.ntk, group.adv_B, damping_of)
        group.log_norm_ratio("algo/npg_adv_ratio_mean", A_t, group.adv_B)
        return A_t

    def _damping(self, layer: LayerStats, trace_over_B: torch.Tensor) -> torch.Tensor:
        lam = scaled(self.settings.damping, layer.smoothed("ntk_mean_eig", trace_over_B))
        layer.log("algo/npg_damping_mean", lam)
        return lam
