"""Advantage estimators (ALGORITHMS.md section 2): rewards_PG -> advantages_PG, one registry entry each.

Convention for a group of size 1 (no baseline is possible): `grpo` returns A = R (mean 0, std 1, as
verl does), `mean` and `rloo` return A = R as well. `reinforce++` and `reinforce++-baseline` normalise over
the whole batch (all P groups), as verl.

The z-score epsilon of `grpo` is 1e-6 (verl's default); TRL adds 1e-4 to the std (docs/conventions.md).
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


# REINFORCE++ (Hu et al. 2025, arXiv 2501.03262) as verl defines its outcome-reward forms
# (verl.trainer.ppo.core_algos: compute_reinforce_plus_plus_outcome_advantage and
# compute_reinforce_plus_plus_baseline_outcome_advantage): whiten over the whole batch,
# (x - mean) / sqrt(var + 1e-8) with the unbiased variance. With one outcome reward per sequence and
# gamma = 1 verl's per-token returns all equal the sequence's reward, and verl whitens over response
# TOKENS, so it weights each sequence by its length; an estimator here sees rewards only, so every sequence
# counts once. The two agree when all responses of the batch are equally long (docs/conventions.md).
# "Batch" = every prompt of the step: the trainer computes advantages once on the whole (gathered) batch.
WHITEN_EPS = 1e-8


def batch_whiten(x_PG: torch.Tensor) -> torch.Tensor:
    """(x - mean) / sqrt(unbiased var + 1e-8) over all P*G entries; a one-entry batch gives 0."""
    flat = x_PG.reshape(-1)
    var = flat.var(unbiased=True) if flat.numel() > 1 else torch.zeros((), dtype=flat.dtype)
    return (x_PG - flat.mean()) / torch.sqrt(var + WHITEN_EPS)


@ADVANTAGES.register("reinforce++")
def reinforce_pp_advantages(rewards_PG: torch.Tensor) -> torch.Tensor:
    """REINFORCE++: the rewards whitened over the whole batch (no group baseline)."""
    return batch_whiten(rewards_PG)


@ADVANTAGES.register("reinforce++-baseline")
def reinforce_pp_baseline_advantages(rewards_PG: torch.Tensor) -> torch.Tensor:
    """REINFORCE++-baseline: R - group mean (0 for a group of one, as verl), then whitened over the batch."""
    baseline = rewards_PG.mean(dim=1, keepdim=True) if rewards_PG.shape[1] > 1 else torch.zeros_like(rewards_PG[:, :1])
    return batch_whiten(rewards_PG - baseline)
