"""ISOPO: proximal policy gradients without pi_old (Abrahamsen, arXiv 2512.23353), both variants.

One gradient step per rollout batch, no ratio, no clipping. The back-propagated loss is advantage-free,
L = aggregate(-logp) (`algorithm.loss_agg`); inside the backward pass every nn.Linear weight gradient
(lm_head included) is replaced by a reweighted sum of per-sequence layer gradients sum_i w_i G_i
(ALGORITHMS.md section 5; the layer-wise engine, isopo_bench.layerwise, does everything but w):
- `isopo` (non-interacting): w_i = s_i A_i, s_i = 1 / (N~_i^p O~_i^q R~_i^r + 1e-8) from the Euclidean norm
  N_i = ||G_i||, the Fisher norm O_i against S = min(num_probes, N) probe tokens, R_i = O_i / N_i, and
  x~ = |x| or, with c_x = reg_x > 0 and lambda_x = c_x EMA[x^2], sqrt(x^2 / lambda_x + 1) (`keep-small`) or
  sqrt(x^2 + lambda_x) (`additive`). Default: the reference's released run, p = 0, q = 1, r = 0, no
  regularisation (s_i = 1 / O_i).
- `isopo-interacting`: w = A~ = lambda (K + lambda' I)^-1 A with the layer NTK K_ij = <G_i, G_j>,
  lambda = damping * EMA[tr K / B] and lambda' = lambda + 1e-8.
The microbatch is part of the algorithm: K, the probes and the EMA statistics are the microbatch's, so the
honest invariance is "same microbatches => same gradient".

Settings (IsopoSettings): the exponents and regularisers above, num_probes / share_probes, damping, the EMA
(ema_decay, ema_cumulative), the numerics (`mode`: fast = ghost norms / Gram products / shared probe
products chosen per layer by cost; faithful = materialised G_i, the J_k probes and eigh, as the
reference), and the policy for parameters that are not Linear weights. Both modes agree to rounding
(tests: both equal a brute-force autograd loop in float64).

Deviations and choices, all configurable:
- Probes: drawn without replacement from all real tokens (prompt and response, any sequence); one set per
  microbatch shared by every layer by default (`share_probes`; the reference redraws per layer), seeded
  from (seed, optimizer step, global microbatch index, layer).
- Non-Linear parameters (norms, untied embedding lookups) get the REINFORCE gradient by default
  (`other_params=reinforce`); `reference` keeps the reference's advantage-free -logp gradient, `freeze`
  drops it. Tied lm_head/embedding: `split`. Linear biases get a zero gradient (as the reference).
- EMA per (statistic, layer), finalised at the end of each optimizer step over all ranks; EMA[x^2] averages
  the step's per-sequence values, EMA[tr K / B] the per-microbatch values; before a layer's first update
  the current microbatch's value is used. `ema_cumulative` replicates the reference's uncleared collection.
- kl_coef > 0 is rejected: the KL term's gradient would pass through the per-layer reweighting.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from isopo_bench.algorithm_api import AlgorithmPreset
from isopo_bench.errors import ConfigError
from isopo_bench.layerwise import EngineOptions, LayerGroup, LayerStats, LayerwiseAlgorithm, Needs
from isopo_bench.layerwise.kernels import EPS_NORM, damped_ntk_solve, damped_solve_eigh, scaled
from isopo_bench.plugins import ALGORITHMS

EPS_SCALE = 1e-8
"""Added to N~^p O~^q R~^r before inverting (the reference's constant)."""


@dataclass(frozen=True)
class IsopoSettings:
    mode: Literal["fast", "faithful"] = "fast"
    """`faithful`: the reference numerics (materialised per-sequence gradients, eigh); `fast`: equivalent cheap forms."""
    p: float = 0.0
    """Negative power of the Euclidean norm N_i (non-interacting)."""
    q: float = 1.0
    """Negative power of the Fisher norm O_i (non-interacting); the released run uses q = 1."""
    r: float = 0.0
    """Negative power of the relative overlap R_i = O_i / N_i (non-interacting)."""
    reg_n: float = 0.0
    """Soft regularisation factor c_N for N (0 disables)."""
    reg_o: float = 0.0
    """Soft regularisation factor c_O for O (0 disables)."""
    reg_r: float = 0.0
    """Soft regularisation factor c_R for R (0 disables)."""
    reg_form: Literal["keep-small", "additive"] = "keep-small"
    """`keep-small`: sqrt(x^2/lambda + 1); `additive`: sqrt(x^2 + lambda)."""
    num_probes: int = 250
    """Fisher probe tokens per layer and microbatch (S = min(num_probes, N))."""
    share_probes: bool = True
    """Draw one probe set per microbatch shared by all layers (False: redraw per layer, as the reference)."""
    damping: float = 1.0
    """c_nat: interacting ISOPO damping lambda = c_nat * EMA[tr K / B]."""
    ema_decay: float = 0.9
    """EMA decay of the per-layer statistics."""
    ema_cumulative: bool = False
    """Replication option: keep collected statistics (cumulative mean) instead of clearing each step."""
    other_params: Literal["reinforce", "freeze", "reference"] = "reinforce"
    """Parameters that are not Linear weights: REINFORCE gradient, frozen, or the reference's advantage-free -logp gradient."""
    tied_embedding: Literal["split", "reference"] = "split"
    """Tied lm_head/embedding: `split` = ISOPO for the head part + `other_params` rule for the lookup part; `reference` = ISOPO replaces the whole gradient."""
    fast_plan: Literal["auto", "ghost", "materialise"] = "auto"
    """Fast mode, per layer: `auto` picks the cheaper exact form by cost; `ghost` forces ghost norms / Gram products; `materialise` forces per-sequence gradients (chunked when over budget). For tests and benchmarks."""
    materialise_budget_mb: int = 1024
    """Most memory (MiB) one layer's materialised per-sequence gradients may take; larger layers are processed in output-row chunks."""


def soft_abs(x_B: torch.Tensor, c: float, ema_x2: torch.Tensor | None, form: str) -> torch.Tensor:
    """x~ of 5.1 step 3 with lambda_x = c * EMA[x^2]; c = 0 gives |x|."""
    if c == 0:
        return x_B.abs()
    lam = c * ema_x2
    if form == "keep-small":
        return torch.sqrt(x_B**2 / (lam + 1e-8) + 1)
    return torch.sqrt(x_B**2 + lam)


def isopo_scale(n_t: torch.Tensor, o_t: torch.Tensor, r_t: torch.Tensor, p: float, q: float, r: float) -> torch.Tensor:
    """s_i = 1 / (N~^p O~^q R~^r + 1e-8); pow(0, 0) = 1, so a zero exponent removes its factor exactly."""
    return 1.0 / (n_t.pow(p) * o_t.pow(q) * r_t.pow(r) + EPS_SCALE)


def _preset(description: str, **settings) -> AlgorithmPreset:
    return AlgorithmPreset(IsopoSettings(**settings), description=description)


@ALGORITHMS.register("isopo")
class Isopo(LayerwiseAlgorithm):
    Settings = IsopoSettings
    interacting: ClassVar[bool] = False
    metric_prefix = "isopo"
    presets = {
        "isopo": _preset("the reference's released run: s_i = 1 / O_i"),
        # Ablations of the non-interacting exponents (N^p O^q R^r; only two are independent without regularisation).
        "isopo-euclidean": _preset("s_i = 1 / N_i", p=1.0, q=0.0, r=0.0),
        "isopo-q-1-r-2": _preset("s_i = O_i R_i^2", p=0.0, q=-1.0, r=-2.0),
        "isopo-reinforce-limit": _preset("s_i = 1: REINFORCE", p=0.0, q=0.0, r=0.0),
        "isopo-faithful": _preset("the reference's numerics", mode="faithful"),
    }

    @functools.cached_property
    def needs(self) -> Needs:
        s = self.settings
        if self.interacting:
            return Needs(ntk=True)
        # With p = r = 0 (the released setting) N_i is unused: the fast mode then skips it, and the layer
        # costs only the probe products on top of an ordinary weight gradient.
        return Needs(euclid_norms=s.p != 0 or s.r != 0 or s.mode == "faithful", fisher_norms=True)

    @functools.cached_property
    def options(self) -> EngineOptions:
        s = self.settings
        return EngineOptions(s.mode, s.fast_plan, s.materialise_budget_mb, s.num_probes, s.share_probes,
                             s.other_params, s.tied_embedding, s.ema_decay, s.ema_cumulative)

    @classmethod
    def validate(cls, setup) -> None:
        super().validate(setup)
        s = setup.settings
        if s.num_probes < 1:
            raise ConfigError("algorithm.num_probes", f"must be >= 1, got {s.num_probes}", "use 250")
        if not s.damping > 0:
            raise ConfigError("algorithm.damping", f"must be > 0, got {s.damping}", "use 1.0")
        if not 0 <= s.ema_decay < 1:
            raise ConfigError("algorithm.ema_decay", f"must be in [0, 1), got {s.ema_decay}", "use 0.9")
        if min(s.reg_n, s.reg_o, s.reg_r) < 0:
            raise ConfigError("algorithm.reg_n/reg_o/reg_r", "must be >= 0", "use 0 to disable")

    def attach(self, model: torch.nn.Module) -> dict[str, str]:
        return {"isopo/variant": "interacting" if self.interacting else "non-interacting"} | super().attach(model)

    def sequence_weights(self, layer: LayerStats) -> torch.Tensor:
        return self._interacting(layer) if self.interacting else self._noninteracting(layer)

    def _noninteracting(self, layer: LayerStats) -> torch.Tensor:
        s, O, N = self.settings, layer.fisher_norm, layer.euclid_norm
        stats = {"O": O} if N is None else {"N": N, "O": O, "R": O / (N + EPS_NORM)}
        regs = {"N": s.reg_n, "O": s.reg_o, "R": s.reg_r}
        tilde = [self._soft(layer, k, stats[k], regs[k]) if k in stats else torch.ones_like(O) for k in "NOR"]
        scale = isopo_scale(*tilde, s.p, s.q, s.r)
        names = {"N": "euclid_norm", "O": "fisher_norm", "R": "rel_overlap"}
        for key, v in [("scale", scale)] + [(names[k], v) for k, v in stats.items()]:
            layer.log(f"algo/isopo_{key}_mean", v)
        return scale * layer.adv_B

    def _soft(self, layer: LayerStats, stat: str, x_B: torch.Tensor, c: float) -> torch.Tensor:
        if c == 0:
            return x_B.abs()
        return soft_abs(x_B, c, layer.smoothed(f"{stat}2", x_B**2), self.settings.reg_form)

    @property
    def group_weights(self):
        """Small-layer batching (the engine's `group_weights`): interacting ISOPO only, whose weights are
        a function of the layer NTK alone."""
        return self._interacting_group if self.interacting else None

    def _interacting_group(self, group: LayerGroup) -> torch.Tensor:
        """`_interacting` for every Linear of one shape at once, fast mode."""
        c = self.settings.damping
        A_t, lam = damped_ntk_solve(group.ntk, group.adv_B,
                                    lambda mean_eig: scaled(c, group.smoothed("ntk_mean_eig", mean_eig)))
        group.log("algo/isopo_damping_mean", lam)
        group.log_norm_ratio("algo/isopo_adv_ratio_mean", A_t, group.adv_B)
        return A_t

    def _interacting(self, layer: LayerStats) -> torch.Tensor:
        K, A, c = layer.ntk, layer.adv_B, self.settings.damping
        if self.settings.mode == "faithful":
            lam = c * layer.smoothed("ntk_mean_eig", K.diagonal().sum() / K.shape[0])
            A_t = damped_solve_eigh(K, A, lam)
        else:
            A_t, lam = damped_ntk_solve(K, A, lambda mean_eig: scaled(c, layer.smoothed("ntk_mean_eig", mean_eig)))
        layer.log("algo/isopo_damping_mean", lam)
        layer.log_norm_ratio("algo/isopo_adv_ratio_mean", A_t, A)
        return A_t


@ALGORITHMS.register("isopo-interacting")
class IsopoInteracting(Isopo):
    interacting = True
    presets = {
        "isopo-interacting": _preset("damped NTK solve, damping 1", damping=1.0),
        "isopo-interacting-faithful": _preset("the reference's numerics (eigh)", mode="faithful"),
    }
