"""Loss-based algorithms (grpo, cispo, gspo; reinforce as the reference): hand-computed values on a 2x3
toy batch for every aggregation mode, dual clip, KL, validation, reductions to REINFORCE, stop-gradient,
and microbatch / padding invariance on a random tiny Qwen3 model in float64."""

import math

import pytest
import torch

from isopo_bench.aggregation import MODES
from isopo_bench.batch import BatchTotals, TrainBatch
from isopo_bench.config import RunConfig
from isopo_bench.errors import ConfigError
from isopo_bench.kl import kl_k3
from isopo_bench.plugin_settings import algorithm_config, build_algorithm, run_algorithm_setup
from isopo_bench.plugins import ALGORITHMS

F64 = torch.float64


def make_algo(name, **fields):
    return build_algorithm(algorithm_config(name, **fields))


# ---------------------------------------------------------------- 2x3 toy batch, hand-computed values

TOY_MASK = [[1, 1, 1], [1, 1, 0]]
TOY_TOTALS = BatchTotals(num_tokens=5.0, num_seqs=2, num_microbatches=1, max_len=4)
TOY_LOGP = [[-1.0, -2.0, -0.5], [-1.5, -0.2, -3.0]]
TOY_RATIO = [[1.1, 0.7, 1.5], [0.5, 4.0, 1.0]]
# Every mode is a weighted sum of token losses; these are its weights on the toy mask (5 tokens, 2
# sequences of 3 and 2 tokens, L_max = 4).
TOY_WEIGHTS = {
    "token-mean": [[1 / 5] * 3, [1 / 5, 1 / 5, 0]],
    "seq-mean-token-mean": [[1 / 6] * 3, [1 / 4, 1 / 4, 0]],
    "seq-mean-token-sum": [[1 / 2] * 3, [1 / 2, 1 / 2, 0]],
    "seq-mean-token-sum-norm": [[1 / 8] * 3, [1 / 8, 1 / 8, 0]],  # 1 / (B L_max) = 1 / (2 * 4)
    "token-sum": [[1.0] * 3, [1.0, 1.0, 0]],
}


def toy_batch(advantages=(1.0, -2.0), log_ratio=None, ref_offset=None):
    logp_BT = torch.tensor(TOY_LOGP, dtype=F64, requires_grad=True)
    log_ratio = log_ratio or [[math.log(r) for r in row] for row in TOY_RATIO]
    log_ratio_BT = torch.tensor(log_ratio, dtype=F64)
    ref_BT = None if ref_offset is None else logp_BT.detach() + torch.tensor(ref_offset, dtype=F64)
    mb = TrainBatch(
        input_ids_BT=torch.zeros(2, 3, dtype=torch.long),
        attention_mask_BT=torch.ones(2, 3, dtype=torch.long),
        response_mask_BT=torch.tensor(TOY_MASK, dtype=F64),
        advantages_B=torch.tensor(advantages, dtype=F64),
        old_logp_BT=logp_BT.detach() - log_ratio_BT,
        ref_logp_BT=ref_BT,
    )
    return logp_BT, mb


def weighted(rows, mode):
    return sum(w * v for w_row, v_row in zip(TOY_WEIGHTS[mode], rows) for w, v in zip(w_row, v_row))


def weighted_grad(dloss_rows, mode):
    return [[w * d for w, d in zip(w_row, d_row)] for w_row, d_row in zip(TOY_WEIGHTS[mode], dloss_rows)]


def run_toy(algo, logp_BT, mb):
    loss, metrics = algo.loss(logp_BT, mb, TOY_TOTALS)
    (grad_BT,) = torch.autograd.grad(loss, logp_BT)
    return float(loss.detach()), grad_BT, metrics


def assert_grad(grad_BT, expected_rows):
    assert torch.allclose(grad_BT, torch.tensor(expected_rows, dtype=F64), atol=1e-12, rtol=0)


# r = [[1.1, 0.7, 1.5], [0.5, 4.0, (1.0)]], A = [1, -2], eps 0.2 / 0.2, c = 3:
# row 0: max(-1.1, -1.1); max(-0.7, -0.8) = -0.7; max(-1.5, -1.2) = -1.2 (upper clip)
# row 1: max(1.0, 1.6) = 1.6 (lower clip); max(8.0, 2.4) = 8.0, min(8.0, 6.0) = 6.0 (dual clip)
GRPO_LOSS = [[-1.1, -0.7, -1.2], [1.6, 6.0, 0.0]]
GRPO_DLOSS = [[-1.1, -0.7, 0.0], [0.0, 0.0, 0.0]]  # -A r where unclipped, 0 where clipped
# w = clip(r, 0.8, 1.2) = [[1.1, 0.8, 1.2], [0.8, 1.2, (1.0)]]; l = -w A logp; dl/dlogp = -w A
CISPO_LOSS = [[1.1, 1.6, 0.6], [-2.4, -0.48, 0.0]]
CISPO_DLOSS = [[-1.1, -0.8, -1.2], [1.6, 2.4, 0.0]]


