"""The project's score-function algorithms (reinforce, grpo, cispo, isopo, npg_rank1, ...) on trajectories.

Trajectories play the role of sequences and steps the role of tokens: the loss plug-ins receive the
policy's per-step log-densities of the taken actions in the `logp_BT` slot, every step is a "response
token", and the sequence-level advantages are the batch-normalised returns (`algorithm.advantage`, one
group of all trajectories). ISOPO and npg_rank1 act through their backward hooks on the Gaussian MLP's
Linear layers, evaluated on (trajectories, steps, features) inputs. The trainer contract is the LLM
trainer's: epochs over the batch, microbatches inside backward contexts, finalize_grads, clip, step.
`input_ids_BT` holds each row's trajectory index, so a microbatch finds its states and actions.
"""

from __future__ import annotations

import torch

from isopo_bench.algorithm_api import StepContext
from isopo_bench.batch import BatchTotals, TrainBatch
from isopo_bench.control.policy import gaussian_logp
from isopo_bench.control.rollout import Trajectories, rollout
from isopo_bench.plugin_settings import algorithm_setup
from isopo_bench.plugins import ADVANTAGES
from isopo_bench.step_driver import step_gradients
from isopo_bench.step_metrics import UpdateMetrics


def trajectory_batch(traj: Trajectories, advantages_B: torch.Tensor) -> TrainBatch:
    B, T = traj.rewards_NT.shape
    index_BT = torch.arange(B)[:, None].expand(B, T).contiguous()
    ones_BT = torch.ones(B, T, dtype=traj.rewards_NT.dtype)
    return TrainBatch(index_BT, ones_BT.long(), ones_BT, advantages_B.to(ones_BT.dtype))


def trajectory_logp(policy, traj: Trajectories, mb: TrainBatch) -> torch.Tensor:
    rows_B = mb.input_ids_BT[:, 0]
    mu_BTA, log_std_BTA = policy(traj.obs_NTO[rows_B])
    return gaussian_logp(traj.actions_NTA[rows_B], mu_BTA, log_std_BTA)


class ScoreFunctionAdapter:
    gradient_signal = "score-function"

    def __init__(self, cfg, algo_cls):
        self.cfg = cfg
        self.algo = algo_cls(algorithm_setup(cfg.algorithm, seed=cfg.seed, track="control"))
        self.optimizer_steps = 0
        self.advantage_fn = ADVANTAGES.get(cfg.algorithm.advantage)

    def iteration(self, ctx) -> tuple[Trajectories, dict[str, float]]:
        traj = rollout(ctx.task, ctx.policy, *ctx.start(), differentiable=False)
        batch = trajectory_batch(traj, self.advantage_fn(traj.returns_N.view(1, -1)).reshape(-1))
        if self.algo.needs_old_logp:
            with torch.no_grad():
                batch.old_logp_BT = trajectory_logp(ctx.policy, traj, batch)
        size = self.cfg.optim.microbatch_size
        mbs = [batch.select(slice(i, i + size)) for i in range(0, batch.size, size)]
        totals = BatchTotals.of(batch, len(mbs), batch.input_ids_BT.shape[1])
        sums = UpdateMetrics()
        for _ in range(self.cfg.optim.epochs):
            step = StepContext(self.optimizer_steps, mbs, totals, logprobs=lambda policy, mb: trajectory_logp(policy, traj, mb))
            result = step_gradients(self.algo, ctx.policy, step)
            for out in result.microbatches:
                sums.add_mean(out.metrics)
            sums.add_mean(result.metrics)
            sums.add_mean(ctx.apply_step())
            sums.end_optimizer_step()
            self.optimizer_steps += 1
        return traj, sums.result()
