"""Sampler-vs-trainer mismatch metrics: hand-computed values on a 2x3 toy batch."""

from __future__ import annotations

import math

import pytest
import torch

from isopo_bench import metric_names as M
from isopo_bench.rollout.mismatch import mismatch_metrics

SAMPLER_BT = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, -3.0]])
TRAINER_BT = torch.tensor([[0.0, -1.5, -1.0], [7.0, -0.5, -3.25]])
MASK_BT = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])  # position 0 (prompt) differs by 7: ignored


def test_hand_computed_values():
    m = mismatch_metrics(SAMPLER_BT, TRAINER_BT, MASK_BT)
    diffs = [-0.5, 1.0, 0.0, -0.25]
    assert m[M.MISMATCH_MEAN_ABS] == pytest.approx(sum(abs(d) for d in diffs) / 4)
    assert m[M.MISMATCH_MAX_ABS] == pytest.approx(1.0)
    assert m[M.MISMATCH_RATIO_MEAN] == pytest.approx(sum(math.exp(d) for d in diffs) / 4)
    assert m[M.MISMATCH_RATIO_MAX] == pytest.approx(math.e)
    if hasattr(M, "MISMATCH_RATIO_MIN"):
        assert m[M.MISMATCH_RATIO_MIN] == pytest.approx(math.exp(-0.5))


def test_identical_logprobs_give_zero_mismatch_and_unit_ratio():
    m = mismatch_metrics(TRAINER_BT, TRAINER_BT.clone(), MASK_BT)
    assert m[M.MISMATCH_MEAN_ABS] == 0.0 and m[M.MISMATCH_MAX_ABS] == 0.0
    assert m[M.MISMATCH_RATIO_MEAN] == 1.0 and m[M.MISMATCH_RATIO_MAX] == 1.0


def test_flattened_input_equals_batched_input():
    flat = mismatch_metrics(SAMPLER_BT.flatten(), TRAINER_BT.flatten(), MASK_BT.flatten())
    assert flat == mismatch_metrics(SAMPLER_BT, TRAINER_BT, MASK_BT)


def test_infinite_sampler_logprob_gives_finite_ratio():
    sampler = SAMPLER_BT.clone()
    sampler[0, 1] = -math.inf
    m = mismatch_metrics(sampler, TRAINER_BT, MASK_BT)
    assert math.isfinite(m[M.MISMATCH_RATIO_MAX]) and m[M.MISMATCH_RATIO_MAX] > 1e20
    assert m[M.MISMATCH_MAX_ABS] == math.inf


def test_empty_mask_gives_no_metrics():
    assert mismatch_metrics(SAMPLER_BT, TRAINER_BT, torch.zeros_like(MASK_BT)) == {}
