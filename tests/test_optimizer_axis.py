"""The optimizer axis: SGD with heavy-ball momentum next to AdamW, its identity in the config hash, its
state across a checkpoint, and suites that give each optimizer its own learning-rate grid."""

from __future__ import annotations

import pytest
import torch

from isopo_bench.checkpoint import load_checkpoint, save_checkpoint
from isopo_bench.config import OptimConfig, RunConfig, replace
from isopo_bench.errors import ConfigError
from isopo_bench.optim import build_optimizer
from isopo_bench.plugin_settings import build_algorithm
from isopo_bench.presets import algorithm_preset
from isopo_bench.suites import OptimizerArm, get_suite


def test_sgd_momentum_steps_match_the_hand_computed_recursion():
    model = torch.nn.Linear(3, 1, bias=False)
    w0 = model.weight.detach().clone()
    optimizer, _ = build_optimizer(model, OptimConfig(optimizer="sgd", lr=0.1, momentum=0.5, weight_decay=0.0))
    assert isinstance(optimizer, torch.optim.SGD)
    grads = [torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[0.0, 1.0, 1.0]])]
    buf, w = torch.zeros(1, 3), w0.clone()
    for g in grads:
        model.weight.grad = g.clone()
        optimizer.step()
        buf = g if not buf.any() else 0.5 * buf + g  # torch: the first step's buffer is the gradient itself
        w = w - 0.1 * buf
        assert torch.allclose(model.weight.detach(), w, atol=1e-7)


def test_adamw_remains_the_default():
    optimizer, _ = build_optimizer(torch.nn.Linear(2, 2), OptimConfig())
    assert isinstance(optimizer, torch.optim.AdamW)


def test_the_optimizer_is_part_of_the_identity_and_only_its_own_knobs_are():
    adamw = RunConfig()
    sgd = replace(adamw, **{"optim.optimizer": "sgd"})
    assert adamw.config_hash() != sgd.config_hash()
    # momentum means nothing to AdamW and betas nothing to SGD: neither changes the other's identity
    assert replace(adamw, **{"optim.momentum": 0.5}).config_hash() == adamw.config_hash()
    assert replace(sgd, **{"optim.betas": (0.5, 0.5)}).config_hash() == sgd.config_hash()
    assert replace(sgd, **{"optim.momentum": 0.5}).config_hash() != sgd.config_hash()


@pytest.mark.parametrize("momentum", [-0.1, 1.0, float("nan")])
def test_bad_momentum_is_refused_early(momentum):
    with pytest.raises(ConfigError, match="optim.momentum"):
        replace(RunConfig(), **{"optim.optimizer": "sgd", "optim.momentum": momentum}).validate()


def test_sgd_momentum_buffers_survive_a_checkpoint(tmp_path):
    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
        optimizer, scheduler = build_optimizer(model, OptimConfig(optimizer="sgd", lr=0.05, momentum=0.9))
        return model, optimizer, scheduler

    def step(model, optimizer, scheduler, k):
        x = torch.linspace(-1, 1, 8).reshape(2, 4) * (k + 1)
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        optimizer.step()
        scheduler.step()

    algorithm = build_algorithm(algorithm_preset("reinforce"))
    model, optimizer, scheduler = build()
    for k in range(2):
        step(model, optimizer, scheduler, k)
    save_checkpoint(tmp_path, model, optimizer, scheduler, algorithm, {"step": 2})
    step(model, optimizer, scheduler, 2)
    resumed, r_optimizer, r_scheduler = build()
    load_checkpoint(tmp_path, resumed, r_optimizer, r_scheduler, algorithm)
    assert all("momentum_buffer" in s for s in r_optimizer.state.values())
    step(resumed, r_optimizer, r_scheduler, 2)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)  # without the momentum buffers the third step would differ


def test_a_suite_runs_each_optimizer_over_its_own_grid():
    import dataclasses

    quick = get_suite("quick")
    suite = dataclasses.replace(quick, arms=(OptimizerArm("adamw", (1e-5, 3e-5)), OptimizerArm("sgd", (1e-3, 3e-3, 1e-2))))
    configs = suite.configs()
    assert len(configs) == len(suite.seeds) * len(suite.algorithms) * 5
    grid = {(c.optim.optimizer, c.optim.lr) for c in configs}
    assert grid == {("adamw", 1e-5), ("adamw", 3e-5), ("sgd", 1e-3), ("sgd", 3e-3), ("sgd", 1e-2)}
    assert len({c.tracking.run_name for c in configs}) == len(configs) == len({c.config_hash() for c in configs})
    assert all(f"-{c.optim.optimizer}-" in c.tracking.run_name for c in configs)


def test_an_arm_extends_the_grid_of_one_algorithm_only():
    import dataclasses

    quick = get_suite("quick")
    sgd = OptimizerArm("sgd", (1e-3, 3e-3), extra_lrs=(("reinforce", (3e-4,)), ("grpo", (1e-2, 3e-2))))
    suite = dataclasses.replace(quick, arms=(sgd,))
    configs = suite.configs()
    grids = {}
    for c in configs:
        grids.setdefault(c.tracking.algorithm_label, set()).add(c.optim.lr)
    assert grids["reinforce"] == {3e-4, 1e-3, 3e-3}
    assert grids["grpo"] == {1e-3, 3e-3, 1e-2, 3e-2}
    assert all(grids[a] == {1e-3, 3e-3} for a in suite.algorithms if a not in ("reinforce", "grpo"))
    assert len(configs) == len(suite.seeds) * (2 * len(suite.algorithms) + 3)
    assert sgd.describe() == "2 sgd learning rates (+1 reinforce, +2 grpo)"
    # an extension for an algorithm the suite does not run is a mistake in the definition: refused at once
    with pytest.raises(ValueError, match=r"extends the lr grid of \['dapo'\]"):
        dataclasses.replace(quick, arms=(OptimizerArm("sgd", (1e-3,), extra_lrs=(("dapo", (1e-2,)),)),))


def test_the_cpu_suite_brackets_reinforce_and_drgrpo_under_sgd():
    sgd = next(arm for arm in get_suite("cpu").optimizer_arms if arm.optimizer == "sgd")
    assert min(sgd.lrs_for("reinforce")) < min(sgd.lrs) and max(sgd.lrs_for("drgrpo")) > max(sgd.lrs)
    assert sgd.lrs_for("isopo") == sgd.lrs
