"""REINFORCE++ and REINFORCE++-baseline (verl's outcome-reward forms): hand-computed values, the
group-of-one and one-sequence edge cases, and the vectorised code against a per-sequence loop written
after verl's compute_reinforce_plus_plus(_baseline)_outcome_advantage with equal response lengths."""

import math

import pytest
import torch

from isopo_bench.plugins import ADVANTAGES

F64 = torch.float64


def close(x, rows, atol=1e-12):
    return torch.allclose(x.to(F64), torch.tensor(rows, dtype=F64), atol=atol, rtol=0)


def test_reinforce_pp_hand_values():
    # R = [1, 0, 0, 1, 1, 0] over the batch: mean 1/2, unbiased var = 6 * 1/4 / 5 = 0.3
    rewards = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=F64)
    got = ADVANTAGES.get("reinforce++")(rewards)
    s = math.sqrt(0.3 + 1e-8)
    assert close(got, [[0.5 / s, -0.5 / s, -0.5 / s], [0.5 / s, 0.5 / s, -0.5 / s]])


def test_reinforce_pp_baseline_hand_values():
    # group means 1/3 and 2/3: R - mean = [[2/3, -1/3, -1/3], [1/3, 1/3, -2/3]]; batch mean 0;
    # unbiased var = (4/9 + 1/9 + 1/9 + 1/9 + 1/9 + 4/9) / 5 = (12/9) / 5 = 4/15
    rewards = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=F64)
    got = ADVANTAGES.get("reinforce++-baseline")(rewards)
    s = math.sqrt(4 / 15 + 1e-8)
    expected = [[2 / 3 / s, -1 / 3 / s, -1 / 3 / s], [1 / 3 / s, 1 / 3 / s, -2 / 3 / s]]
    assert close(got, expected)


def test_baseline_differs_from_plain_by_the_group_mean():
    rewards = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=F64)  # each group uniform
    assert torch.all(ADVANTAGES.get("reinforce++-baseline")(rewards) == 0)  # nothing to learn within groups
    plain = ADVANTAGES.get("reinforce++")(rewards)  # but the batch has a spread: mean 1/2, var 1/3
    s = math.sqrt(1 / 3 + 1e-8)
    assert close(plain, [[0.5 / s, 0.5 / s], [-0.5 / s, -0.5 / s]])


def test_group_of_one_has_zero_baseline_as_verl():
    rewards = torch.tensor([[2.0], [0.0], [1.0]], dtype=F64)  # G = 1: no group mean subtracted
    a = ADVANTAGES.get("reinforce++-baseline")(rewards)
    assert torch.allclose(a, ADVANTAGES.get("reinforce++")(rewards), atol=0, rtol=0)
    assert a.flatten().tolist() == pytest.approx([1.0 / math.sqrt(1 + 1e-8), -1.0 / math.sqrt(1 + 1e-8), 0.0], abs=1e-12)


@pytest.mark.parametrize("name", ["reinforce++", "reinforce++-baseline"])
def test_single_sequence_batch_gives_zero(name):
    assert ADVANTAGES.get(name)(torch.tensor([[3.0]], dtype=F64)).tolist() == [[0.0]]


def verl_loop(rewards_PG: torch.Tensor, baseline: bool, length: int = 5) -> torch.Tensor:
    """verl's algorithm, per sequence with a dict of group scores, then masked whitening over tokens of
    equal-length responses (gamma = 1: every token's return is the outcome reward)."""
    P, G = rewards_PG.shape
    scores = rewards_PG.reshape(-1).tolist()
    index = [b // G for b in range(P * G)]
    if baseline:
        groups: dict[int, list[float]] = {}
        for i, s in zip(index, scores):
            groups.setdefault(i, []).append(s)
        means = {i: (sum(v) / len(v) if len(v) > 1 else 0.0) for i, v in groups.items()}
        scores = [s - means[i] for i, s in zip(index, scores)]
    tokens = [s for s in scores for _ in range(length)]
    mean = sum(tokens) / len(tokens)
    var = sum((t - mean) ** 2 for t in tokens) / len(tokens) * len(tokens) / (len(tokens) - 1)
    return torch.tensor([(s - mean) / math.sqrt(var + 1e-8) for s in scores], dtype=F64).view(P, G)


@pytest.mark.parametrize("baseline", [False, True])
@pytest.mark.parametrize("shape", [(4, 8), (3, 1), (1, 5), (16, 4)])
def test_vectorised_matches_loop(baseline, shape):
    g = torch.Generator().manual_seed(sum(shape) + baseline)
    rewards = torch.randint(0, 2, shape, generator=g).to(F64) + 0.1 * torch.randn(shape, generator=g, dtype=F64)
    name = "reinforce++-baseline" if baseline else "reinforce++"
    got = ADVANTAGES.get(name)(rewards)
    # one token per sequence: verl's whitening is exactly this estimator
    expected = verl_loop(rewards, baseline, length=1)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)
    # L = 5 equal-length responses: verl's token-level whitening has the same mean and differs only by its
    # Bessel factor, var_tok = var_seq * (N - 1) L / (N L - 1)
    token_level = verl_loop(rewards, baseline, length=5)
    n = rewards.numel()
    scale = math.sqrt((5 * n - 1) * n / (5 * n * (n - 1)))  # sqrt(var_seq / var_tok)
    assert torch.allclose(got * scale, token_level, atol=1e-6, rtol=1e-6)