@pytest.mark.parametrize("mode", MODES)
def test_grpo_toy(mode):
    loss, grad_BT, metrics = run_toy(make_algo("grpo", loss_agg=mode), *toy_batch())
    assert loss == pytest.approx(weighted(GRPO_LOSS, mode), abs=1e-12)
    assert_grad(grad_BT, weighted_grad(GRPO_DLOSS, mode))
    assert metrics["algo/clip_frac_low"] == pytest.approx(1 / 5)
    assert metrics["algo/clip_frac_high"] == pytest.approx(1 / 5)
    assert metrics["algo/dual_clip_frac"] == pytest.approx(1 / 5)
    assert metrics["algo/ratio_mean"] == pytest.approx((1.1 + 0.7 + 1.5 + 0.5 + 4.0) / 5)
    assert metrics["algo/ratio_max"] == pytest.approx(4.0)
    log_ratio_sum = math.log(1.1) + math.log(0.7) + math.log(1.5) + math.log(0.5) + math.log(4.0)
    assert metrics["algo/ppo_kl"] == pytest.approx(-log_ratio_sum / 5)


@pytest.mark.parametrize("mode", MODES)
def test_cispo_toy_and_no_gradient_through_weight(mode):
    # The hand values clip the weight on both sides (eps_low 0.2; the default 10 leaves it unbounded below).
    loss, grad_BT, metrics = run_toy(make_algo("cispo", loss_agg=mode, clip_eps_low=0.2), *toy_batch())
    assert loss == pytest.approx(weighted(CISPO_LOSS, mode), abs=1e-12)
    # Had the weight been differentiated, dl/dlogp would gain -A * logp * dw/dlogp on unclipped tokens.
    assert_grad(grad_BT, weighted_grad(CISPO_DLOSS, mode))
    assert metrics["algo/clip_frac_low"] == pytest.approx(2 / 5)  # r = 0.7, 0.5
    assert metrics["algo/clip_frac_high"] == pytest.approx(2 / 5)  # r = 1.5, 4.0


