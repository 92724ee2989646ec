"""Advantage estimators (ALGORITHMS.md section 2): rewards_PG -> advantages_PG, one registry entry each.

Convention for a group of size 1 (no baseline is possible): `grpo` returns A = R (mean 0, std 1, as
verl does), `mean` and `rloo` return A = R as well.
"""

from __future__ import annotations

import torch

from isopo_bench.plugins import ADVANTAGES

GRPO_STD_EPS = 1e-6


@ADVANTAGES.register("grpo")
def grpo_advantages(rewards_PG: torch.Tensor) -> torch.Tensor:
    """(R - group mean) / (unbiased group std + 1e-6)."""
    if rewards_PG.shape[1] == 1:
        return rewards_PG.clone()
    mean = rewards_PG.mean(dim=1, keepdim=True)
    std = rewards_PG.std(dim=1, unbiased=True, keepdim=True)
    return (rewards_PG - mean) / (std + GRPO_STD_EPS)


@ADVANTAGES.register("mean")
def mean_baseline_advantages(rewards_PG: torch.Tensor) -> torch.Tensor:
    """R - group mean (Dr.GRPO)."""
    if rewards_PG.shape[1] == 1:
        return rewards_PG.clone()
    return rewards_PG - rewards_PG.mean(dim=1, keepdim=True)


@ADVANTAGES.register("rloo")
def rloo_advantages(rewards_PG: torch.Tensor) -> torch.Tensor:
    """R - mean of the other members of the group (leave-one-out)."""
    G = rewards_PG.shape[1]
    if G == 1:
        return rewards_PG.clone()
    others_mean = (rewards_PG.sum(dim=1, keepdim=True) - rewards_PG) / (G - 1)
    return rewards_PG - others_mean
