"""KL penalty to a reference policy, shared by every loss-based algorithm."""

from __future__ import annotations

import torch

from isopo_bench.aggregation import aggregate
from isopo_bench.batch import BatchTotals, TrainBatch


def kl_k3(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1, clamped to [-10, 10]."""
    delta = ref_logp_BT - logp_BT
    return (torch.exp(delta) - delta - 1).clamp(-10.0, 10.0)


def add_kl_penalty(loss: torch.Tensor, logp_BT: torch.Tensor, mb: TrainBatch, totals: BatchTotals, acfg, metrics: dict):
    """loss + kl_coef * aggregate(k3) when `algorithm.kl_coef` > 0; records `algo/kl`."""
    if acfg.kl_coef <= 0:
        return loss
    kl = aggregate(kl_k3(logp_BT, mb.ref_logp_BT), mb.response_mask_BT, acfg.loss_agg, totals)
    metrics["algo/kl"] = float(kl.detach())
    return loss + acfg.kl_coef * kl
