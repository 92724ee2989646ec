"""npg_rank1's per-Linear rule: ISOPO's LinearRule (same custom autograd Function, masks, plans, EMA keys)
with the advantages transformed by the chosen Fisher samples (algorithms/_npg_math.py).

Cost per layer on top of the ordinary weight gradient, by setting: `one` needs one row of K (its damping
scale is the sampled sequence's own K_jj, see `_advantages`); `own` only the norms (as non-interacting ISOPO with p = 2); `mean` and `all` the
full K (as interacting ISOPO). Norms and rows come from materialised G_i when the cost plan keeps them
(then the final gradient is a B-term sum of them), else from ghost products.
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

from isopo_bench.algorithms import _isopo_math as M
from isopo_bench.algorithms import _npg_math as N
from isopo_bench.algorithms._isopo_layer import LinearRule, stats_dtype
from isopo_bench.config import IsopoConfig

FISHER_SETTINGS = ("one", "own", "mean", "all")


class NpgLinearRule(LinearRule):
    def __init__(self, name: str, index: int, cfg: IsopoConfig, fisher: str):
        # `interacting` selects ISOPO's cost model: full-K settings cost as interacting ISOPO, the others
        # need per-sequence norms only, as non-interacting ISOPO.
        super().__init__(name, index, cfg, interacting=fisher in ("mean", "all"))
        self.fisher = fisher

    def weight_grad(self, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        if self.fisher == "all":
            return super().weight_grad(x, grad_out)  # exactly interacting ISOPO
        mc = self.micro
        if mc is None or x.dim() != 3 or tuple(x.shape[:2]) != mc.shape:
            return super().weight_grad(x, grad_out)  # raises ISOPO's explanatory error
        B, T = mc.shape
        dt = stats_dtype(x.dtype)
        a_model, a = mc.masked_input(x, dt)
        g = grad_out.to(dt)
        plan = self.plan(B, T, x.shape[-1], grad_out.shape[-1], dt)
        with record_function("npg/ntk"):
            w_B, G = self._advantages(x, a, g, plan)
        with record_function("npg/combine"):
            if G is not None:
                return M.combine(w_B, a, g, G)
            return M.combine(w_B, a_model, grad_out, None)

    def _damping(self, trace_over_B: torch.Tensor) -> torch.Tensor:
        mc = self.micro
        key = f"ntk_mean_eig/{self.name}"
        lam = self.cfg.damping * mc.stats.value(key, trace_over_B)
        mc.stats.collect(key, trace_over_B)
        mc.metrics.add("algo/npg_damping_mean", lam)
        return lam

    def _advantages(self, x, a, g, plan) -> tuple[torch.Tensor, torch.Tensor | None]:
        mc = self.micro
        B = mc.shape[0]
        A = mc.adv_B.to(a.dtype)
        if self.fisher == "mean":
            K, G = self._full_ntk(a, g, plan)
            A_t = N.adv_mean(K.sum(dim=1), A, self._damping(K.diagonal().sum() / B))
        elif self.fisher == "one":
            j = N.sample_index(mc.seed, mc.step, mc.micro, B)
            G = self._seq_grads(a, g) if plan == "materialise" else None
            if G is not None:
                K_jB = G.flatten(1) @ G[j].flatten()
            else:  # the input half of the row is shared by q/k/v and by gate/up (same input tensor)
                a_row = mc.shared(x, ("npg_input_row", j, a.dtype), lambda: N.input_row(a, j))
                K_jB = N.ghost_row(a, g, j, a_row)
            # Damping scale from K_jj = |G_j|^2: for the uniformly drawn j it is an unbiased estimate of tr K / B
            # (the EMA averages it over microbatches and steps) and it is already in the row. The exact trace
            # would need every sequence's norm, which costs as much again as the row itself.
            A_t = N.adv_one(K_jB, A, j, self._damping(K_jB[j]))
        else:
            G, norms_B = self._euclid_norms(x, a, g, plan)
            diag_B = norms_B**2
            A_t = N.adv_own(diag_B, A, self._damping(diag_B.sum() / B))
        mc.metrics.add("algo/npg_adv_ratio_mean", A_t.norm() / (A.norm() + M.EPS_NORM))
        return A_t, G

    def _full_ntk(self, a, g, plan) -> tuple[torch.Tensor, torch.Tensor | None]:
        B = self.micro.shape[0]
        if plan == "materialise":
            G = self._seq_grads(a, g)
            return M.row_gram(G.reshape(B, -1)), G
        if plan == "chunked":
            return sum(Gc @ Gc.T for Gc in self._row_chunks(a, g)), None
        return M.gram_ntk(a, g), None
