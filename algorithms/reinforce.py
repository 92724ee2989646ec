"""REINFORCE with a group baseline.

Objective: l_t = -A_i * logp_t on response tokens, aggregated by `algorithm.loss_agg` over the optimizer
batch (docs/algorithms.md#reinforce). No ratio, no clipping; one gradient step per rollout batch. This is the
paper's REINFORCE baseline ("unclipped loss") with GRPO (std-normalised) advantages by default.
"""

from __future__ import annotations

from isopo_bench.aggregation import aggregate
from isopo_bench.algorithm_api import Algorithm, AlgorithmPreset
from isopo_bench.batch import BatchTotals, TrainBatch
from isopo_bench.kl import add_kl_penalty
from isopo_bench.plugins import ALGORITHMS


@ALGORITHMS.register("reinforce")
class Reinforce(Algorithm):
    presets = {"reinforce": AlgorithmPreset(description="the paper's REINFORCE baseline: unclipped, GRPO advantages")}

    def loss(self, logp_BT, mb: TrainBatch, totals: BatchTotals):
        per_token = -mb.advantages_B[:, None] * logp_BT
        loss = aggregate(per_token, mb, self.setup.loss_agg, totals)
        metrics: dict[str, float] = {}
        loss = add_kl_penalty(loss, logp_BT, mb, totals, self.setup, metrics)
        return loss, metrics
