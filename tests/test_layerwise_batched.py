"""Small-layer batching (isopo_bench/layerwise/batched.py) gives the per-layer path's gradients, EMA state and
metrics, over several steps and microbatches of different sizes, and applies exactly where it may.

The per-layer path is itself tested against the brute force (tests/test_isopo.py, both paths there too);
here the two paths are compared with each other at float64 rounding, including what neither brute-force
test covers: the EMA across steps, a smaller last microbatch, a frozen Linear, and the cases that must
fall back to the per-layer path (data parallelism, the memory bound, the faithful mode, methods that need
more than the NTK).
"""

from __future__ import annotations

import pytest
import torch

from isopo_bench.algorithm_api import StepContext
from isopo_bench.layerwise import batched as layerwise_batched
from isopo_bench.step_driver import step_gradients
from test_isopo import build, grads_of, make_batch, run_cfg, tiny_model, totals_of

STEPS = 3


def microbatches():
    """Three microbatches, the last one smaller (2 sequences), so buffers are reallocated mid-step."""
    small = make_batch("left", order=(2, 0, 1, 3))
    return [make_batch(), make_batch("left", order=(3, 1, 0, 2)), small.select(slice(0, 2))]


def run(cfg, per_layer: bool, monkeypatch, *, reducer=None, freeze: str | None = None):
    """Per step: the gradients and the finalize metrics; the algorithm's final state."""
    monkeypatch.setattr(layerwise_batched, "MAX_BATCHED_MB", 0 if per_layer else 64)
    model = tiny_model()
    if freeze:
        model.get_submodule(freeze).weight.requires_grad_(False)
    algo = build(cfg)
    algo.attach(model)
    mbs = microbatches()
    out = []
    for step in range(STEPS):
        ctx = StepContext(step, mbs, totals_of(mbs))
        if reducer is not None:
            ctx = StepContext(step, mbs, totals_of(mbs), reducer=reducer)
        metrics = step_gradients(algo, model, ctx).metrics
        out.append((grads_of(model), metrics))
        with torch.no_grad():  # move the weights, so that later steps differ from the first
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(1e-2 * p.grad / (p.grad.norm() + 1e-12))
    return out, algo.state_dict()


def assert_same(batched, per_layer):
    (steps_b, state_b), (steps_p, state_p) = batched, per_layer
    for (grads_b, metrics_b), (grads_p, metrics_p) in zip(steps_b, steps_p):
        assert set(grads_b) == set(grads_p)
        for name, expected in grads_p.items():
            if expected is None:
                assert grads_b[name] is None, name
                continue
            assert torch.allclose(grads_b[name], expected, rtol=1e-12, atol=1e-15), name
        shared = set(metrics_p) - {"algo/isopo_batched_layers", "algo/npg_batched_layers"}
        assert shared <= set(metrics_b)
        for key in shared:
            assert metrics_b[key] == pytest.approx(metrics_p[key], rel=1e-12, abs=1e-15), key
    assert state_b["stats"]["ema"].keys() == state_p["stats"]["ema"].keys()
    for key, value in state_p["stats"]["ema"].items():
        assert state_b["stats"]["ema"][key] == pytest.approx(value, rel=1e-12), key


@pytest.mark.parametrize("damping", [1.0, 0.05])
def test_batched_equals_per_layer_over_steps(damping, monkeypatch):
    cfg = run_cfg("isopo-interacting", damping=damping)
    batched = run(cfg, False, monkeypatch)
    per_layer = run(cfg, True, monkeypatch)
    assert_same(batched, per_layer)
    # Every Linear but the LM head went through the batch: 2 blocks x 7 Linears, in each of 3 microbatches.
    assert batched[0][0][1]["algo/isopo_batched_layers"] == 14.0
    assert "algo/isopo_batched_layers" not in per_layer[0][0][1]


def test_npg_rank1_all_batched(monkeypatch):
    from isopo_bench.algorithms.npg_rank1 import NpgSettings
    from isopo_bench.config import AlgorithmConfig

    cfg = AlgorithmConfig(name="npg_rank1", loss_agg="token-mean", settings=NpgSettings(fisher="all", damping=0.3))
    batched = run(cfg, False, monkeypatch)
    assert batched[0][0][1]["algo/npg_batched_layers"] == 14.0
    assert_same(batched, run(cfg, True, monkeypatch))


