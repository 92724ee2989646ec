"""Algorithms on the control track: RPO's first epoch is BPTT's gradient, its band mask and KL schedule;
the score-function adapter gives REINFORCE's explicit gradient on trajectories, and the per-layer
machinery (ISOPO / npg_rank1) works on the Gaussian MLP; impossible pairings fail at config time; the
trainer logs runs the leaderboard reads."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import fresh_mlflow_uri
from isopo_bench.algorithm_api import Algorithm, StepContext
from isopo_bench.batch import BatchTotals
from isopo_bench.capabilities import check_pairing
from isopo_bench.config import AlgorithmConfig, OptimConfig, RunConfig, TaskConfig, TrackingConfig
from isopo_bench.control.config import ControlConfig, ControlRunConfig, check_gradient_signal
from isopo_bench.control.pathwise import Bptt, Rpo
from isopo_bench.control.policy import GaussianMLP, gaussian_logp
from isopo_bench.control.registry import CONTROL_ALGORITHMS, CONTROL_TASKS
from isopo_bench.control.rollout import generator_for, rollout, sample_start
from isopo_bench.control.score import trajectory_batch, trajectory_logp
from isopo_bench.errors import ConfigError
from isopo_bench.plugin_settings import algorithm_config, build_algorithm
from isopo_bench.plugins import TASKS
from isopo_bench.step_driver import step_gradients

F64 = torch.float64


def setup(name="point-mass", n=8, horizon=12, seed=0):
    task = CONTROL_TASKS.get(name)()
    torch.manual_seed(seed)
    policy = GaussianMLP(task.obs_dim, task.act_dim, 16, init_log_std=-0.5).double()
    with torch.no_grad():
        policy.net[-1].weight.mul_(30.0)  # a policy that acts, so that every term has a gradient
    start = sample_start(task, n, horizon, generator_for(seed, 1), F64)
    return task, policy, start


def control_cfg(**control) -> ControlRunConfig:
    return ControlRunConfig(control=ControlConfig(**control))


def grads(policy, loss) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(policy.parameters()))])


@pytest.mark.parametrize("name", ["point-mass", "pendulum"])
def test_rpo_first_epoch_is_the_bptt_gradient(name):
    task, policy, start = setup(name)
    cfg = control_cfg(entropy_coef=0.01, kl_coef=0.5)
    bptt = grads(policy, Bptt(cfg).loss(policy, rollout(task, policy, *start, differentiable=True)))
    rpo = Rpo(cfg)
    traj = rollout(task, policy, *start, differentiable=True)
    loss, metrics = rpo.loss(policy, traj, rpo.action_gradients(traj), epoch=0)
    assert metrics["algo/rpo_band_frac"] == 1.0 and metrics["algo/rpo_kl"] == 0.0
    assert float((grads(policy, loss) - bptt).norm() / bptt.norm()) < 1e-12


def test_rpo_kl_from_the_second_epoch_and_band_mask():
    task, policy, start = setup()
    traj = rollout(task, policy, *start, differentiable=True)
    cfg = control_cfg(entropy_coef=0.0, kl_coef=0.7)
    rpo = Rpo(cfg)
    c_NTA = rpo.action_gradients(traj)
    assert torch.equal(traj.actions_NTA, torch.stack([a.detach() for a in traj.action_nodes], 1))
    with torch.no_grad():
        policy.log_std.weight.add_(0.4)  # pi_theta != pi_old: rho moves off 1
    loss0, m0 = rpo.loss(policy, traj, c_NTA, epoch=0)
    loss1, m1 = rpo.loss(policy, traj, c_NTA, epoch=1)
    assert m1["algo/rpo_kl"] > 0.01
    assert float((loss1 - loss0).detach()) == pytest.approx(0.7 * m1["algo/rpo_kl"], rel=1e-12)
    # A band that excludes every step: the surrogate passes no gradient, whatever the sign of c_t.
    narrow = Rpo(control_cfg(entropy_coef=0.0, band_low=1e-9, band_high=1e-9))
    loss, m = narrow.loss(policy, traj, c_NTA, epoch=0)
    assert m["algo/rpo_band_frac"] == 0.0 and float(grads(policy, loss).abs().max()) == 0.0


def explicit_reinforce(policy, traj, adv_B):
    """-(1 / (B T)) sum_b A_b sum_t grad log pi(a_bt | s_bt): REINFORCE, token-mean."""
    mu, log_std = policy(traj.obs_NTO)
    logp_BT = gaussian_logp(traj.actions_NTA, mu, log_std)
    return grads(policy, -(adv_B[:, None] * logp_BT).sum() / logp_BT.numel())


def adapter_grads(policy, traj, adv_B, algo_cfg: AlgorithmConfig, microbatch=4):
    algo = build_algorithm(algo_cfg, track="control")
    batch = trajectory_batch(traj, adv_B)
    mbs = [batch.select(slice(i, i + microbatch)) for i in range(0, batch.size, microbatch)]
    totals = BatchTotals.of(batch, len(mbs), batch.input_ids_BT.shape[1])
    if algo.needs_old_logp:
        with torch.no_grad():
            batch.old_logp_BT = trajectory_logp(policy, traj, batch)
        mbs = [batch.select(slice(i, i + microbatch)) for i in range(0, batch.size, microbatch)]
    step_gradients(algo, policy, StepContext(0, mbs, totals, logprobs=lambda p, mb: trajectory_logp(p, traj, mb)))
    return torch.cat([p.grad.flatten() for p in policy.parameters()])


ON_TRAJECTORIES = {
    "reinforce": algorithm_config("reinforce"),
    "grpo": algorithm_config("grpo"),  # on-policy, clipping inactive
    "isopo-p0": algorithm_config("isopo", q=0.0),
    "isopo-interacting-huge": algorithm_config("isopo-interacting", damping=1e9),
    "npg-huge": algorithm_config("npg_rank1", fisher="one", damping=1e9),
}


@pytest.mark.parametrize("name", list(ON_TRAJECTORIES))
def test_score_function_algorithms_reduce_to_reinforce_on_trajectories(name):
    task, policy, start = setup()
    traj = rollout(task, policy, *start, differentiable=False)
    adv_B = torch.linspace(-1.0, 1.2, 8, dtype=F64)
    expected = explicit_reinforce(policy, traj, adv_B)
    actual = adapter_grads(policy, traj, adv_B, ON_TRAJECTORIES[name])
    assert float((actual - expected).norm() / expected.norm()) < 1e-7


def test_npg_on_trajectories_changes_only_the_linear_weights():
    task, policy, start = setup()
    traj = rollout(task, policy, *start, differentiable=False)
    adv_B = torch.linspace(-1.0, 1.2, 8, dtype=F64)
    expected = explicit_reinforce(policy, traj, adv_B)
    actual = adapter_grads(policy, traj, adv_B, algorithm_config("npg_rank1", fisher="all", damping=0.1))
    n_log_std = policy.log_std.weight.numel()  # the last parameter: REINFORCE's gradient by the embedding rule
    assert torch.allclose(actual[-n_log_std:], expected[-n_log_std:], rtol=1e-10, atol=0)
    assert float((actual - expected).norm() / expected.norm()) > 1e-2


@pytest.mark.parametrize("task", ["arithmetic", "gsm8k"])
@pytest.mark.parametrize("algo", ["rpo", "bptt"])
def test_pathwise_on_text_tasks_fails_at_config_time(algo, task):
    # The text trainer's registry does not hold the control track's methods; the error says where they run.
    with pytest.raises(ConfigError, match="control-train") as err:
        RunConfig(task=TaskConfig(name=task), algorithm=AlgorithmConfig(name=algo)).validate()
    assert err.value.field == "algorithm.name"
    check_gradient_signal("reinforce", "point-mass")  # score-function methods run on control tasks
    check_gradient_signal(algo, "pendulum")
    # The capability check itself reads the plug-ins' declarations only (no track import).
    with pytest.raises(ConfigError, match="needs pathwise gradients") as err:
        check_pairing(CONTROL_ALGORITHMS.get(algo), algo, TASKS.get(task), task, track="text")
    assert err.value.field == "algorithm.name"


def test_an_algorithm_that_declares_text_only_is_refused_on_the_control_track():
    class TextOnly(Algorithm):
        tracks = ("text",)

    with pytest.raises(ConfigError, match="does not run on the control track"):
        check_pairing(TextOnly, "text-only", CONTROL_TASKS.get("point-mass"), "point-mass", track="control")


def test_trainer_logs_a_run_the_leaderboard_reads(tmp_path):
    from isopo_bench import metric_names as M
    from isopo_bench.control.trainer import train_control
    from isopo_bench.leaderboard import load_runs

    uri = fresh_mlflow_uri(tmp_path)
    cfg = ControlRunConfig(
        control=ControlConfig(num_envs=16, horizon=20, eval_envs=16), algorithm=AlgorithmConfig(name="rpo"),
        optim=OptimConfig(steps=2, lr=3e-3, weight_decay=0.0, grad_clip=0.0, epochs=2, microbatch_size=8),
        tracking=TrackingConfig(uri=uri, experiment="ctl", suite="control-test@v1"), seed=1,
    )
    summary = train_control(cfg)
    again = train_control(dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, suite="other")))
    assert summary[M.FINAL_ACCURACY] == again[M.FINAL_ACCURACY]  # deterministic by seed
    runs = load_runs(uri, "ctl", "control-test@v1")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row[M.LB_STATUS] == "FINISHED" and row[M.LB_TASK] == "point-mass" and row[M.LB_ALGORITHM] == "rpo"
    assert row[M.LB_FINAL_ACC] == pytest.approx(summary[M.CONTROL_FINAL_RETURN])
    assert row[M.LB_INITIAL_ACC] == pytest.approx(summary[M.CONTROL_INITIAL_RETURN]) and row[M.LB_STEPS] == 2
    assert summary[M.CONTROL_FINAL_RETURN] > summary[M.CONTROL_INITIAL_RETURN]
