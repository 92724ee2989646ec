"""Pathwise methods: BPTT and RPO (Zhong, Wang, Li, Huang; arXiv 2508.06214); docs/seed_methods.md#rpo-differentiable-control.

- `bptt`: one gradient step per iteration on -mean return of reparameterised rollouts, differentiated
  through the dynamics, minus an entropy bonus.
- `rpo`: roll out with pi_old keeping the graph; one backward pass caches c_t = dR/da_t (the total
  derivative: through later states and the policy's later actions); then `optim.epochs` steps on
  -sum_t w_t <sg(c_t), a_t^regen> - entropy_coef * H + kl_coef * KL(pi_old || pi_theta) (KL from the second
  epoch), with a_t^regen = mu_theta(s_t) + sigma_theta * sg((a_t - mu_theta(s_t)) / sigma_theta), numerically
  a_t, and w_t = sg(rho_t * 1[1 - band_low <= rho_t <= 1 + band_high]) with rho_t the joint density ratio
  pi_theta(a_t|s_t) / pi_old(a_t|s_t): sign-agnostic, unlike PPO's clip. At epoch 1 rho = 1 and the
  gradient is BPTT's exactly (a test). Defaults: band_low 0.8 (confirmed), band_high 1.0 (unverified),
  kl_coef 0.1 and entropy_coef 1e-3 (our choices; the paper's values were not readable).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from isopo_bench.control.policy import gaussian_entropy, gaussian_kl, gaussian_logp
from isopo_bench.control.registry import CONTROL_ALGORITHMS
from isopo_bench.control.rollout import Trajectories, rollout


class PathwiseAlgorithm:
    gradient_signal: ClassVar[str] = "pathwise"

    def __init__(self, cfg):
        self.cfg, self.ccfg = cfg, cfg.control

    @classmethod
    def validate(cls, cfg) -> None:
        """Nothing beyond ControlConfig's own checks."""

    def entropy(self, policy) -> torch.Tensor:
        return gaussian_entropy(policy.log_std.weight[0])


def optimizer_step(ctx, loss: torch.Tensor) -> dict[str, float]:
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return ctx.apply_step()


@CONTROL_ALGORITHMS.register("bptt")
class Bptt(PathwiseAlgorithm):
    def loss(self, policy, traj: Trajectories) -> torch.Tensor:
        return -traj.returns_N.mean() - self.ccfg.entropy_coef * self.entropy(policy)

    def iteration(self, ctx) -> tuple[Trajectories, dict[str, float]]:
        traj = rollout(ctx.task, ctx.policy, *ctx.start(), differentiable=True)
        return traj, optimizer_step(ctx, self.loss(ctx.policy, traj))


@CONTROL_ALGORITHMS.register("rpo")
class Rpo(PathwiseAlgorithm):
    def action_gradients(self, traj: Trajectories) -> torch.Tensor:
        """c_NTA = d(mean return)/d a_t, one backward pass through the rollout."""
        return torch.stack(torch.autograd.grad(traj.returns_N.mean(), traj.action_nodes), dim=1)

    def loss(self, policy, traj: Trajectories, c_NTA: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict]:
        ccfg = self.ccfg
        actions_NTA = traj.actions_NTA
        mu_NTA, log_std_NTA = policy(traj.obs_NTO)
        log_ratio_NT = gaussian_logp(actions_NTA, mu_NTA, log_std_NTA) - gaussian_logp(actions_NTA, traj.mu_NTA, traj.log_std_NTA)
        rho_NT = torch.exp(log_ratio_NT.detach())
        in_band_NT = (rho_NT >= 1 - ccfg.band_low) & (rho_NT <= 1 + ccfg.band_high)
        w_NT = rho_NT * in_band_NT
        std_NTA = torch.exp(log_std_NTA)
        regen_NTA = mu_NTA + std_NTA * ((actions_NTA - mu_NTA) / std_NTA).detach()
        surrogate = (w_NT[..., None] * c_NTA * regen_NTA).sum()
        loss = -surrogate - ccfg.entropy_coef * self.entropy(policy)
        kl = gaussian_kl(traj.mu_NTA, traj.log_std_NTA, mu_NTA, log_std_NTA).mean()
        if epoch > 0:
            loss = loss + ccfg.kl_coef * kl
        return loss, {"algo/rpo_band_frac": float(in_band_NT.float().mean()), "algo/rpo_kl": float(kl.detach())}

    def iteration(self, ctx) -> tuple[Trajectories, dict[str, float]]:
        traj = rollout(ctx.task, ctx.policy, *ctx.start(), differentiable=True)
        c_NTA = self.action_gradients(traj)
        metrics: dict[str, float] = {}
        for epoch in range(self.cfg.optim.epochs):
            loss, m = self.loss(ctx.policy, traj, c_NTA, epoch)
            metrics |= optimizer_step(ctx, loss) | m
        return traj, metrics
