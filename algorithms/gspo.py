"""GSPO: PPO-clip on a length-normalised sequence-level importance ratio.

Objective, for sequence i with response length |y_i| (masked tokens only):
    s_i = exp( mean_{t in y_i} (logp_t - old_logp_t) ),
    J = mean_i min( s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i ).
Implemented per token with the stop-gradient trick (the paper's GSPO-token form with A_{i,t} = A_i):
    s_{i,t} = sg(s_i) * exp(logp_t - sg(logp_t)),
    l_t = max( -A_i s_{i,t}, -A_i clip(s_{i,t}, 1 - eps_low, 1 + eps_high) ),
whose value equals s_i at every token and whose gradient is s_i * grad logp_t. With seq-mean-token-mean
aggregation the gradient is exactly the paper's: mean_i A_i s_i (1/|y_i|) sum_t grad logp_t for
unclipped sequences, 0 for clipped ones. Clipping is decided once per sequence.

Paper: Zheng et al. 2025, "Group Sequence Policy Optimization" (arXiv 2507.18071), eq. 5-7 and 13-14.
Upstream: verl's `compute_policy_loss_gspo`.

Settings reproduced: the paper's section 5.1 clip ranges eps_low = 3e-4, eps_high = 4e-4 (its settings
`algorithm.gspo_clip_eps_low/high`) and seq-mean-token-mean
aggregation (set by the `gspo` preset; `algorithm.loss_agg` is honoured, token-mean weights sequences by
length), no KL.

Deviations and details:
- No dual clip (the paper has none).
- The per-token log-ratio is clamped to [-20, 20] before the mean (as for the other ratio losses), and only
  the detached sequence term is clamped, so the clamp never removes gradient from unclipped sequences.
- Metrics: `clip_frac_low` / `clip_frac_high` are fractions of response tokens (the paper reports token
  fractions) in sequences clipped from below (A < 0) / above (A > 0); `ratio_mean` / `ratio_max` are over
  the sequence ratios s_i of the microbatch; `ppo_kl` is the token-level k1 estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from isopo_bench.aggregation import aggregate
from isopo_bench.algorithm_api import Algorithm, AlgorithmPreset
from isopo_bench.algorithms._ratio import (
    CLIP_FRAC_HIGH,
    CLIP_FRAC_LOW,
    PPO_KL,
    RATIO_MAX,
    RATIO_MEAN,
    check_kl_coef,
    check_positive,
    masked_mean,
    token_log_ratio,
)
from isopo_bench.batch import BatchTotals, TrainBatch
from isopo_bench.kl import add_kl_penalty
from isopo_bench.plugins import ALGORITHMS


def sequence_log_ratio(log_ratio_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """log s_i = mean over sequence i's response tokens of the token log-ratio (0 for an empty response)."""
    return (log_ratio_BT * mask_BT).sum(-1) / mask_BT.sum(-1).clamp(min=1.0)


def token_sequence_ratio(logp_BT: torch.Tensor, seq_log_ratio_B: torch.Tensor) -> torch.Tensor:
    """s_{i,t} = sg(s_i) * pi_t / sg(pi_t): value s_i, gradient s_i * grad logp_t."""
    return torch.exp(logp_BT - logp_BT.detach() + seq_log_ratio_B.detach()[:, None])


@dataclass(frozen=True)
class GspoSettings:
    gspo_clip_eps_low: float = 3e-4
    """Lower clip range of the sequence ratio s_i (GSPO paper: 3e-4)."""
    gspo_clip_eps_high: float = 4e-4
    """Upper clip range of the sequence ratio s_i (GSPO paper: 4e-4)."""


@ALGORITHMS.register("gspo")
class Gspo(Algorithm):
    Settings = GspoSettings
    presets = {"gspo": AlgorithmPreset(loss_agg="seq-mean-token-mean",
                                       description="GSPO: sequence ratio clipped to [1-3e-4, 1+4e-4], seq-mean-token-mean")}
    needs_old_logp = True

    @classmethod
    def validate(cls, setup) -> None:
        a = setup.settings
        check_positive("algorithm.gspo_clip_eps_low", a.gspo_clip_eps_low, "use the paper's 3e-4")
        check_positive("algorithm.gspo_clip_eps_high", a.gspo_clip_eps_high, "use the paper's 4e-4")
        check_kl_coef(setup.kl_coef)

    def loss(self, logp_BT, mb: TrainBatch, totals: BatchTotals):
        a = self.settings
        mask_BT = mb.response_mask_BT
        log_ratio_BT = token_log_ratio(logp_BT, mb)
        seq_log_ratio_B = sequence_log_ratio(log_ratio_BT, mask_BT)
        ratio_BT = token_sequence_ratio(logp_BT, seq_log_ratio_B)
        advantages_BT = mb.advantages_B[:, None].to(logp_BT.dtype).expand_as(logp_BT)
        unclipped_BT = -advantages_BT * ratio_BT
        clipped_BT = -advantages_BT * ratio_BT.clamp(1.0 - a.gspo_clip_eps_low, 1.0 + a.gspo_clip_eps_high)
        per_token_BT = torch.maximum(unclipped_BT, clipped_BT)
        loss = aggregate(per_token_BT, mb, self.setup.loss_agg, totals)
        metrics = self._metrics(log_ratio_BT, seq_log_ratio_B, advantages_BT, mask_BT)
        loss = add_kl_penalty(loss, logp_BT, mb, totals, self.setup, metrics)
        return loss, metrics

    def _metrics(self, log_ratio_BT, seq_log_ratio_B, advantages_BT, mask_BT) -> dict[str, float]:
        a = self.settings
        seq_ratio_B = torch.exp(seq_log_ratio_B.detach())
        seq_ratio_BT = seq_ratio_B[:, None].expand_as(mask_BT)
        return {
            CLIP_FRAC_LOW: masked_mean((advantages_BT < 0) & (seq_ratio_BT < 1.0 - a.gspo_clip_eps_low), mask_BT),
            CLIP_FRAC_HIGH: masked_mean((advantages_BT > 0) & (seq_ratio_BT > 1.0 + a.gspo_clip_eps_high), mask_BT),
            PPO_KL: masked_mean(-log_ratio_BT, mask_BT),
            RATIO_MEAN: float(seq_ratio_B.mean()) if seq_ratio_B.numel() else 0.0,
            RATIO_MAX: float(seq_ratio_B.max()) if seq_ratio_B.numel() else 0.0,
        }
