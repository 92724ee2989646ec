"""Batched, differentiable control tasks in pure torch (docs/seed_methods.md#the-control-track). A state batch is state_NS; one
step maps (state_NS, action_NA) to (next state, reward_N) with ordinary torch ops, so the return is
differentiable in the actions and the initial state (pathwise methods) and the same code serves
score-function methods under no_grad. Initial states are a pure function of a torch.Generator."""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from isopo_bench.control.registry import CONTROL_TASKS


class ControlTask:
    """A control task: obs/action sizes, default horizon, reset, observe and a differentiable step."""

    gradient_signals: ClassVar[tuple[str, ...]] = ("score-function", "pathwise")
    """Differentiable dynamics and reward: both score-function and pathwise methods apply."""
    obs_dim: ClassVar[int]
    act_dim: ClassVar[int]
    horizon: ClassVar[int]
    dt: ClassVar[float]
    version: ClassVar[str] = "1"
    """Bumped whenever dynamics, reward or initial states change (logged as the scorer version)."""

    def reset(self, n: int, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, state_NS: torch.Tensor) -> torch.Tensor:
        return state_NS

    def step(self, state_NS: torch.Tensor, action_NA: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


@CONTROL_TASKS.register("point-mass")
class PointMass(ControlTask):
    """2-D double integrator driven to the origin: p' = p + v' dt, v' = v + u dt (semi-implicit Euler),
    u = a; reward -dt (|p|^2 + 0.1 |v|^2 + 0.01 |u|^2); p0 ~ U[-1, 1]^2, v0 = 0; T = 50, dt = 0.1."""

    obs_dim, act_dim, horizon, dt = 4, 2, 50, 0.1

    def reset(self, n, gen, dtype=torch.float32):
        pos_N2 = 2 * torch.rand(n, 2, generator=gen, dtype=torch.float64) - 1
        return torch.cat([pos_N2, torch.zeros(n, 2, dtype=torch.float64)], dim=1).to(dtype)

    def step(self, state_NS, action_NA):
        pos_N2, vel_N2 = state_NS[:, :2], state_NS[:, 2:]
        cost_N = pos_N2.pow(2).sum(1) + 0.1 * vel_N2.pow(2).sum(1) + 0.01 * action_NA.pow(2).sum(1)
        vel_N2 = vel_N2 + action_NA * self.dt
        pos_N2 = pos_N2 + vel_N2 * self.dt
        return torch.cat([pos_N2, vel_N2], dim=1), -self.dt * cost_N


@CONTROL_TASKS.register("pendulum")
class Pendulum(ControlTask):
    """Pendulum swing-up (theta = 0 upright; gym's dynamics with g = 10, m = l = 1, no speed clamp so the
    step stays smooth): u = 2 tanh(a), thetadot' = thetadot + (15 sin theta + 3 u) dt, theta' = theta +
    thetadot' dt; reward cos(theta) - 1 - 0.1 thetadot^2 - 0.001 u^2; theta0 ~ U[-pi, pi],
    thetadot0 ~ U[-1, 1]; T = 100, dt = 0.05. Observation (cos theta, sin theta, thetadot)."""

    obs_dim, act_dim, horizon, dt = 3, 1, 100, 0.05

    def reset(self, n, gen, dtype=torch.float32):
        u_N2 = torch.rand(n, 2, generator=gen, dtype=torch.float64)
        return torch.stack([math.pi * (2 * u_N2[:, 0] - 1), 2 * u_N2[:, 1] - 1], dim=1).to(dtype)

    def observe(self, state_NS):
        theta_N, thetadot_N = state_NS[:, 0], state_NS[:, 1]
        return torch.stack([theta_N.cos(), theta_N.sin(), thetadot_N], dim=1)

    def step(self, state_NS, action_NA):
        theta_N, thetadot_N = state_NS[:, 0], state_NS[:, 1]
        u_N = 2 * torch.tanh(action_NA[:, 0])
        reward_N = theta_N.cos() - 1 - 0.1 * thetadot_N.pow(2) - 0.001 * u_N.pow(2)
        thetadot_N = thetadot_N + (15.0 * theta_N.sin() + 3.0 * u_N) * self.dt
        theta_N = theta_N + thetadot_N * self.dt
        return torch.stack([theta_N, thetadot_N], dim=1), reward_N
