"""GRPO: the PPO-clip surrogate with dual clip (docs/algorithms.md#grpo).

Objective, per response token t of sequence i, with r_t = exp(clamp(logp_t - old_logp_t, -20, 20)):
    l1 = -A_i r_t,   l2 = -A_i clip(r_t, 1 - eps_low, 1 + eps_high),   lc = max(l1, l2),
    l_t = min(lc, -A_i c) if A_i < 0 else lc,
aggregated by `algorithm.loss_agg` over the optimizer batch, plus the optional k3 KL penalty.

Papers: PPO (Schulman et al. 2017, arXiv 1707.06347), GRPO (Shao et al. 2024, DeepSeekMath,
arXiv 2402.03300), dual clip (Ye et al. 2020, arXiv 1912.09729). Upstream: verl's
`compute_policy_loss_vanilla`.

Settings reproduced: the ISOPO paper's GRPO baseline (eps_low = eps_high = 0.2, c = 3, GRPO advantages,
token-mean, no KL). The same loss with other fields gives the named presets (see the project presets):
DAPO (eps_high = 0.28, token-mean) and Dr.GRPO (mean-baseline advantages, seq-mean-token-sum-norm).

Implementation details and deviations:
- The GRPO paper's per-token KL term inside the objective is the shared k3 penalty (`algorithm.kl_coef`,
  default 0 as in the reference run) rather than a GRPO-specific term.
- DAPO's dynamic sampling and overlong reward shaping are not part of this loss.
- Clip metrics are fractions of the microbatch's response tokens: `clip_frac_low` (A < 0 and
  r < 1 - eps_low), `clip_frac_high` (A > 0 and r > 1 + eps_high), `dual_clip_frac` (A < 0 and r > c).
  These are the tokens whose gradient the clipping removes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from isopo_bench.aggregation import aggregate
from isopo_bench.algorithm_api import Algorithm, AlgorithmPreset
from isopo_bench.algorithms._ratio import (
    CLIP_FRAC_HIGH,
    CLIP_FRAC_LOW,
    DUAL_CLIP_FRAC,
    check_kl_coef,
    check_positive,
    masked_mean,
    ratio_metrics,
    token_log_ratio,
)
from isopo_bench.batch import BatchTotals, TrainBatch
from isopo_bench.errors import ConfigError
from isopo_bench.kl import add_kl_penalty
from isopo_bench.plugins import ALGORITHMS


def ppo_dual_clip_losses(
    ratio_BT: torch.Tensor, advantages_BT: torch.Tensor, eps_low: float, eps_high: float, dual_clip: float
) -> torch.Tensor:
    """Per-token PPO-clip loss with dual clip for negative advantages."""
    unclipped_BT = -advantages_BT * ratio_BT
    clipped_BT = -advantages_BT * ratio_BT.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss_BT = torch.maximum(unclipped_BT, clipped_BT)
    dual_BT = torch.minimum(loss_BT, -advantages_BT * dual_clip)
    return torch.where(advantages_BT < 0, dual_BT, loss_BT)


def clip_metrics(ratio_BT, advantages_BT, mask_BT, eps_low: float, eps_high: float, dual_clip: float) -> dict:
    negative_BT, positive_BT = advantages_BT < 0, advantages_BT > 0
    return {
        CLIP_FRAC_LOW: masked_mean(negative_BT & (ratio_BT < 1.0 - eps_low), mask_BT),
        CLIP_FRAC_HIGH: masked_mean(positive_BT & (ratio_BT > 1.0 + eps_high), mask_BT),
        DUAL_CLIP_FRAC: masked_mean(negative_BT & (ratio_BT > dual_clip), mask_BT),
    }


@dataclass(frozen=True)
class GrpoSettings:
    clip_eps_low: float = 0.2
    """Lower clip range (ratio >= 1 - clip_eps_low)."""
    clip_eps_high: float = 0.2
    """Upper clip range (ratio <= 1 + clip_eps_high); DAPO's clip-higher uses 0.28."""
    dual_clip: float = 3.0
    """Dual-clip constant c for negative advantages (the loss is capped at -A c); inf disables."""


@ALGORITHMS.register("grpo")
class Grpo(Algorithm):
    Settings = GrpoSettings
    presets = {
        "grpo": AlgorithmPreset(description="the ISOPO paper's GRPO baseline: eps 0.2/0.2, dual clip 3, token-mean"),
        "dapo": AlgorithmPreset(GrpoSettings(clip_eps_high=0.28), loss_agg="token-mean",
                                description="DAPO's clip-higher (eps_high 0.28), token-mean"),
        "drgrpo": AlgorithmPreset(advantage="mean", loss_agg="seq-mean-token-sum-norm",
                                  description="Dr.GRPO: mean-baseline advantages, token sums over B * L_max"),
    }
    needs_old_logp = True

    @classmethod
    def validate(cls, setup) -> None:
        a = setup.settings
        check_positive("algorithm.clip_eps_low", a.clip_eps_low, "use e.g. 0.2 (ratio >= 0.8)")
        check_positive("algorithm.clip_eps_high", a.clip_eps_high, "use e.g. 0.2, or 0.28 for DAPO")
        if not a.dual_clip > 1.0:
            raise ConfigError(
                "algorithm.dual_clip", f"must be > 1, got {a.dual_clip}", "use 3.0 (the reference), or inf to disable"
            )
        check_kl_coef(setup.kl_coef)

    def loss(self, logp_BT, mb: TrainBatch, totals: BatchTotals):
        a = self.settings
        log_ratio_BT = token_log_ratio(logp_BT, mb)
        ratio_BT = torch.exp(log_ratio_BT)
        advantages_BT = mb.advantages_B[:, None].to(logp_BT.dtype).expand_as(logp_BT)
        per_token_BT = ppo_dual_clip_losses(ratio_BT, advantages_BT, a.clip_eps_low, a.clip_eps_high, a.dual_clip)
        loss = aggregate(per_token_BT, mb, self.setup.loss_agg, totals)
        metrics = ratio_metrics(log_ratio_BT, mb.response_mask_BT)
        metrics |= clip_metrics(
            ratio_BT.detach(), advantages_BT, mb.response_mask_BT, a.clip_eps_low, a.clip_eps_high, a.dual_clip
        )
        loss = add_kl_penalty(loss, logp_BT, mb, totals, self.setup, metrics)
        return loss, metrics
