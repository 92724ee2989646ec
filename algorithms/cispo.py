"""CISPO: REINFORCE with a clipped, stop-gradient importance-sampling weight (docs/algorithms.md#cispo).

Objective, per response token t of sequence i, with r_t = exp(clamp(logp_t - old_logp_t, -20, 20)):
    l_t = - sg(clip(r_t, 1 - eps_low, 1 + eps_high)) * A_i * logp_t,
aggregated by `algorithm.loss_agg` (token-mean in the paper) plus the optional k3 KL penalty. Unlike
PPO-clip, no token loses its gradient: only the weight is clipped, and no gradient flows through it.

Paper: MiniMax-M1 (arXiv 2506.13585), section 3. Upstream: verl's `compute_policy_loss_cispo`.

Settings reproduced: the CISPO baseline of the paper's setup (docs/algorithms.md#reference-setup): eps_low = 10 (the lower bound is
effectively disabled, as in MiniMax-M1, which sets no lower bound) and eps_high = 0.2 (verl's example;
ScaleRL caps the weight at 5.0, i.e. eps_high = 4.0), token-mean: the defaults of CispoSettings and the
`cispo` preset.

Deviations: MiniMax-M1's optional token mask M_t (a PPO-style trust-region mask) is not implemented,
the paper's default keeps every token. Metrics: `clip_frac_low` / `clip_frac_high` are the fractions of
response tokens whose weight is clipped from below / above (whatever the sign of the advantage).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from isopo_bench.aggregation import aggregate
from isopo_bench.algorithm_api import Algorithm, AlgorithmPreset
from isopo_bench.algorithms._ratio import (
    CLIP_FRAC_HIGH,
    CLIP_FRAC_LOW,
    check_kl_coef,
    check_positive,
    masked_mean,
    ratio_metrics,
    token_log_ratio,
)
from isopo_bench.batch import BatchTotals, TrainBatch
from isopo_bench.kl import add_kl_penalty
from isopo_bench.plugins import ALGORITHMS


@dataclass(frozen=True)
class CispoSettings:
    clip_eps_low: float = 10.0
    """The weight is clipped below at 1 - clip_eps_low (10: unbounded below, as MiniMax-M1)."""
    clip_eps_high: float = 0.2
    """The weight is clipped above at 1 + clip_eps_high (0.2: verl's example; ScaleRL's cap 5 is 4.0)."""


@ALGORITHMS.register("cispo")
class Cispo(Algorithm):
    Settings = CispoSettings
    presets = {"cispo": AlgorithmPreset(description="CISPO: weight clipped to [1-10, 1+0.2], token-mean")}
    needs_old_logp = True

    @classmethod
    def validate(cls, setup) -> None:
        a = setup.settings
        check_positive("algorithm.clip_eps_low", a.clip_eps_low, "use 10 to leave the weight unbounded below")
        check_positive("algorithm.clip_eps_high", a.clip_eps_high, "use e.g. 0.2 (verl) or 4.0 (ScaleRL's cap 5)")
        check_kl_coef(setup.kl_coef)

    def loss(self, logp_BT, mb: TrainBatch, totals: BatchTotals):
        a = self.settings
        log_ratio_BT = token_log_ratio(logp_BT, mb)
        # Stop-gradient: the weight rescales each token's REINFORCE gradient and is never differentiated.
        ratio_BT = torch.exp(log_ratio_BT.detach())
        weight_BT = ratio_BT.clamp(1.0 - a.clip_eps_low, 1.0 + a.clip_eps_high)
        per_token_BT = -weight_BT * mb.advantages_B[:, None].to(logp_BT.dtype) * logp_BT
        loss = aggregate(per_token_BT, mb, self.setup.loss_agg, totals)
        metrics = ratio_metrics(log_ratio_BT, mb.response_mask_BT)
        metrics[CLIP_FRAC_LOW] = masked_mean(ratio_BT < 1.0 - a.clip_eps_low, mb.response_mask_BT)
        metrics[CLIP_FRAC_HIGH] = masked_mean(ratio_BT > 1.0 + a.clip_eps_high, mb.response_mask_BT)
        loss = add_kl_penalty(loss, logp_BT, mb, totals, self.setup, metrics)
        return loss, metrics
