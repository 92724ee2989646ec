"""Rollout correction (TIS / MIS at token and sequence level): hand-computed weights and metrics, the
config checks, and the weights reaching the loss through aggregation."""

import math

import pytest
import torch

from isopo_bench import metric_names as M
from isopo_bench.aggregation import aggregate
from isopo_bench.batch import BatchTotals, TrainBatch
from isopo_bench.errors import ConfigError
from isopo_bench.rollout_correction import CorrectionConfig, correction_weights

F64 = torch.float64


def close(x, rows, atol=1e-12):
    return torch.allclose(x.to(F64), torch.tensor(rows, dtype=F64), atol=atol, rtol=0)
MASK = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]], dtype=F64)
# token ratios old / sampler: row 0: [3.0, 0.25, 1.0]; row 1: [1.5, 0.8] (position 0 is the prompt)
RATIOS = [[1.0, 3.0, 0.25, 1.0], [1.0, 1.5, 0.8, 9.0]]  # 9.0 sits on padding: must be ignored
SAMPLER = torch.full((2, 4), -1.0, dtype=F64)
OLD = SAMPLER + torch.tensor([[math.log(r) for r in row] for row in RATIOS], dtype=F64)


def weights(mode, level, C=2.0):
    return correction_weights(CorrectionConfig(mode, level, C), OLD, SAMPLER, MASK)


def test_token_tis():
    c = weights("tis", "token")
    assert close(c.weights_BT, [[0, 2.0, 0.25, 1.0], [0, 1.5, 0.8, 0]])
    assert c.metrics[M.CORRECTION_CLIP_FRAC] == pytest.approx(1 / 5)  # only the 3.0 token is truncated
    assert c.metrics[M.CORRECTION_WEIGHT_MEAN] == pytest.approx((2 + 0.25 + 1 + 1.5 + 0.8) / 5)
    assert c.metrics[M.CORRECTION_RATIO_MEAN] == pytest.approx((3 + 0.25 + 1 + 1.5 + 0.8) / 5)
    assert c.metrics[M.CORRECTION_RATIO_MAX] == pytest.approx(3.0)


def test_token_mis():
    c = weights("mis", "token")  # band [0.5, 2]: 3.0 and 0.25 are masked out
    assert c.weights_BT.tolist() == [[0, 0, 0, 1], [0, 1, 1, 0]]
    assert c.metrics[M.CORRECTION_MASK_FRAC] == pytest.approx(2 / 5)
    assert M.CORRECTION_CLIP_FRAC not in c.metrics


def test_sequence_tis_and_mis():
    # sequence ratios: row 0: 3 * 0.25 * 1 = 0.75; row 1: 1.5 * 0.8 = 1.2
    tis = weights("tis", "sequence", C=1.1)
    assert close(tis.weights_BT, [[0, 0.75, 0.75, 0.75], [0, 1.1, 1.1, 0]])
    assert tis.metrics[M.CORRECTION_CLIP_FRAC] == pytest.approx(1 / 2)  # a fraction of sequences
    assert tis.metrics[M.CORRECTION_RATIO_MEAN] == pytest.approx((0.75 + 1.2) / 2)
    mis = weights("mis", "sequence", C=1.25)  # band [0.8, 1.25]: row 0 (0.75) is dropped
    assert mis.weights_BT.tolist() == [[0, 0, 0, 0], [0, 1, 1, 0]]
    assert mis.metrics[M.CORRECTION_MASK_FRAC] == pytest.approx(1 / 2)


def test_metric_rows_restrict_metrics_not_weights():
    c = correction_weights(CorrectionConfig("tis", "token", 2.0), OLD, SAMPLER, MASK, torch.tensor([False, True]))
    assert c.metrics[M.CORRECTION_CLIP_FRAC] == 0.0 and c.metrics[M.CORRECTION_RATIO_MAX] == pytest.approx(1.5)
    assert c.weights_BT[0, 1] == 2.0


def test_impossible_sampler_token_is_finite():
    sampler = SAMPLER.clone()
    sampler[0, 2] = -1e4
    c = correction_weights(CorrectionConfig("tis", "token", 2.0), OLD, sampler, MASK)
    assert torch.isfinite(c.weights_BT).all() and c.weights_BT[0, 2] == 2.0


def test_weights_reach_the_loss():
    """REINFORCE-style per-token loss through aggregate(…, mb, …): d loss / d logp = -A w / N."""
    c = weights("tis", "token")
    logp = torch.zeros(2, 4, dtype=F64, requires_grad=True)
    mb = TrainBatch(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long), MASK,
                    torch.tensor([1.0, -1.0], dtype=F64), correction_BT=c.weights_BT)
    loss = aggregate(-mb.advantages_B[:, None] * logp, mb, "token-mean", BatchTotals(5.0, 2, 1, 4))
    (grad,) = torch.autograd.grad(loss, logp)
    assert close(grad, [[0, -2 / 5, -0.25 / 5, -1 / 5], [0, 1.5 / 5, 0.8 / 5, 0]])


@pytest.mark.parametrize("cfg, field", [
    (CorrectionConfig("tis", "token", 1.0), "correction.threshold"),
    (CorrectionConfig("mis", "sequence", 0.5), "correction.threshold"),
    (CorrectionConfig("bogus"), "correction.mode"),
    (CorrectionConfig("tis", "batch"), "correction.level"),
])
def test_config_errors_name_the_field(cfg, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        cfg.validate()


def test_off_is_valid_and_leaves_the_config_hash():
    from isopo_bench.config import RunConfig, replace

    CorrectionConfig().validate()
    base = RunConfig()
    assert "correction" not in json_keys(base)
    assert replace(base, **{"correction.mode": "tis"}).config_hash() != base.config_hash()


def json_keys(cfg):
    import json

    from isopo_bench import config

    captured = {}
    real = config.hashlib.sha256

    def spy(data):
        captured["d"] = json.loads(data)
        return real(data)

    config.hashlib.sha256 = spy
    try:
        cfg.config_hash()
    finally:
        config.hashlib.sha256 = real
    return captured["d"].keys()
