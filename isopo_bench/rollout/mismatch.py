"""Sampler vs trainer log-prob mismatch: the first thing to look at when a run diverges.

The trainer calls this every step for every engine (HF: should be ~0; vLLM: kernel and dtype
differences, or a stale weight sync). Computed in float64 over response tokens only.
"""

from __future__ import annotations

import torch

from isopo_bench import metric_names as M

MAX_LOG_RATIO = 50.0
"""Log-ratios are clamped before exp so a -inf sampler log-prob gives a huge but finite ratio."""


def mismatch_metrics(sampler_logp: torch.Tensor, trainer_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean and max of |trainer - sampler| and mean/max/min of the per-token importance ratio
    exp(trainer - sampler) that an off-policy correction would apply, over tokens where `mask` is 1.

    Tensors of any (equal) shape, e.g. `_BT` or flattened `_N`; returns {} when no token is masked in.
    """
    keep = mask.bool()
    if not bool(keep.any()):
        return {}
    diff_N = trainer_logp.double()[keep] - sampler_logp.double()[keep]
    ratio_N = torch.exp(diff_N.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    metrics = {
        M.MISMATCH_MEAN_ABS: float(diff_N.abs().mean()),
        M.MISMATCH_MAX_ABS: float(diff_N.abs().max()),
        M.MISMATCH_RATIO_MEAN: float(ratio_N.mean()),
        M.MISMATCH_RATIO_MAX: float(ratio_N.max()),
        M.MISMATCH_RATIO_MIN: float(ratio_N.min()),
    }
    return metrics


def microbatch_mismatch(pairs) -> dict[str, float]:
    """mismatch_metrics over (microbatch, trainer log-probs) pairs of one step, before any update: the
    microbatch's sampler_logp_BT and response_mask_BT against the trainer's log-probs of the same tokens."""
    if not pairs:
        return {}
    sampler = torch.cat([mb.sampler_logp_BT.flatten() for mb, _ in pairs])
    trainer = torch.cat([logp.flatten() for _, logp in pairs])
    mask = torch.cat([mb.response_mask_BT.flatten() for mb, _ in pairs])
    return mismatch_metrics(sampler, trainer, mask)
