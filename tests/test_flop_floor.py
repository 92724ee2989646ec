"""The FLOP floor model (isopo_bench.flop_floor): hand-computed counts at a small shape, the layout of the
Linears against the built model, torch's own flop counter on real update steps, and the issue's figures."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from isopo_bench import flop_floor as F
from isopo_bench import overhead as O
from isopo_bench.layerwise.options import EngineOptions, Needs
from isopo_bench.plugin_settings import build_algorithm
from isopo_bench.step_driver import accumulate

# hidden 4, MLP 8, 2 query heads x head_dim 2 with 1 KV head, 1 layer, vocabulary 5
HAND = O.Shape("hand", hidden=4, intermediate=8, heads=2, kv_heads=1, head_dim=2, layers=1, vocab=5, seq_len=3,
               microbatch=2, num_probes=3)
MB = F.MicrobatchShape(B=2, T=3, real_tokens=5)


def test_reinforce_count_by_hand():
    # Linears d_in x d_out: q 4x4, k 4x2, v 4x2, o 4x4, gate 4x8, up 4x8, down 8x4, lm_head 4x5: sum 164.
    linears = F.shape_linears(HAND)
    assert sum(s.d_in * s.d_out for s in linears) == 164
    N = 2 * 3
    attention = 12 * 2 * 2 * 3**2 * 2  # 12 B h T^2 d_head
    assert F.reinforce_flops(linears, 2, 2, 1, MB) == 6 * N * 164 + attention == 6768


def test_noninteracting_extra_by_hand():
    # S = min(3, 5) = 3 probes, N = 6. Input sides 2 S N d_in, once per input tensor: q/k/v (4), o (4),
    # gate/up (4), down (8), lm_head (4) -> 2*3*6*24 = 864. Output sides 2 S N d_out over d_out = 4+2+2+4+8+8+4+5
    # = 37 -> 1332. Segment sums 2 S N per Linear -> 36 * 8 = 288.
    c = F.layerwise_extra(F.shape_linears(HAND), Needs(fisher_norms=True), EngineOptions(num_probes=3), MB)
    assert (c.matmul, c.other, c.probes) == (864 + 1332, 288, 3)
    unshared = F.layerwise_extra(F.shape_linears(HAND), Needs(fisher_norms=True),
                                 EngineOptions(num_probes=3), dataclasses.replace(MB, real_tokens=2))
    assert unshared.probes == 2  # S = min(num_probes, real tokens)


def test_interacting_extra_by_hand():
    # Every layer materialises (B d_out d_in fits; (BT)^2 (d_in + d_out) > B^2 D + B D): Gram 2 B^2 D and the
    # combination 2 B D, over sum D = 164 -> (8 + 4) * 164.
    c = F.layerwise_extra(F.shape_linears(HAND), Needs(ntk=True), EngineOptions(), MB)
    assert c.plans == {"materialise": 8}
    assert (c.matmul, c.other) == (12 * 164, 0)
    ghost = F.layerwise_extra(F.shape_linears(HAND), Needs(ntk=True), EngineOptions(fast_plan="ghost"), MB)
    # Ghost NTK: 2 N^2 (d_in + d_out) per Linear (gram_ntk recomputes the input side for each), N^2 = 36;
    # sum d_in = 4*6 + 8 + 4 = 36, sum d_out = 37; the masks-and-sums 2 N^2 per Linear.
    assert (ghost.matmul, ghost.other) == (2 * 36 * (36 + 37), 2 * 36 * 8)
    # npg one: a row of K from the materialised G_i (matrix-vector, 2 B D) plus the combination 2 B D.
    row = F.layerwise_extra(F.shape_linears(HAND), Needs(ntk_row=True), EngineOptions(), MB)
    assert (row.matmul, row.other) == (4 * 164, 4 * 164)


def test_linear_layout_matches_the_model():
    model = O.build_model(O.TINY, torch.device("cpu"), torch.float32)
    found = [(n, m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert found == [(s.name, s.d_in, s.d_out) for s in F.shape_linears(O.TINY)]


@pytest.mark.parametrize("names", [["reinforce", "isopo", "isopo-interacting"]])
def test_counts_equal_torch_flop_counter(names):
    """On real update steps (eager attention, so its products are counted too) torch's FlopCounterMode,
    which counts matrix-matrix products, equals base + extra matmul flops exactly."""
    shape = dataclasses.replace(O.TINY, layers=2, seq_len=24, microbatch=4, num_probes=40)
    model, _, mbs, totals, algos = O.setup(shape, O.variants(names, True), torch.device("cpu"), torch.float32)
    model.config._attn_implementation = "eager"
    for label, algo in algos.items():
        fc = FlopCounterMode(display=False)
        with fc:
            accumulate(algo, model, mbs, totals)
        floor = F.shape_floor(shape, algo, mbs)
        assert fc.get_total_flops() == floor.base_flops + floor.extra_matmul, label


def test_issue_figures():
    """The issue's rough model: ~1.82x tiny, ~1.09x Qwen3-0.6B widths, ~1.07x the paper's shape (non-interacting);
    ~1.03x, ~1.005x (interacting). At the paper's shape the LM head's G_i exceed the 1 GiB budget, so the
    planner chunks it and interacting ISOPO's floor is ~1.06x, not the issue's ~1.001x."""
    paper = dataclasses.replace(O.QWEN3_06B, name="paper", layers=28, vocab=151936, seq_len=2048)
    want = {("tiny", "isopo"): 1.82, ("qwen3-0.6b", "isopo"): 1.09, ("paper", "isopo"): 1.07,
            ("tiny", "isopo-interacting"): 1.027, ("qwen3-0.6b", "isopo-interacting"): 1.005,
            ("paper", "isopo-interacting"): 1.063}
    for shape in (O.TINY, O.QWEN3_06B, paper):
        mbs = O.build_microbatches(shape, torch.device("cpu"))
        for name in ("isopo", "isopo-interacting", "gspo"):
            cfg = dict(O.variants([name], False))
            algo = build_algorithm(O.with_probes(next(iter(cfg.values())), shape.num_probes))
            ratio = F.shape_floor(shape, algo, mbs).ratio
            assert ratio == pytest.approx(want.get((shape.name, name), 1.0), abs=0.005), (shape.name, name)


def test_update_floor_from_the_model_equals_the_shape_floor():
    """The trainer's per-step floor (from the model's own Linears) equals the benchmark's (from the Shape)."""
    model = O.build_model(O.TINY, torch.device("cpu"), torch.float32)
    mbs = O.build_microbatches(O.TINY, torch.device("cpu"))
    def layout(specs):  # shapes, and which Linears share their input with the previous one
        return [(s.d_in, s.d_out, i > 0 and s.input_key == specs[i - 1].input_key) for i, s in enumerate(specs)]

    assert layout(F.model_linears(model)) == layout(F.shape_linears(O.TINY))
    for name in ("reinforce", "isopo", "isopo-interacting", "npg_rank1"):
        (_, cfg), = O.variants([name], False)
        algo = build_algorithm(cfg)
        assert F.update_floor(algo, model, [mbs]) == pytest.approx(F.shape_floor(O.TINY, algo, mbs).ratio, rel=1e-12)
    (_, cfg), = O.variants(["npg_rank1_model"], False)
    assert F.update_floor(build_algorithm(cfg), model, [mbs]) > 1.0
