"""ISOPO: proximal policy gradients without pi_old (Abrahamsen, arXiv 2512.23353), both variants.

One gradient step per rollout batch, no ratio, no clipping. The back-propagated loss is advantage-free,
L = aggregate(-logp) (`algorithm.loss_agg`, normalised over the optimizer batch); inside the backward pass
every nn.Linear weight gradient (lm_head included) is replaced by a reweighted sum of per-sequence layer
gradients, sum_i w_i G_i (ALGORITHMS.md section 5):
- `isopo` (non-interacting): w_i = s_i A_i, s_i = 1 / (N~_i^p O~_i^q R~_i^r + 1e-8) from the Euclidean norm
  N_i, the Fisher norm O_i against S = min(num_probes, N) probe tokens, and R_i = O_i / N_i. Default: the
  reference's released run, p = 0, q = 1, r = 0, no regularisation (s_i = 1 / O_i).
- `isopo-interacting`: w = A~ = lambda (K + lambda I)^-1 A with the layer NTK K_ij = <G_i, G_j> and
  lambda = damping * EMA[tr K / B]. The microbatch is part of the algorithm: results depend on how
  sequences are grouped into microbatches (non-interacting too, through the probes and through the
  EMA statistics), so the honest invariance is "same microbatches => same gradient".

Implementation (see the _isopo_*.py helpers): a custom autograd Function per Linear computes grad_input
normally and the ISOPO weight gradient directly (autograd's own weight gradient is never computed);
`fast` mode uses ghost norms / Gram products / shared probe products and chooses per layer between them
and materialised G_i by cost, and skips N_i when p = r = 0 (the default), so non-interacting ISOPO then
costs an ordinary weight gradient plus the S x N probe products; `faithful` materialises every G_i, uses
the J_k probes and eigh, as the reference (set share_probes=False to also redraw probes per layer).
Numerically the two modes agree to rounding (tests: both equal a brute-force autograd loop in float64).

Deviations and choices, all configurable (IsopoConfig):
- Probes: drawn without replacement from all real tokens (prompt and response, any sequence); one set per
  microbatch shared by every layer by default (`share_probes`; the reference redraws per layer). The draw
  is seeded from (seed, optimizer step, microbatch index, layer) so reruns and both modes see the same.
- Non-Linear parameters (norms, untied embedding lookups) get the REINFORCE gradient by default
  (`other_params=reinforce`); `reference` keeps the reference's advantage-free -logp gradient, `freeze`
  drops their gradient (None: AdamW neither moves nor decays them). Tied lm_head/embedding: `split`.
- Linear biases get a zero gradient (reference behaviour; Qwen3/Llama Linears have none).
- EMA: per (statistic, layer), finalised at the end of each optimizer step; EMA[x^2] (x in N, O, R)
  averages the step's per-sequence values, EMA[tr K / B] the step's per-microbatch values; before a
  layer's first update the current microbatch's value is used. `ema_cumulative` replicates the
  reference's uncleared collection. Statistics are per process: under data parallelism they are not
  all-reduced here.
- kl_coef > 0 is rejected: the KL term's gradient would pass through the per-layer reweighting.
"""

from __future__ import annotations

import contextlib
import logging
from typing import ClassVar

import torch

from isopo_bench.aggregation import aggregate
from isopo_bench.algorithm_api import Algorithm
from isopo_bench.algorithms._isopo_layer import LinearRule, MicroContext
from isopo_bench.algorithms._isopo_linear import isopo_linear_forward, overridden_forwards
from isopo_bench.algorithms._isopo_other import ModelPolicy
from isopo_bench.algorithms._isopo_stats import EmaStats, MetricSums
from isopo_bench.batch import BatchTotals, TrainBatch
from isopo_bench.errors import ConfigError
from isopo_bench.plugins import ALGORITHMS

log = logging.getLogger(__name__)


