"""Sampler vs trainer log-prob mismatch: the first thing to look at when a run diverges."""

from __future__ import annotations

import torch

from isopo_bench import metric_names as M


def mismatch_metrics(sampler_logp: torch.Tensor, trainer_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Statistics over response tokens (mask 1) of |sampler - trainer| and of the importance ratio
    exp(trainer - sampler) that an off-policy correction would apply."""
    keep = mask.bool()
    if not bool(keep.any()):
        return {}
    diff = (trainer_logp.double() - sampler_logp.double())[keep]
    ratio = torch.exp(diff.clamp(-20, 20))
    return {
        M.MISMATCH_MEAN_ABS: float(diff.abs().mean()),
        M.MISMATCH_MAX_ABS: float(diff.abs().max()),
        M.MISMATCH_RATIO_MEAN: float(ratio.mean()),
        M.MISMATCH_RATIO_MAX: float(ratio.max()),
    }
