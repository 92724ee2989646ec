"""npg_rank1_model: the damped rank-1 natural gradient with ONE Fisher over all parameters (whole-model
scope; SEED_METHODS.md, arXiv 2601.18626's Sherman-Morrison step).

The per-layer `npg_rank1` treats every Linear layer as its own Fisher block. Here the Fisher sample is one
sequence's gradient over the whole model: with g the REINFORCE gradient of the optimizer step (all
parameters: Linears, norms, embeddings) and u = G_j the gradient of sequence j's share of the
advantage-free loss (over every parameter), the step is

    d = lambda (lambda' I + u u^T)^-1 g = (lambda / lambda') (g - u (u.g) / (lambda' + |u|^2)),

lambda = damping * EMA[|u|^2] (|u|^2 for a uniformly drawn j estimates the mean squared per-sequence
gradient norm, the whole-model tr K / B), lambda' = lambda + 1e-8 as in ISOPO. Huge damping gives
REINFORCE.

The honest price is a second backward pass, of one sequence: u is known only after the whole backward of
sequence j, which the main pass (a sum over the batch inside autograd) cannot isolate. So the main pass
is REINFORCE's (the loss below, KL penalty included when kl_coef > 0), and `finalize_grads` reruns sequence
j alone (forward + backward of 1 of B sequences, via torch.autograd.grad so .grad is untouched) and
rewrites .grad. j is drawn per optimizer step from (seed, ctx.step) over the step's global microbatches,
so under data parallelism every rank draws the same j, computes the same u from the gathered batch and
transforms the same all-reduced g: no extra communication (the EMA's cross-rank sum counts the same |u|^2
once per rank, which leaves its mean unchanged). FSDP2 is refused (a sharded parameter's full u would
need gathering).

Settings (NpgModelSettings): fisher (only `one`: the others would need every sequence's whole-model
gradient, B extra backward passes), damping, ema_decay, ema_cumulative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from isopo_bench.aggregation import aggregate
from isopo_bench.algorithm_api import Algorithm, AlgorithmPreset, StepContext
from isopo_bench.batch import BatchTotals, TrainBatch
from isopo_bench.errors import ConfigError
from isopo_bench.kl import add_kl_penalty
from isopo_bench.layerwise.draws import sample_index
from isopo_bench.layerwise.ema import EmaStats
from isopo_bench.layerwise.kernels import EPS_DAMP
from isopo_bench.plugins import ALGORITHMS

EMA_KEY = "score_sq_norm"


@dataclass(frozen=True)
class NpgModelSettings:
    fisher: Literal["one"] = "one"
    """Fisher samples: `one` sequence per optimizer step over the whole model (the only whole-model setting)."""
    damping: float = 1.0
    """c: lambda = c * EMA[|u|^2], the squared norm of the drawn sequence's whole-model gradient."""
    ema_decay: float = 0.9
    """EMA decay of |u|^2."""
    ema_cumulative: bool = False
    """Keep collected statistics (cumulative mean) instead of clearing each step."""


@ALGORITHMS.register("npg_rank1_model")
class NpgRank1Model(Algorithm):
    Settings = NpgModelSettings
    presets = {"npg_rank1_model": AlgorithmPreset(NpgModelSettings(fisher="one", damping=1.0),
                                                  description="one Fisher sequence per step over all parameters")}

    def __init__(self, setup):
        super().__init__(setup)
        self.stats = EmaStats(self.settings.ema_decay, self.settings.ema_cumulative)

    @classmethod
    def validate(cls, setup) -> None:
        s = setup.settings
        if s.fisher != "one":
            raise ConfigError("algorithm.fisher", f"whole-model scope supports `one` only, got `{s.fisher}` "
                              "(other settings need every sequence's whole-model gradient: B extra backward passes)",
                              "use --algorithm.fisher one, or the per-layer npg_rank1 for own/mean/all")
        if not s.damping > 0:
            raise ConfigError("algorithm.damping", f"must be > 0, got {s.damping}", "use 1.0 (lambda = mean |u|^2)")
        if not 0 <= s.ema_decay < 1:
            raise ConfigError("algorithm.ema_decay", f"must be in [0, 1), got {s.ema_decay}", "use 0.9")
        if setup.sharded_parameters:
            raise ConfigError("parallel.mode", "npg_rank1_model needs full parameters for its Fisher sample u",
                              "use --parallel.mode ddp")

    def attach(self, model: torch.nn.Module) -> dict[str, str]:
        s = self.settings
        return {"npg/fisher": s.fisher, "npg/damping": str(s.damping), "npg/scope": "model"}

    def loss(self, logp_BT: torch.Tensor, mb: TrainBatch, totals: BatchTotals):
        # The main pass is plain REINFORCE: l_t = -A_i logp_t, aggregated over the optimizer batch.
        loss = aggregate(-mb.advantages_B[:, None] * logp_BT, mb, self.setup.loss_agg, totals)
        metrics: dict[str, float] = {}
        return add_kl_penalty(loss, logp_BT, mb, totals, self.setup, metrics), metrics

    def finalize_grads(self, model: torch.nn.Module, ctx: StepContext) -> dict[str, float]:
        params = [p for p in model.parameters() if p.grad is not None]
        u = self._fisher_sample(model, ctx, params)
        g = [p.grad for p in params]
        u_dot_g = sum(torch.vdot(a.flatten(), b.flatten()) for a, b in zip(u, g))
        u_sq = sum(a.pow(2).sum() for a in u)
        lam = self.settings.damping * self.stats.value(EMA_KEY, u_sq)
        self.stats.collect(EMA_KEY, u_sq)
        lam_eff = lam + EPS_DAMP
        coef = u_dot_g / (lam_eff + u_sq)
        g_norm = sum(b.pow(2).sum() for b in g).sqrt()
        with torch.no_grad():
            for p, u_p in zip(params, u):
                p.grad.sub_(coef * u_p).mul_(lam / lam_eff)
        self.stats.end_step(ctx.reducer)
        return {"algo/npg_damping_mean": float(lam), "algo/npg_fisher_sq_norm": float(u_sq),
                "algo/npg_cos_u_g": float(u_dot_g / (u_sq.sqrt() * g_norm + EPS_DAMP))}

    def _fisher_sample(self, model, ctx: StepContext, params) -> list[torch.Tensor]:
        """u = the whole-model gradient of sequence j's share of the advantage-free loss (as the trainer
        aggregates it: same loss_agg, same optimizer-batch denominators)."""
        j = sample_index(self.setup.seed, ctx.step, -1, sum(mb.size for mb in ctx.microbatches))
        for mb in ctx.microbatches:
            if j < mb.size:
                break
            j -= mb.size
        row, _ = mb.select(slice(j, j + 1)).trimmed()
        row = row.to(params[0].device)
        with torch.enable_grad():
            logp_BT = ctx.logprobs(model, row)
            loss_j = aggregate(-logp_BT, row, self.setup.loss_agg, ctx.totals)
            return list(torch.autograd.grad(loss_j, params, allow_unused=True, materialize_grads=True))

    def state_dict(self) -> dict:
        return {"stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state.get("stats", {}))