def test_frozen_linear_is_left_alone(monkeypatch):
    cfg = run_cfg("isopo-interacting")
    frozen = "model.layers.0.self_attn.k_proj"
    batched = run(cfg, False, monkeypatch, freeze=frozen)
    assert batched[0][0][0][f"{frozen}.weight"] is None
    assert batched[0][0][1]["algo/isopo_batched_layers"] == 13.0
    assert_same(batched, run(cfg, True, monkeypatch, freeze=frozen))


def test_partly_filled_group_matches(monkeypatch):
    """A group whose slots are not all filled (one Linear of the shape frozen after attach: its slot
    stays empty) combines only the filled rows."""
    cfg = run_cfg("isopo-interacting")
    model = tiny_model()
    algo = build(cfg)
    algo.attach(model)
    model.get_submodule("model.layers.1.mlp.up_proj").weight.requires_grad_(False)
    mbs = [make_batch()]
    step_gradients(algo, model, StepContext(0, mbs, totals_of(mbs)))
    batched = grads_of(model)
    monkeypatch.setattr(layerwise_batched, "MAX_BATCHED_MB", 0)
    algo = build(cfg)
    algo.attach(model)
    step_gradients(algo, model, StepContext(0, mbs, totals_of(mbs)))
    per_layer = grads_of(model)
    assert batched["model.layers.1.mlp.up_proj.weight"] is None
    for name, expected in per_layer.items():
        if expected is not None:
            assert torch.allclose(batched[name], expected, rtol=1e-12, atol=1e-15), name


@pytest.mark.parametrize("case", ["data-parallel", "over-bound", "faithful", "non-interacting", "ghost-plan"])
def test_falls_back_to_the_per_layer_path(case, monkeypatch):
    cfg = {
        "faithful": run_cfg("isopo-interacting", mode="faithful"),
        "non-interacting": run_cfg("isopo"),
        "ghost-plan": run_cfg("isopo-interacting", fast_plan="ghost"),
    }.get(case, run_cfg("isopo-interacting"))
    model = tiny_model()
    algo = build(cfg)
    algo.attach(model)
    if case == "over-bound":
        monkeypatch.setattr(layerwise_batched, "MAX_BATCHED_MB", 0)
    reducer = (lambda t: t.clone()) if case == "data-parallel" else None  # any real reducer means ranks
    mbs = [make_batch()]
    ctx = StepContext(0, mbs, totals_of(mbs)) if reducer is None else StepContext(0, mbs, totals_of(mbs), reducer=reducer)
    metrics = step_gradients(algo, model, ctx).metrics
    assert not any(k.endswith("_batched_layers") for k in metrics)
    assert all(p.grad is not None for p in model.parameters())


def test_solve_batched_equals_one_by_one():
    """damped_ntk_solve over a (L, B, B) stack equals it matrix by matrix, also when L == B (the solve's
    right-hand side must be read as one vector per matrix)."""
    from isopo_bench.layerwise.kernels import damped_ntk_solve

    gen = torch.Generator().manual_seed(0)
    for L, B in [(3, 4), (4, 4)]:
        X = torch.randn(L, B, 7, generator=gen, dtype=torch.float64)
        K = X @ X.transpose(1, 2)
        A = torch.randn(B, generator=gen, dtype=torch.float64)
        A_t, lam = damped_ntk_solve(K, A, lambda m: 0.5 * m)
        for k in range(L):
            one, lam_k = damped_ntk_solve(K[k], A, lambda m: 0.5 * m)
            assert torch.allclose(A_t[k], one, rtol=1e-13, atol=0) and torch.allclose(lam[k], lam_k)
            expected = lam_k * torch.linalg.solve(K[k] + (lam_k + 1e-8) * torch.eye(B, dtype=torch.float64), A)
            assert torch.allclose(one, expected, rtol=1e-10)
