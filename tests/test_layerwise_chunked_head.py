"""The layer-wise engine on the chunked LM head (isopo_bench.chunked_logprobs.HeadRule): ISOPO, npg_rank1 and
seq-norm give the same gradients and metrics as on the full-logits path, in float64 (to rounding) and
float32 (1e-6), with left and right padding, tied and untied heads and several vocabulary chunks; the
brute-force reference of tests/test_isopo.py holds with several chunks; no B x T x V tensor is formed."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from isopo_bench import chunked_logprobs as C
from isopo_bench.algorithms.npg_rank1 import NpgSettings
from isopo_bench.algorithms.npg_rank1_model import NpgModelSettings
from isopo_bench.config import AlgorithmConfig
from isopo_bench.step_driver import accumulate
from test_isopo import (
    assert_grads_close, brute_grads, build, grads_of, make_batch, run_cfg, tiny_model, totals_of,
)

torch.set_num_threads(1)
CHUNK_COLS = 7
"""40-token vocabulary: 6 chunks, the last one short."""

VARIANTS = {
    "isopo": run_cfg("isopo"),
    "isopo-pqr": run_cfg("isopo", p=0.5, r=-0.7, num_probes=9),
    "isopo-faithful": run_cfg("isopo", mode="faithful", p=1.0),
    "isopo-ghost": run_cfg("isopo", fast_plan="ghost", p=1.0),
    "isopo-materialise": run_cfg("isopo", fast_plan="materialise", p=1.0),
    "isopo-chunked-plan": run_cfg("isopo", fast_plan="materialise", materialise_budget_mb=0, p=1.0, r=0.5),
    "isopo-interacting": run_cfg("isopo-interacting"),
    "isopo-interacting-faithful": run_cfg("isopo-interacting", mode="faithful"),
    "isopo-interacting-over-budget": run_cfg("isopo-interacting", materialise_budget_mb=0),
    "npg-one-ghost": AlgorithmConfig(name="npg_rank1", settings=NpgSettings(fisher="one", fast_plan="ghost")),
    "npg-one-materialise": AlgorithmConfig(name="npg_rank1", settings=NpgSettings(fisher="one", fast_plan="materialise")),
    "npg-own": AlgorithmConfig(name="npg_rank1", settings=NpgSettings(fisher="own")),
    "npg-mean": AlgorithmConfig(name="npg_rank1", settings=NpgSettings(fisher="mean", fast_plan="ghost")),
    "npg-all": AlgorithmConfig(name="npg_rank1", settings=NpgSettings(fisher="all")),
    "seq-norm": AlgorithmConfig(name="seq-norm"),
}


@pytest.fixture
def several_chunks(monkeypatch):
    monkeypatch.setattr(C, "vocab_cols", lambda rows, budget_mb=0: CHUNK_COLS)


def model_and_batch(dtype, tied: bool, side: str):
    model = tiny_model(tied=tied).to(dtype)
    mb = make_batch(side)
    mb.response_mask_BT, mb.advantages_B = mb.response_mask_BT.to(dtype), mb.advantages_B.to(dtype)
    return model, mb


def step(cfg: AlgorithmConfig, model, mb, logprobs_mode: str):
    algo = build(cfg)
    algo.attach(model)
    calls = []
    with C.mode(logprobs_mode):
        real = C._rule_backward
        C._rule_backward = lambda *args: calls.append(1) or real(*args)
        try:
            metrics = accumulate(algo, model, [mb], totals_of([mb]), step=0)
        finally:
            C._rule_backward = real
    return grads_of(model), metrics, len(calls)


def assert_same_step(cfg, model, mb, rtol: float, metric_rtol: float | None = None):
    g_full, m_full, calls_full = step(cfg, model, mb, "full")
    g_chunk, m_chunk, calls_chunk = step(cfg, model, mb, "chunked")
    assert (calls_full, calls_chunk) == (0, 1)  # the chunked run went through the head rule
    assert g_full.keys() == g_chunk.keys()
    for name, exp in g_full.items():
        assert (exp is None) == (g_chunk[name] is None), name
        if exp is not None:
            err = float((g_chunk[name] - exp).norm() / exp.norm().clamp(min=1e-30))
            assert err < rtol, f"{name}: relative error {err:.2e}"
    assert m_full.keys() == m_chunk.keys()
    for key, value in m_full.items():
        assert m_chunk[key] == pytest.approx(value, rel=metric_rtol or rtol, abs=1e-12), key


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("variant", ["isopo", "isopo-interacting", "npg-one-ghost"])
def test_chunked_head_equals_full_path(variant, dtype, tied, side, several_chunks):
    model, mb = model_and_batch(dtype, tied, side)
    # float32: the head's products summed by vocabulary chunks round differently from one matmul; measured
    # 0.7e-6 to 1.3e-6 (norm-relative) on the deepest layers' gradients on one development machine and up to
    # 2.6e-6 on an AMD EPYC one (the CPU picks the matmul kernels, hence the rounding): ~10-20 float32 ulps.
    # float64 is the exactness check (1e-12).
    if dtype == torch.float64:
        assert_same_step(VARIANTS[variant], model, mb, 1e-12)
    else:
        assert_same_step(VARIANTS[variant], model, mb, 5e-6, metric_rtol=1e-6)


@pytest.mark.parametrize("variant", sorted(set(VARIANTS) - {"isopo", "isopo-interacting", "npg-one-ghost"}))
def test_every_form_on_the_chunked_head_equals_full_path(variant, several_chunks):
    model, mb = model_and_batch(torch.float64, True, "right")
    assert_same_step(VARIANTS[variant], model, mb, 1e-12)


@pytest.mark.parametrize("variant,interacting", [("isopo-pqr", False), ("isopo-faithful", False),
                                                 ("isopo-interacting", True)])
def test_chunked_head_equals_bruteforce(variant, interacting, several_chunks):
    """The independent reference: per-sequence autograd gradients, materialised probes (test_isopo.py)."""
    model, mb = tiny_model(), make_batch("left")
    cfg = VARIANTS[variant]
    g, _, calls = step(cfg, model, mb, "chunked")
    assert calls == 1
    assert_grads_close(g, brute_grads(model, cfg, [mb], interacting=interacting))


@pytest.mark.parametrize("variant,passes", [("isopo-interacting", 1), ("isopo-interacting-faithful", 1),
                                            ("isopo-interacting-over-budget", 2), ("isopo", 2),
                                            ("npg-one-materialise", 1), ("npg-one-ghost", 2)])
def test_a_rule_that_kept_its_per_sequence_gradients_skips_the_second_pass(variant, passes, several_chunks, monkeypatch):
    """Where the head's G_i fit the budget and the statistics formed them, the weight gradient is their
    B-term sum and the vocabulary is swept once (logits recomputed once, not twice); otherwise twice, when
    pass 1 may not keep its output-gradient chunks (budget 0). The gradients are the full path's either way
    (the tests above)."""
    monkeypatch.setattr(C, "KEEP_CHUNKS_BUDGET_MB", 0)
    sweeps = []
    real = C.vocab_chunk_grads
    monkeypatch.setattr(C, "vocab_chunk_grads", lambda *a, **k: sweeps.append(1) or real(*a, **k))
    model, mb = model_and_batch(torch.float64, True, "right")
    _, _, calls = step(VARIANTS[variant], model, mb, "chunked")
    assert calls == 1 and len(sweeps) == passes


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("variant,sweeps_without_keep", [
    ("isopo", 2), ("isopo-ghost", 2), ("isopo-interacting-over-budget", 2), ("npg-one-ghost", 2),
    ("isopo-pqr", 1), ("seq-norm", 1), ("isopo-interacting", 1)])  # the last three keep their own G_i
def test_pass_two_reuses_the_kept_chunks_bit_for_bit(variant, sweeps_without_keep, dtype, several_chunks, monkeypatch):
    """Within KEEP_CHUNKS_BUDGET_MB, pass 1's output-gradient chunks serve pass 2: the vocabulary is swept
    once, and every gradient and metric is the same bits as with the chunks recomputed. A rule that keeps
    its own G_i (interacting ISOPO within budget) needs neither: the engine says so in advance
    (`will_keep_weight_grad`, which gates the keep), exactly for the rules whose second pass never runs."""
    from isopo_bench.layerwise.engine import HeadForward

    sweeps, keeps_own = [], []
    real, real_keeps = C.vocab_chunk_grads, HeadForward.will_keep_weight_grad
    monkeypatch.setattr(C, "vocab_chunk_grads", lambda *a, **k: sweeps.append(1) or real(*a, **k))
    monkeypatch.setattr(HeadForward, "will_keep_weight_grad",
                        lambda self, *a: keeps_own.append(real_keeps(self, *a)) or keeps_own[-1])
    model, mb = model_and_batch(dtype, False, "left")
    default = C.KEEP_CHUNKS_BUDGET_MB
    results = {}
    for budget in (0, default):
        monkeypatch.setattr(C, "KEEP_CHUNKS_BUDGET_MB", budget)
        sweeps.clear()
        results[budget] = step(VARIANTS[variant], model, mb, "chunked") + (len(sweeps),)
    (g_redo, m_redo, _, sweeps_redo), (g_kept, m_kept, _, sweeps_kept) = results[0], results[default]
    assert sweeps_kept == 1 and sweeps_redo == sweeps_without_keep
    # pass 1 keeps chunks only for rules that will not form the head's gradient themselves
    assert keeps_own and set(keeps_own) == {sweeps_without_keep == 1}
    for name, exp in g_redo.items():
        assert (exp is None) == (g_kept[name] is None), name
        if exp is not None:
            assert torch.equal(exp, g_kept[name]), name
    assert m_kept == m_redo


def test_npg_rank1_model_takes_the_chunked_head():
    """npg_rank1_model does not override the head (REINFORCE main pass, one rerun): plain chunked head."""
    model, mb = tiny_model(), make_batch("right")
    cfg = AlgorithmConfig(name="npg_rank1_model", settings=NpgModelSettings())
    g_full, m_full, _ = step(cfg, model, mb, "full")
    g_chunk, m_chunk, _ = step(cfg, model, mb, "chunked")
    for name, exp in g_full.items():
        torch.testing.assert_close(g_chunk[name], exp, rtol=1e-11, atol=1e-13, msg=name)
    assert m_chunk == pytest.approx(m_full, rel=1e-10)


class LargestTensor(TorchDispatchMode):
    """Records the largest numel of any operator output."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_logits_sized_tensor_in_forward_or_backward(monkeypatch):
    """Vocabulary 2000, hidden 16: every tensor stays below N x V (the logits of the response tokens
    alone), which the full path exceeds; the largest ones are the weight-sized gradients."""
    vocab, hidden = 2000, 16
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=24, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                         tie_word_embeddings=True, pad_token_id=0)).double().train()
    g = torch.Generator().manual_seed(3)
    from isopo_bench.batch import TrainBatch, pad_and_stack

    prompts = [torch.randint(1, vocab, (n,), generator=g).tolist() for n in (3, 6, 2, 4)]
    completions = [torch.randint(1, vocab, (n,), generator=g).tolist() for n in (20, 11, 16, 18)]
    ids, attn, resp, _ = pad_and_stack(prompts, completions, 0, "right")
    mb = TrainBatch(ids, attn, resp.double(), torch.tensor([1.0, -0.5, 0.3, -0.8], dtype=torch.float64))
    monkeypatch.setattr(C, "chunk_rows", lambda v, budget_mb=0: 8)
    monkeypatch.setattr(C, "vocab_cols", lambda rows, budget_mb=0: 100)
    n_resp = int(mb.response_mask_BT.sum())
    assert n_resp * vocab > 2 * vocab * hidden  # a logits-sized tensor is larger than any weight-sized one
    sizes = {}
    for mode in ("full", "chunked"):
        algo = build(run_cfg("isopo", p=1.0, fast_plan="materialise"))
        algo.attach(model)
        probe = LargestTensor()
        with C.mode(mode), probe:
            accumulate(algo, model, [mb], totals_of([mb]))
        sizes[mode] = probe.largest
    assert sizes["full"] >= n_resp * vocab
    assert sizes["chunked"] <= vocab * hidden < n_resp * vocab


def test_head_rule_is_inactive_without_grad():
    """pi_old-style forwards (no_grad) inside the context take the plain chunked head: same values."""
    model, mb = tiny_model(), make_batch()
    algo = build(run_cfg("isopo"))
    algo.attach(model)
    from isopo_bench.algorithm_api import StepContext
    from isopo_bench.batch import sequence_logprobs

    ctx = StepContext(0, [mb], totals_of([mb]))
    with algo.backward_context(model, mb, ctx, 0):
        assert isinstance(model.lm_head.__dict__["forward"], C.HeadRule) and C.applies(model)
        assert model.lm_head.forward.active()  # training mode, grad enabled
        with torch.no_grad():
            assert not model.lm_head.forward.active()
            inside = sequence_logprobs(model, mb)
    assert torch.equal(inside, sequence_logprobs(model, mb).detach())
