"""The one aggregation function: hand-computed values on a 2x3 toy batch and microbatch-split invariance."""

import pytest
import torch

from isopo_bench.aggregation import MODES, aggregate
from isopo_bench.batch import BatchTotals

LOSS_BT = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 600.0]], dtype=torch.float64)
MASK_BT = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
TOTALS = BatchTotals(num_tokens=5.0, num_seqs=2, num_microbatches=1, max_len=4)

HAND = {
    "token-mean": (1 + 2 + 3 + 4 + 5) / 5,  # 3.0
    "seq-mean-token-mean": ((1 + 2 + 3) / 3 + (4 + 5) / 2) / 2,  # 3.25
    "seq-mean-token-sum": ((1 + 2 + 3) + (4 + 5)) / 2,  # 7.5
    "seq-mean-token-sum-norm": (1 + 2 + 3 + 4 + 5) / (2 * 4),  # 1.875: B = 2 sequences x L_max = 4 (Dr.GRPO, TRL, verl)
    "token-sum": 1 + 2 + 3 + 4 + 5,  # 15: no normalisation
}


@pytest.mark.parametrize("mode", MODES)
def test_toy_values(mode):
    assert float(aggregate(LOSS_BT, MASK_BT, mode, TOTALS)) == pytest.approx(HAND[mode], abs=1e-12)


@pytest.mark.parametrize(
    "mode, row0_share",
    [
        ("token-mean", (1 + 2 + 3) / 5),  # divides by the whole batch's 5 tokens, not row 0's 3
        ("seq-mean-token-mean", (1 + 2 + 3) / 3 / 2),  # divides by the whole batch's 2 sequences
        ("seq-mean-token-sum", (1 + 2 + 3) / 2),
        ("seq-mean-token-sum-norm", (1 + 2 + 3) / (2 * 4)),  # the whole batch's B = 2, not the microbatch's 1
        ("token-sum", 1 + 2 + 3),
    ],
)
def test_microbatch_share_uses_whole_batch_totals(mode, row0_share):
    share0 = aggregate(LOSS_BT[:1], MASK_BT[:1], mode, TOTALS)
    share1 = aggregate(LOSS_BT[1:], MASK_BT[1:], mode, TOTALS)
    assert float(share0) == pytest.approx(row0_share, abs=1e-12)
    assert float(share0 + share1) == pytest.approx(HAND[mode], abs=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("num_microbatches", [2, 4, 8])
def test_split_sum_equals_whole(mode, num_microbatches):
    g = torch.Generator().manual_seed(0)
    loss_BT = torch.randn(8, 6, generator=g, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([1, 6, 3, 2, 5, 4, 6, 2])
    mask_BT = (torch.arange(6)[None, :] < lengths[:, None]).double()
    totals = BatchTotals(float(mask_BT.sum()), 8, num_microbatches, max_len=6)
    whole = aggregate(loss_BT, mask_BT, mode, totals)
    (grad_whole,) = torch.autograd.grad(whole, loss_BT)
    size = 8 // num_microbatches
    parts = [aggregate(loss_BT[i : i + size], mask_BT[i : i + size], mode, totals) for i in range(0, 8, size)]
    (grad_parts,) = torch.autograd.grad(sum(parts), loss_BT)
    assert float(sum(parts).detach()) == pytest.approx(float(whole.detach()), abs=1e-12)
    assert torch.allclose(grad_parts, grad_whole, atol=1e-14, rtol=0)


def test_token_mean_gradient_weights_are_one_over_batch_tokens():
    loss_BT = LOSS_BT.clone().requires_grad_(True)
    (grad_BT,) = torch.autograd.grad(aggregate(loss_BT, MASK_BT, "token-mean", TOTALS), loss_BT)
    assert grad_BT.tolist() == [[0.2, 0.2, 0.2], [0.2, 0.2, 0.0]]


def test_empty_response_row_contributes_zero():
    mask_BT = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    totals = BatchTotals(num_tokens=3.0, num_seqs=2, num_microbatches=1, max_len=4)
    value = aggregate(LOSS_BT, mask_BT, "seq-mean-token-mean", totals)
    assert float(value) == pytest.approx((1 + 2 + 3) / 3 / 2, abs=1e-12)


def test_unknown_mode_lists_known_modes():
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-mean") as err:
        aggregate(LOSS_BT, MASK_BT, "token-max", TOTALS)
    assert "token-max" in str(err.value) and "token-sum" in str(err.value)


def test_drgrpo_norm_is_token_sum_over_batch_sequences_times_lmax():
    """Dr.GRPO's constant: sum(M l) / (B L_max) with B the OPTIMIZER batch's sequences; a 32-sequence batch
    is 32x smaller than the former sum / L_max (the gradient-clipping difference the issue measured)."""
    loss_BT = torch.ones(32, 4, dtype=torch.float64)
    mask_BT = torch.ones(32, 4, dtype=torch.float64)
    totals = BatchTotals(num_tokens=128.0, num_seqs=32, num_microbatches=4, max_len=4)
    assert float(aggregate(loss_BT, mask_BT, "seq-mean-token-sum-norm", totals)) == pytest.approx(1.0, abs=1e-15)
    shares = [aggregate(loss_BT[i : i + 8], mask_BT[i : i + 8], "seq-mean-token-sum-norm", totals) for i in range(0, 32, 8)]
    assert [float(x) for x in shares] == [0.25] * 4


@pytest.mark.parametrize("mode", MODES)
def test_batch_argument_applies_correction_weights(mode):
    """Passing the microbatch: its `correction_BT` multiplies the per-token loss; denominators unchanged."""
    from isopo_bench.batch import TrainBatch

    weights_BT = torch.tensor([[1.0, 0.5, 0.0], [2.0, 1.0, 7.0]], dtype=torch.float64)
    mb = TrainBatch(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long), MASK_BT,
                    torch.zeros(2, dtype=torch.float64), correction_BT=weights_BT)
    by_hand = {
        "token-mean": (1 + 1 + 0 + 8 + 5) / 5,
        "seq-mean-token-mean": ((1 + 1 + 0) / 3 + (8 + 5) / 2) / 2,
        "seq-mean-token-sum": ((1 + 1 + 0) + (8 + 5)) / 2,
        "seq-mean-token-sum-norm": (1 + 1 + 0 + 8 + 5) / (2 * 4),
        "token-sum": 1 + 1 + 0 + 8 + 5,
    }
    assert float(aggregate(LOSS_BT, mb, mode, TOTALS)) == pytest.approx(by_hand[mode], abs=1e-12)
    mb.correction_BT = None  # no weights: the same as passing the mask
    assert float(aggregate(LOSS_BT, mb, mode, TOTALS)) == float(aggregate(LOSS_BT, MASK_BT, mode, TOTALS))
