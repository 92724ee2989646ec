"""Advantage estimators: hand values, vectorised equals a plain loop, and the group-size-1 convention."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from isopo_bench.advantages import GRPO_STD_EPS
from isopo_bench.plugins import ADVANTAGES


def loop_grpo(group: list[float]) -> list[float]:
    if len(group) == 1:
        return list(group)  # documented convention: no baseline, mean 0 and std 1
    mean = sum(group) / len(group)
    std = math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1))
    return [(r - mean) / (std + GRPO_STD_EPS) for r in group]


def loop_mean(group: list[float]) -> list[float]:
    if len(group) == 1:
        return list(group)
    mean = sum(group) / len(group)
    return [r - mean for r in group]


def loop_rloo(group: list[float]) -> list[float]:
    if len(group) == 1:
        return list(group)
    out = []
    for i, r in enumerate(group):
        others = [x for j, x in enumerate(group) if j != i]
        out.append(r - sum(others) / len(others))
    return out


LOOPS = {"grpo": loop_grpo, "mean": loop_mean, "rloo": loop_rloo}


def test_registered_names():
    assert {"grpo", "mean", "rloo"} <= set(ADVANTAGES.names())


def test_hand_values_binary_group():
    rewards_PG = torch.tensor([[1.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    std = math.sqrt((4 * 0.25) / 3)  # unbiased std of {1, 0, 0, 1}
    z = 0.5 / (std + 1e-6)
    assert ADVANTAGES.get("grpo")(rewards_PG)[0].tolist() == pytest.approx([z, -z, -z, z], abs=1e-12)
    assert ADVANTAGES.get("mean")(rewards_PG)[0].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5], abs=1e-12)
    assert ADVANTAGES.get("rloo")(rewards_PG)[0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3], abs=1e-12)


@pytest.mark.parametrize("name", ["grpo", "mean", "rloo"])
def test_constant_group_has_zero_advantage(name):
    rewards_PG = torch.tensor([[0.7, 0.7, 0.7]], dtype=torch.float64)
    assert ADVANTAGES.get(name)(rewards_PG).abs().max().item() < 1e-9


@pytest.mark.parametrize("name", ["grpo", "mean", "rloo"])
def test_group_size_one_returns_reward(name):
    rewards_PG = torch.tensor([[0.7], [0.0], [1.0]], dtype=torch.float64)
    assert ADVANTAGES.get(name)(rewards_PG).tolist() == [[0.7], [0.0], [1.0]]


@pytest.mark.parametrize("name", ["grpo", "mean", "rloo"])
@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 6)),
    data=st.data(),
)
def test_vectorised_equals_loop(name, shape, data):
    P, G = shape
    reward = st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0, 1)
    values = data.draw(st.lists(reward, min_size=P * G, max_size=P * G))
    rewards = [values[p * G : (p + 1) * G] for p in range(P)]
    got = ADVANTAGES.get(name)(torch.tensor(rewards, dtype=torch.float64)).tolist()
    expected = [LOOPS[name](group) for group in rewards]
    for got_row, expected_row in zip(got, expected):
        assert got_row == pytest.approx(expected_row, abs=1e-9)


def test_rloo_is_scaled_mean_baseline():
    rewards_PG = torch.tensor([[0.0, 1.0, 1.0, 0.5, 0.2]], dtype=torch.float64)
    rloo = ADVANTAGES.get("rloo")(rewards_PG)
    mean = ADVANTAGES.get("mean")(rewards_PG)
    assert torch.allclose(rloo, mean * 5 / 4, atol=1e-12, rtol=0)  # G / (G - 1)
