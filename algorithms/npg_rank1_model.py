"""npg_rank1_model: the damped rank-1 natural gradient with ONE Fisher over all parameters (whole-model
scope; SEED_METHODS.md, arXiv 2601.18626's Sherman-Morrison step).

The per-layer `npg_rank1` treats every Linear layer as its own Fisher block. Here the Fisher sample is one
sequence's gradient over the whole model: with g the REINFORCE gradient of the optimizer step (all
parameters: Linears, norms, embeddings) and u = G_j the gradient of sequence j's share of the
advantage-free loss (the per-sequence gradient ISOPO and npg_rank1 use, now over every parameter), the step
is

    d = lambda (lambda' I + u u^T)^-1 g = (lambda / lambda') (g - u (u.g) / (lambda' + |u|^2)),

lambda = damping * EMA[|u|^2] (|u|^2 for a uniformly drawn j estimates the mean squared per-sequence
gradient norm, the whole-model tr K / B), lambda' = lambda + 1e-8 as in ISOPO. Huge damping gives
REINFORCE.

The honest price is a second backward pass, of one sequence: u is known only after the whole backward of
sequence j, which the main pass (a sum over the batch inside autograd) cannot isolate. So the main pass
is REINFORCE's, and `finalize_grads` reruns sequence j alone (forward + backward of 1 of B sequences, via
torch.autograd.grad so .grad is untouched) and rewrites .grad. j is drawn per optimizer step from
(seed, step) over the step's global microbatches (`begin_step`), so under data parallelism every rank draws
the same j, computes the same u from the gathered batch and transforms the same all-reduced g: no extra
communication. FSDP2 is refused (a sharded parameter's full u would need gathering).
"""

from __future__ import annotations

import torch

from isopo_bench.aggregation import aggregate
from isopo_bench.algorithms._isopo_math import EPS_DAMP
from isopo_bench.algorithms._isopo_stats import EmaStats
from isopo_bench.algorithms._npg_math import sample_index
from isopo_bench.algorithms.reinforce import Reinforce
from isopo_bench.batch import BatchTotals, TrainBatch, sequence_logprobs
from isopo_bench.errors import ConfigError
from isopo_bench.plugins import ALGORITHMS

EMA_KEY = "score_sq_norm"


@ALGORITHMS.register("npg_rank1_model")
class NpgRank1Model(Reinforce):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.ncfg = self.acfg.npg
        self.stats = EmaStats(self.acfg.isopo.ema_decay, self.acfg.isopo.ema_cumulative)
        self.step = 0
        self._step_batches: tuple[list[TrainBatch], BatchTotals] | None = None

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        npg = cfg.algorithm.npg
        if npg.fisher != "one":
            raise ConfigError("algorithm.npg.fisher", f"whole-model scope supports `one` only, got `{npg.fisher}` "
                              "(other settings need every sequence's whole-model gradient: B extra backward passes)",
                              "use --algorithm.npg.fisher one, or the per-layer npg_rank1 for own/mean/all")
        if not npg.damping > 0:
            raise ConfigError("algorithm.npg.damping", f"must be > 0, got {npg.damping}", "use 1.0 (lambda = mean |u|^2)")
        if cfg.parallel.world_size > 1 and cfg.parallel.mode == "fsdp2":
            raise ConfigError("parallel.mode", "npg_rank1_model needs full parameters for its Fisher sample u",
                              "use --parallel.mode ddp")

    def attach(self, model: torch.nn.Module) -> dict[str, str]:
        return {"npg/fisher": self.ncfg.fisher, "npg/damping": str(self.ncfg.damping), "npg/scope": "model"}

    def begin_step(self, microbatches, totals: BatchTotals) -> None:
        self._step_batches = (list(microbatches), totals)

    def finalize_grads(self, model: torch.nn.Module) -> dict[str, float]:
        if self._step_batches is None:
            raise RuntimeError("npg_rank1_model needs begin_step(microbatches, totals) before finalize_grads; "
                               "drive it with isopo_bench.algorithm_api.accumulate or the trainer")
        microbatches, totals = self._step_batches
        params = [p for p in model.parameters() if p.grad is not None]
        u = self._fisher_sample(model, microbatches, totals, params)
        g = [p.grad for p in params]
        u_dot_g = sum(torch.vdot(a.flatten(), b.flatten()) for a, b in zip(u, g))
        u_sq = sum(a.pow(2).sum() for a in u)
        lam = self.ncfg.damping * self.stats.value(EMA_KEY, u_sq)
        self.stats.collect(EMA_KEY, u_sq)
        lam_eff = lam + EPS_DAMP
        coef = u_dot_g / (lam_eff + u_sq)
        g_norm = sum(b.pow(2).sum() for b in g).sqrt()
        with torch.no_grad():
            for p, u_p in zip(params, u):
                p.grad.sub_(coef * u_p).mul_(lam / lam_eff)
        self.stats.end_step()
        self.step += 1
        self._step_batches = None
        return {"algo/npg_damping_mean": float(lam), "algo/npg_fisher_sq_norm": float(u_sq),
                "algo/npg_cos_u_g": float(u_dot_g / (u_sq.sqrt() * g_norm + EPS_DAMP))}

    def _fisher_sample(self, model, microbatches, totals: BatchTotals, params) -> list[torch.Tensor]:
        """u = the whole-model gradient of sequence j's share of the advantage-free loss (as the trainer
        aggregates it: same loss_agg, same optimizer-batch denominators)."""
        sizes = [mb.size for mb in microbatches]
        j = sample_index(self.cfg.seed, self.step, -1, sum(sizes))
        for mb in microbatches:
            if j < mb.size:
                break
            j -= mb.size
        row, _ = mb.select(slice(j, j + 1)).trimmed()
        row = row.to(params[0].device)
        with torch.enable_grad():
            logp_BT = sequence_logprobs(model, row)
            loss_j = aggregate(-logp_BT, row.response_mask_BT, self.acfg.loss_agg, totals)
            return list(torch.autograd.grad(loss_j, params, allow_unused=True, materialize_grads=True))

    def state_dict(self) -> dict:
        return {"stats": self.stats.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state.get("stats", {}))
        self.step = int(state.get("step", 0))