S_HIGH, S_MID, S_LOW_A, S_LOW_B = math.exp(0.1), math.exp(3e-4), math.exp(-0.1), math.exp(-1.5e-3)
GSPO_CASES = {
    # s_0 = e^0.1 > 1 + 4e-4 with A > 0: clipped, no gradient; s_1 = e^3e-4 inside [1 - 3e-4, 1 + 4e-4].
    # The masked 5.0 must not enter s_1.
    "upper-clip": ([[0.1, -0.1, 0.3], [2e-4, 4e-4, 5.0]],
                   [[-1.0004] * 3, [2 * S_MID] * 2 + [0.0]], [[0.0] * 3, [2 * S_MID] * 2 + [0.0]], (0.0, 3 / 5)),
    # s_0 = e^-0.1 < 1 - 3e-4 with A > 0 is not clipped; s_1 = e^-1.5e-3 with A < 0 is: 2 * (1 - 3e-4).
    "lower-clip": ([[-0.1, -0.2, 0.0], [-1e-3, -2e-3, 5.0]],
                   [[-S_LOW_A] * 3, [2 * 0.9997] * 2 + [0.0]], [[-S_LOW_A] * 3, [0.0] * 3], (2 / 5, 0.0)),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", GSPO_CASES)
def test_gspo_toy(case, mode):
    log_ratio, token_loss, dloss, (frac_low, frac_high) = GSPO_CASES[case]
    loss, grad_BT, metrics = run_toy(make_algo("gspo", loss_agg=mode), *toy_batch(log_ratio=log_ratio))
    assert loss == pytest.approx(weighted(token_loss, mode), abs=1e-12)
    assert_grad(grad_BT, weighted_grad(dloss, mode))
    assert metrics["algo/clip_frac_low"] == pytest.approx(frac_low)
    assert metrics["algo/clip_frac_high"] == pytest.approx(frac_high)
    seq_ratios = (S_HIGH, S_MID) if case == "upper-clip" else (S_LOW_A, S_LOW_B)
    assert metrics["algo/ratio_mean"] == pytest.approx(sum(seq_ratios) / 2, abs=1e-12)


@pytest.mark.parametrize("dual_clip, row1_loss, row1_dloss, dual_frac", [(3.0, 3.0, 0.0, 2 / 5), (5.0, 4.0, 4.0, 0.0)])
def test_grpo_dual_clip_acts_only_on_negative_advantages(dual_clip, row1_loss, row1_dloss, dual_frac):
    algo = make_algo("grpo", dual_clip=dual_clip)
    logp_BT, mb = toy_batch(advantages=(1.0, -1.0), log_ratio=[[math.log(4.0)] * 3] * 2)
    loss, grad_BT, metrics = run_toy(algo, logp_BT, mb)
    # A = +1, r = 4 > c: the ordinary upper clip -(1 + 0.2); A = -1: max(4, 1.2) = 4, then min(4, c).
    assert loss == pytest.approx(weighted([[-1.2] * 3, [row1_loss] * 3], "token-mean"), abs=1e-12)
    assert_grad(grad_BT, weighted_grad([[0.0] * 3, [row1_dloss] * 3], "token-mean"))
    assert metrics["algo/dual_clip_frac"] == pytest.approx(dual_frac)
    assert metrics["algo/clip_frac_high"] == pytest.approx(3 / 5)


# ---------------------------------------------------------------- KL penalty and validation

KL_OFFSET = [[-0.5, 1.0, 0.0], [0.2, -0.3, 7.0]]  # ref - logp


def test_kl_k3_hand_values_and_clamp():
    logp = torch.tensor([-1.0, -2.0, 0.0, 0.0], dtype=F64)
    ref = torch.tensor([-1.5, -1.0, 5.0, -20.0], dtype=F64)
    expected = [math.exp(-0.5) + 0.5 - 1, math.e - 1 - 1, 10.0, 10.0]  # e^5 - 6 and 19 clamp to 10
    assert kl_k3(logp, ref).tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_grpo_kl_penalty_value_and_gradient(mode):
    loss, grad_BT, metrics = run_toy(make_algo("grpo", loss_agg=mode, kl_coef=0.1), *toy_batch(ref_offset=KL_OFFSET))
    k3 = [[math.exp(d) - d - 1 for d in row] for row in KL_OFFSET]
    dk3 = [[1 - math.exp(d) for d in row] for row in KL_OFFSET]  # d k3 / d logp
    assert metrics["algo/kl"] == pytest.approx(weighted(k3, mode), abs=1e-12)
    assert loss == pytest.approx(weighted(GRPO_LOSS, mode) + 0.1 * weighted(k3, mode), abs=1e-12)
    dloss = [[g + 0.1 * k for g, k in zip(g_row, k_row)] for g_row, k_row in zip(GRPO_DLOSS, dk3)]
    assert_grad(grad_BT, weighted_grad(dloss, mode))


@pytest.mark.parametrize("name", ["grpo", "cispo", "gspo"])
def test_kl_coef_zero_skips_the_penalty(name):
    with_kl, _, kl_metrics = run_toy(make_algo(name, kl_coef=0.1), *toy_batch(ref_offset=KL_OFFSET))
    without, _, metrics = run_toy(make_algo(name, kl_coef=0.0), *toy_batch(ref_offset=None))
    k3 = [[math.exp(d) - d - 1 for d in row] for row in KL_OFFSET]
    assert with_kl - without == pytest.approx(0.1 * weighted(k3, "token-mean"), abs=1e-12)
    assert "algo/kl" not in metrics and "algo/kl" in kl_metrics


@pytest.mark.parametrize(
    "name, field, value",
    [
        ("grpo", "clip_eps_low", 0.0), ("grpo", "clip_eps_high", -0.1), ("grpo", "dual_clip", 1.0),
        ("grpo", "kl_coef", -0.1), ("cispo", "clip_eps_low", -1.0), ("cispo", "clip_eps_high", 0.0),
        ("gspo", "gspo_clip_eps_low", 0.0), ("gspo", "gspo_clip_eps_high", -4e-4), ("gspo", "kl_coef", -1.0),
    ],
)
def test_validate_names_field_and_fix(name, field, value):
    cfg = RunConfig(algorithm=algorithm_config(name, **{field: value}))
    with pytest.raises(ConfigError) as err:
        ALGORITHMS.get(name).validate(run_algorithm_setup(cfg))
    assert err.value.field == f"algorithm.{field}"
    assert "Fix: " in str(err.value)


@pytest.mark.parametrize("name", ["grpo", "cispo", "gspo"])
def test_defaults_validate_and_need_old_logp(name):
    cls = ALGORITHMS.get(name)
    assert cls.validate(run_algorithm_setup(RunConfig(algorithm=algorithm_config(name)))) is None
    assert cls.needs_old_logp is True