class _Isopo(Algorithm):
    interacting: ClassVar[bool] = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.icfg = self.acfg.isopo
        self.stats = EmaStats(self.icfg.ema_decay, self.icfg.ema_cumulative)
        self.metrics = MetricSums()
        self.step = 0
        self.micro = 0
        self.policy: ModelPolicy | None = None
        self.rules: dict[str, LinearRule] = {}
        self._model_id: int | None = None

    @classmethod
    def validate(cls, cfg) -> None:
        icfg = cfg.algorithm.isopo
        if cfg.algorithm.kl_coef > 0:
            raise ConfigError("algorithm.kl_coef", "ISOPO has no KL penalty", "set it to 0")
        if icfg.num_probes < 1:
            raise ConfigError("algorithm.isopo.num_probes", f"must be >= 1, got {icfg.num_probes}", "use 250")
        if not icfg.damping > 0:
            raise ConfigError("algorithm.isopo.damping", f"must be > 0, got {icfg.damping}", "use 1.0")
        if not 0 <= icfg.ema_decay < 1:
            raise ConfigError("algorithm.isopo.ema_decay", f"must be in [0, 1), got {icfg.ema_decay}", "use 0.9")
        if min(icfg.reg_n, icfg.reg_o, icfg.reg_r) < 0:
            raise ConfigError("algorithm.isopo.reg_n/reg_o/reg_r", "must be >= 0", "use 0 to disable")

    def attach(self, model: torch.nn.Module) -> dict[str, str]:
        self.policy = ModelPolicy.of(model, self.icfg)
        self.rules = {
            name: LinearRule(name, i, self.icfg, self.interacting) for i, name in enumerate(self.policy.linears)
        }
        self._model_id = id(model)
        desc = {"isopo/variant": "interacting" if self.interacting else "non-interacting", "isopo/mode": self.icfg.mode}
        desc |= self.policy.describe(self.icfg)
        if self.policy.frozen_names:
            log.info("ISOPO other_params=freeze: no gradient for %s", desc["isopo/frozen_params"])
        return desc

    def loss(self, logp_BT: torch.Tensor, mb: TrainBatch, totals: BatchTotals):
        # Advantage-free: the advantages enter through the per-layer weights inside the backward pass.
        return aggregate(-logp_BT, mb.response_mask_BT, self.acfg.loss_agg, totals), {}

    def backward_context(self, model: torch.nn.Module, mb: TrainBatch, totals: BatchTotals):
        if self.policy is None or self._model_id != id(model):
            self.attach(model)
        return self._context(mb)

    @contextlib.contextmanager
    def _context(self, mb: TrainBatch):
        micro = MicroContext(
            cfg=self.icfg, interacting=self.interacting, mask_BT=mb.attention_mask_BT.bool(),
            adv_B=mb.advantages_B.detach(), seed=self.cfg.seed, step=self.step, micro=self.micro,
            stats=self.stats, metrics=self.metrics,
        )
        overrides = {m: isopo_linear_forward(m, self.rules[n]) for n, m in self.policy.linears.items()}
        overrides |= self.policy.other_overrides(self.icfg, micro.adv_B, micro.shape[1])
        for rule in self.rules.values():
            rule.micro = micro
        try:
            with overridden_forwards(overrides):
                yield
        finally:
            for rule in self.rules.values():
                rule.micro = None
            micro.clear()
            self.micro += 1

    def finalize_grads(self, model: torch.nn.Module) -> dict[str, float]:
        self.stats.end_step()
        metrics = self.metrics.pop()
        metrics["algo/isopo_microbatches"] = float(self.micro)
        metrics["algo/isopo_linear_layers"] = float(len(self.rules))
        if self.policy is not None:
            for p in self.policy.frozen_params:
                p.grad = None
        self.step += 1
        self.micro = 0
        return metrics

    def state_dict(self) -> dict:
        return {"stats": self.stats.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state.get("stats", {}))
        self.step = int(state.get("step", 0))


@ALGORITHMS.register("isopo")
class Isopo(_Isopo):
    interacting = False


@ALGORITHMS.register("isopo-interacting")
class IsopoInteracting(_Isopo):
    interacting = True
