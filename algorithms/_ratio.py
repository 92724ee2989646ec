"""Shared pieces of the ratio-based losses (grpo, cispo, gspo): the pi / pi_old log-ratio, masked
statistics for metrics, clip-range validation and the names of the metrics they report.

Not a plug-in (the leading underscore keeps `algorithms/__init__.py` from treating it as one).
"""

from __future__ import annotations

import torch

from isopo_bench.batch import TrainBatch
from isopo_bench.errors import ConfigError

LOG_RATIO_CLAMP = 20.0
"""|logp - old_logp| is clamped before exp (as verl does) so that a stale token cannot overflow the ratio."""

CLIP_FRAC_LOW = "algo/clip_frac_low"
CLIP_FRAC_HIGH = "algo/clip_frac_high"
DUAL_CLIP_FRAC = "algo/dual_clip_frac"
PPO_KL = "algo/ppo_kl"
RATIO_MEAN = "algo/ratio_mean"
RATIO_MAX = "algo/ratio_max"


def token_log_ratio(logp_BT: torch.Tensor, mb: TrainBatch) -> torch.Tensor:
    """clamp(logp - old_logp, -20, 20); the gradient flows through logp."""
    if mb.old_logp_BT is None:
        raise ValueError("this loss needs mb.old_logp_BT (the trainer computes it when needs_old_logp is True)")
    return (logp_BT - mb.old_logp_BT).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def masked_mean(x_BT: torch.Tensor, mask_BT: torch.Tensor) -> float:
    """Mean of x over the microbatch's response tokens, as a detached float (a metric)."""
    x_BT = x_BT.detach().to(mask_BT.dtype)
    return float((x_BT * mask_BT).sum() / mask_BT.sum().clamp(min=1.0))


def masked_max(x_BT: torch.Tensor, mask_BT: torch.Tensor) -> float:
    """Max of x over response tokens (0.0 when the microbatch has none)."""
    if not bool(mask_BT.bool().any()):
        return 0.0
    return float(x_BT.detach()[mask_BT.bool()].max())


def ratio_metrics(log_ratio_BT: torch.Tensor, mask_BT: torch.Tensor) -> dict[str, float]:
    """Approximate KL(pi_old || pi) (k1: mean of old_logp - logp) and the token ratio's mean and max."""
    ratio_BT = torch.exp(log_ratio_BT.detach())
    return {
        PPO_KL: masked_mean(-log_ratio_BT, mask_BT),
        RATIO_MEAN: masked_mean(ratio_BT, mask_BT),
        RATIO_MAX: masked_max(ratio_BT, mask_BT),
    }


def check_positive(field: str, value: float, fix: str) -> None:
    if not value > 0:
        raise ConfigError(field, f"must be > 0, got {value}", fix)


def check_kl_coef(kl_coef: float) -> None:
    if kl_coef < 0:
        raise ConfigError("algorithm.kl_coef", f"must be >= 0, got {kl_coef}", "use 0 to disable the KL penalty")
