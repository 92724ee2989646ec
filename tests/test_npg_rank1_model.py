"""npg_rank1_model (one Fisher over all parameters) equals an explicit whole-model solve
lambda (lambda' I + u u^T)^-1 g in parameter space, with u the brute-force whole-model gradient of the drawn
sequence and g the brute-force REINFORCE gradient (float64 tiny Qwen3, ~3.4k parameters, so the D x D system
is solved directly); it does not depend on the microbatch split, and huge damping gives REINFORCE."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from isopo_bench.aggregation import aggregate
from isopo_bench.algorithms.npg_rank1_model import NpgModelSettings
from isopo_bench.batch import BatchTotals, TrainBatch, sequence_logprobs
from isopo_bench.config import AlgorithmConfig
from isopo_bench.errors import ConfigError
from isopo_bench.layerwise.draws import sample_index
from isopo_bench.layerwise.kernels import EPS_DAMP
from isopo_bench.plugin_settings import algorithm_setup, build_algorithm
from isopo_bench.plugins import ALGORITHMS
from isopo_bench.step_driver import accumulate

from test_npg_rank1 import AGG, F64, float64_rms_norm, make_batch, tiny_model  # noqa: F401 - fixture reused


def cfg_of(name: str, damping: float = 0.5, seed: int = 0) -> tuple[AlgorithmConfig, int]:
    settings = NpgModelSettings("one", damping) if name == "npg_rank1_model" else None
    return AlgorithmConfig(name=name, loss_agg=AGG, settings=settings), seed


def totals_for(batch: TrainBatch, num_microbatches: int) -> BatchTotals:
    return BatchTotals(float(batch.response_mask_BT.sum()), batch.size, num_microbatches, 16)


def split(batch: TrainBatch, size: int) -> list[TrainBatch]:
    return [batch.select(slice(s, s + size)).trimmed()[0] for s in range(0, batch.size, size)]


def flat_grads(model, cfg: tuple[AlgorithmConfig, int], batch: TrainBatch, microbatch_size: int,
               steps: int = 1) -> torch.Tensor:
    mbs = split(batch, microbatch_size)
    if cfg[0].name == "reinforce":  # the REINFORCE gradient from its definition, d/dtheta aggregate(-A logp)
        model.zero_grad(set_to_none=True)
        for mb in mbs:
            per_token = -mb.advantages_B[:, None] * sequence_logprobs(model, mb)
            aggregate(per_token, mb.response_mask_BT, AGG, totals_for(batch, len(mbs))).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])
    algo = build_algorithm(cfg[0], seed=cfg[1])
    algo.attach(model)
    for step in range(steps):
        accumulate(algo, model, mbs, totals_for(batch, len(mbs)), step=step)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def per_sequence_grads(model, batch: TrainBatch, totals: BatchTotals) -> torch.Tensor:
    """(B, D): each sequence's whole-model gradient of its share of the advantage-free loss."""
    params = list(model.parameters())
    logp = sequence_logprobs(model, batch)
    rows = []
    for i in range(batch.size):
        only_i = torch.zeros(batch.size, 1, dtype=F64)
        only_i[i] = 1
        loss_i = aggregate(-logp, batch.response_mask_BT * only_i, AGG, totals)
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss_i, params, retain_graph=True)]))
    return torch.stack(rows)


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
@pytest.mark.parametrize("microbatch_size", [1, 2, 4])
def test_equals_explicit_whole_model_solve(seed, microbatch_size):
    model, batch = tiny_model(), make_batch()
    actual = flat_grads(model, cfg_of("npg_rank1_model", 0.5, seed), batch, microbatch_size)
    G_BD = per_sequence_grads(model, batch, totals_for(batch, batch.size // microbatch_size))
    g = batch.advantages_B @ G_BD
    u = G_BD[sample_index(seed, 0, -1, batch.size)]
    lam = 0.5 * u @ u
    D = g.numel()
    expected = lam * torch.linalg.solve((lam + EPS_DAMP) * torch.eye(D, dtype=F64) + torch.outer(u, u), g)
    assert float((actual - expected).norm() / expected.norm()) < 1e-10
    assert float((actual - g).norm() / g.norm()) > 1e-3  # the transform did something


def test_seeds_draw_sequences_in_different_microbatches():
    draws = {sample_index(seed, 0, -1, 4) for seed in (0, 1, 2, 5)}
    assert len(draws) >= 2 and (draws & {0, 1}) and (draws & {2, 3})


def test_huge_damping_equals_reinforce_and_tied_embeddings_work():
    for tied in (False, True):
        batch = make_batch()
        model = tiny_model(tied)
        actual = flat_grads(model, cfg_of("npg_rank1_model", 1e9), batch, 2)
        expected = flat_grads(tiny_model(tied), cfg_of("reinforce"), batch, 2)
        # The correction is u (u.g) / (lambda + |u|^2): of order 1 / damping relative to g.
        assert float((actual - expected).norm() / expected.norm()) < 1e-8


def test_second_step_damps_with_the_ema():
    model, batch = tiny_model(), make_batch()
    cfg = cfg_of("npg_rank1_model", 0.5)
    algo = build_algorithm(cfg[0], seed=cfg[1])
    mbs = split(batch, 2)
    first = accumulate(algo, model, mbs, totals_for(batch, 2), step=0)
    second = accumulate(algo, model, mbs, totals_for(batch, 2), step=1)
    decay = cfg[0].settings.ema_decay
    # Step 1 used its own |u|^2; step 2 the EMA after step 1, which is step 1's |u|^2.
    assert first["algo/npg_damping_mean"] == pytest.approx(0.5 * first["algo/npg_fisher_sq_norm"])
    assert second["algo/npg_damping_mean"] == pytest.approx(0.5 * first["algo/npg_fisher_sq_norm"])
    state = algo.state_dict()
    expected_ema = decay * first["algo/npg_fisher_sq_norm"] + (1 - decay) * second["algo/npg_fisher_sq_norm"]
    assert state["stats"]["ema"]["score_sq_norm"] == pytest.approx(expected_ema)


def test_config_errors_name_the_fix():
    cls = ALGORITHMS.get("npg_rank1_model")
    acfg = cfg_of("npg_rank1_model")[0]
    with pytest.raises(ConfigError, match="fisher one"):
        cls.validate(algorithm_setup(dataclasses.replace(acfg, settings=NpgModelSettings("all"))))
    with pytest.raises(ConfigError, match="parallel.mode ddp"):
        cls.validate(algorithm_setup(acfg, world_size=2, sharded_parameters=True))
