"""Rollouts of the Gaussian policy through a control task, with reparameterised actions
a_t = mu(s_t) + sigma * eps_t. With `differentiable`, the whole graph is kept (BPTT, RPO's c_t = dR/da_t);
otherwise it runs under no_grad (score-function methods). Initial states and noise of an iteration are a
pure function of (seed, iteration)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from isopo_bench.control.envs import ControlTask


@dataclass
class Trajectories:
    obs_NTO: torch.Tensor
    """Observations (detached)."""
    action_nodes: list[torch.Tensor]
    """a_t per step (N x A each), graph nodes when differentiable."""
    rewards_NT: torch.Tensor
    mu_NTA: torch.Tensor
    """pi_old's mean (detached)."""
    log_std_NTA: torch.Tensor
    """pi_old's log std (detached)."""

    @property
    def actions_NTA(self) -> torch.Tensor:
        return torch.stack(self.action_nodes, dim=1).detach()

    @property
    def returns_N(self) -> torch.Tensor:
        return self.rewards_NT.sum(dim=1)


def generator_for(seed: int, iteration: int) -> torch.Generator:
    digest = hashlib.sha256(f"control/{seed}/{iteration}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def sample_start(task: ControlTask, n: int, horizon: int, gen: torch.Generator, dtype=torch.float32):
    """(initial state_NS, action noise eps_NTA)."""
    state_NS = task.reset(n, gen, dtype)
    noise_NTA = torch.randn(n, horizon, task.act_dim, generator=gen, dtype=torch.float64).to(dtype)
    return state_NS, noise_NTA


def rollout(task: ControlTask, policy, state_NS, noise_NTA, differentiable: bool) -> Trajectories:
    obs, actions, rewards, mus, log_stds = [], [], [], [], []
    with torch.set_grad_enabled(differentiable):
        for t in range(noise_NTA.shape[1]):
            obs_NO = task.observe(state_NS)
            mu_NA, log_std_NA = policy(obs_NO)
            action_NA = mu_NA + torch.exp(log_std_NA) * noise_NTA[:, t]
            state_NS, reward_N = task.step(state_NS, action_NA)
            obs.append(obs_NO.detach())
            actions.append(action_NA)
            rewards.append(reward_N)
            mus.append(mu_NA.detach())
            log_stds.append(log_std_NA.detach())
    stack = lambda xs: torch.stack(xs, dim=1)  # noqa: E731
    return Trajectories(stack(obs), actions, stack(rewards), stack(mus), stack(log_stds))
