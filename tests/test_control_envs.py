"""Control tasks and the Gaussian policy: hand-computed steps, gradcheck-clean dynamics and rewards in
float64, determinism by seed, and the policy's densities against torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch

from isopo_bench.control.policy import GaussianMLP, gaussian_entropy, gaussian_kl, gaussian_logp
from isopo_bench.control.registry import CONTROL_TASKS
from isopo_bench.control.rollout import generator_for, rollout, sample_start

F64 = torch.float64


def test_registered_tasks_and_signals():
    assert CONTROL_TASKS.names() == ["pendulum", "point-mass"]
    pm, pend = CONTROL_TASKS.get("point-mass")(), CONTROL_TASKS.get("pendulum")()
    assert (pm.horizon, pm.dt, pm.obs_dim, pm.act_dim) == (50, 0.1, 4, 2)
    assert (pend.horizon, pend.dt, pend.obs_dim, pend.act_dim) == (100, 0.05, 3, 1)
    assert set(pm.gradient_signals) == {"score-function", "pathwise"}


def test_point_mass_step_by_hand():
    task = CONTROL_TASKS.get("point-mass")()
    nxt, reward = task.step(torch.tensor([[1.0, -0.5, 0.2, 0.0]], dtype=F64), torch.tensor([[1.0, 2.0]], dtype=F64))
    # cost = |p|^2 + 0.1 |v|^2 + 0.01 |u|^2 = 1.25 + 0.004 + 0.05; v' = v + u dt; p' = p + v' dt
    assert reward.item() == pytest.approx(-0.1 * 1.304, abs=1e-15)
    assert torch.allclose(nxt, torch.tensor([[1.03, -0.48, 0.3, 0.2]], dtype=F64), atol=1e-15)


def test_pendulum_step_by_hand():
    task = CONTROL_TASKS.get("pendulum")()
    state = torch.tensor([[math.pi / 2, 0.5]], dtype=F64)
    nxt, reward = task.step(state, torch.tensor([[0.3]], dtype=F64))
    u = 2 * math.tanh(0.3)
    assert reward.item() == pytest.approx(math.cos(math.pi / 2) - 1 - 0.1 * 0.25 - 0.001 * u * u, abs=1e-15)
    thetadot = 0.5 + (15.0 * 1.0 + 3.0 * u) * 0.05
    assert nxt[0, 1].item() == pytest.approx(thetadot, abs=1e-14)
    assert nxt[0, 0].item() == pytest.approx(math.pi / 2 + thetadot * 0.05, abs=1e-14)
    assert torch.allclose(task.observe(state), torch.tensor([[0.0, 1.0, 0.5]], dtype=F64), atol=1e-15)


@pytest.mark.parametrize("name", ["point-mass", "pendulum"])
def test_return_is_gradcheck_clean(name):
    task = CONTROL_TASKS.get(name)()
    state_NS = task.reset(2, torch.Generator().manual_seed(0), F64).requires_grad_()
    actions_NTA = torch.randn(2, 4, task.act_dim, dtype=F64, generator=torch.Generator().manual_seed(1)).requires_grad_()

    def total_return(s_NS, a_NTA):
        rewards = []
        for t in range(a_NTA.shape[1]):
            s_NS, r_N = task.step(s_NS, a_NTA[:, t])
            rewards.append(r_N)
        return torch.stack(rewards, 1).sum(1)

    assert torch.autograd.gradcheck(total_return, (state_NS, actions_NTA))


@pytest.mark.parametrize("name", ["point-mass", "pendulum"])
def test_rollouts_are_deterministic_by_seed(name):
    task = CONTROL_TASKS.get(name)()
    torch.manual_seed(0)
    policy = GaussianMLP(task.obs_dim, task.act_dim, 16)
    runs = [rollout(task, policy, *sample_start(task, 8, 10, generator_for(s, 3)), differentiable=False) for s in (0, 0, 1)]
    assert torch.equal(runs[0].rewards_NT, runs[1].rewards_NT)
    assert not torch.equal(runs[0].rewards_NT, runs[2].rewards_NT)
    assert runs[0].rewards_NT.shape == (8, 10) and bool((runs[0].rewards_NT <= 0).all())


def test_policy_densities_match_torch_distributions():
    torch.manual_seed(0)
    policy = GaussianMLP(4, 2, 16, init_log_std=-0.3).double()
    obs_BTO = torch.randn(3, 5, 4, dtype=F64)
    mu, log_std = policy(obs_BTO)
    assert mu.shape == log_std.shape == (3, 5, 2) and torch.allclose(log_std, torch.full_like(log_std, -0.3))
    dist = torch.distributions.Normal(mu, log_std.exp())
    a = torch.randn(3, 5, 2, dtype=F64)
    assert torch.allclose(gaussian_logp(a, mu, log_std), dist.log_prob(a).sum(-1), atol=1e-13)
    assert torch.allclose(gaussian_entropy(log_std), dist.entropy().sum(-1), atol=1e-13)
    other = torch.distributions.Normal(mu + 0.2, (log_std + 0.1).exp())
    expected = torch.distributions.kl_divergence(dist, other).sum(-1)
    assert torch.allclose(gaussian_kl(mu, log_std, mu + 0.2, log_std + 0.1), expected, atol=1e-13)
