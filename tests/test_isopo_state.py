"""ISOPO invariances, statelessness of the installed rules, EMA semantics, checkpoints and the logged policy.

What is invariant, honestly: padding side, gradient checkpointing and the order of sequences inside a
microbatch (with all tokens as probes) change nothing. Splitting a microbatch changes interacting ISOPO
(the NTK is the microbatch's) and the Fisher norm O_i (its probes are the microbatch's tokens); only
per-sequence quantities (N_i, p = q = r = 0) are split-invariant, which the split test pins down.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_isopo import (
    algo_grads, algo_step, assert_grads_close, brute_grads, build, grads_of, make_batch, run_cfg, tiny_model, totals_of,
)

from isopo_bench.algorithm_api import StepContext
from isopo_bench.batch import sequence_logprobs
from isopo_bench.errors import ConfigError
from isopo_bench.layerwise.ema import EmaStats, MetricSums
from isopo_bench.plugin_settings import algorithm_setup
from isopo_bench.plugins import ALGORITHMS

torch.set_num_threads(1)
VARIANTS = ["isopo", "isopo-interacting"]


def relative_diff(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).norm() / b[n].norm()) for n in b if b[n] is not None)


@pytest.mark.parametrize("name", VARIANTS)
def test_left_and_right_padding_agree(name):
    model = tiny_model()
    cfg = run_cfg(name, num_probes=6)  # fewer probes than tokens: the k-th real token is the same either way
    assert_grads_close(algo_grads(model, cfg, [make_batch("left")]), algo_grads(model, cfg, [make_batch("right")]))


@pytest.mark.parametrize("name", VARIANTS)
def test_gradient_checkpointing_changes_nothing(name):
    model, mb = tiny_model(), make_batch()
    cfg = run_cfg(name, num_probes=6, share_probes=False)
    plain = algo_grads(model, cfg, [mb])
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert_grads_close(algo_grads(model, cfg, [mb]), plain)


@pytest.mark.parametrize("name", VARIANTS)
def test_sequence_order_inside_microbatch_changes_nothing(name):
    model = tiny_model()
    cfg = run_cfg(name, num_probes=1000)
    reordered = algo_grads(model, cfg, [make_batch(order=(2, 0, 3, 1))])
    assert_grads_close(reordered, algo_grads(model, cfg, [make_batch()]))


@pytest.mark.parametrize("mode", ["fast", "faithful"])
def test_microbatch_split_invariance_and_its_limits(mode):
    model, mb = tiny_model(), make_batch()
    halves = [mb.select(slice(0, 2)), mb.select(slice(2, 4))]
    euclid = run_cfg("isopo", mode=mode, p=1.0, q=0.0, r=0.0)  # s_i = 1 / N_i: per sequence
    assert_grads_close(algo_grads(model, euclid, halves), algo_grads(model, euclid, [mb]))
    for cfg in (run_cfg("isopo", mode=mode, num_probes=1000), run_cfg("isopo-interacting", mode=mode)):
        assert relative_diff(algo_grads(model, cfg, halves), algo_grads(model, cfg, [mb])) > 1e-3


def module_state(model):
    return {
        name: (sorted(m.__dict__), len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
               len(m._backward_pre_hooks), len(m._state_dict_hooks))
        for name, m in model.named_modules()
    }


@pytest.mark.parametrize("name", VARIANTS)
def test_rules_leave_no_state_behind(name):
    model, mb = tiny_model(), make_batch()
    plain = copy.deepcopy(model)
    before = module_state(model)
    global_hooks = [len(h) for h in (torch.nn.modules.module._global_forward_hooks,
                                     torch.nn.modules.module._global_backward_hooks)]
    algo = build(run_cfg(name, mode="fast"))
    algo.attach(model)
    totals = totals_of([mb])
    ctx = StepContext(0, [mb], totals)
    with algo.backward_context(model, mb, ctx, 0):
        logp_inside = sequence_logprobs(model, mb)
        algo.loss(logp_inside, mb, totals)[0].backward()
        assert "forward" in model.lm_head.__dict__
    algo.finalize_grads(model, ctx)
    assert module_state(model) == before
    assert [len(h) for h in (torch.nn.modules.module._global_forward_hooks,
                             torch.nn.modules.module._global_backward_hooks)] == global_hooks
    # The forward value is untouched (on response positions: a plain model takes the chunked head, which
    # computes only those; tests/test_chunked_logprobs.py shows it equals the full head there exactly in float64).
    mask_BT = mb.response_mask_BT.bool()
    assert torch.equal(logp_inside[mask_BT], sequence_logprobs(plain, mb)[mask_BT])
    for m in (model, plain):
        m.zero_grad(set_to_none=True)
        sequence_logprobs(m, mb).sum().backward()
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        assert torch.equal(p.grad, q.grad), n


def test_rules_are_inactive_in_eval_mode():
    model, mb = tiny_model(), make_batch()
    plain = copy.deepcopy(model)
    algo = build(run_cfg("isopo"))
    algo.attach(model)
    model.eval()
    algo_step(model, algo, [mb])
    totals = totals_of([mb])
    algo.loss(sequence_logprobs(plain.eval(), mb), mb, totals)[0].backward()
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        assert torch.equal(p.grad, q.grad), n


def test_ema_stats_by_hand():
    ema = EmaStats(decay=0.9)
    assert float(ema.value("x", torch.tensor([2.0, 4.0]))) == 3.0  # before the first update: current value
    ema.collect("x", torch.tensor([1.0, 3.0]))
    ema.end_step()
    assert float(ema.ema["x"]) == pytest.approx(2.0)
    ema.collect("x", torch.tensor([6.0]))
    ema.end_step()
    assert float(ema.value("x", torch.tensor(100.0))) == pytest.approx(0.9 * 2 + 0.1 * 6)
    ema.end_step()  # nothing collected: unchanged
    assert float(ema.ema["x"]) == pytest.approx(2.4)
    cum = EmaStats(decay=0.9, cumulative=True)
    cum.collect("x", torch.tensor([1.0, 3.0]))
    cum.end_step()
    cum.collect("x", torch.tensor([6.0]))
    cum.end_step()
    assert float(cum.ema["x"]) == pytest.approx(0.9 * 2 + 0.1 * (10 / 3))


def test_ema_and_metric_sums_collected_lazily_are_read_at_the_step_end():
    """Values are kept until the step ends (one reduction per key): a checkpoint taken mid-step holds them,
    a view is copied (it would keep its whole base alive), and Python numbers need no tensor."""
    ema = EmaStats(decay=0.5)
    big = torch.arange(1000.0)
    ema.collect("x", big[:2])  # a view of 1000 elements: 0 and 1
    ema.collect("x", torch.tensor(5.0))
    assert ema._pending["x"][0]._base is None  # the view was copied, not kept
    state = ema.state_dict()  # mid-step: the pending values are in the checkpoint
    assert state["sum"]["x"] == 6.0 and state["count"]["x"] == 3
    restored = EmaStats(decay=0.5)
    restored.load_state_dict(state)
    restored.end_step()
    assert float(restored.ema["x"]) == 2.0
    ema.end_step()
    assert float(ema.ema["x"]) == 2.0 and not ema._pending

    metrics = MetricSums()
    metrics.add("m", torch.tensor([1.0, 2.0], dtype=torch.float32))
    metrics.add("m", 6.0)  # a Python number counts as one value
    metrics.add("flag", 1.0)
    metrics.add("flag", 0.0)
    assert metrics.pop() == {"m": 3.0, "flag": 0.5}
    assert metrics.pop() == {}


def test_token_weighted_scale_is_the_reweighted_reinforce_gradient():
    """The RMSNorm rule's Function against its definition (autograd through y + w_t (y_p - sg(y_p))), bit
    for bit in one dtype, and against a float64 sum_t w_t g_t h_t when h is bfloat16 and the weight float32
    (where the Function is the more accurate of the two)."""
    from isopo_bench.layerwise.param_rules import TokenWeightedScale, _per_token

    gen = torch.Generator().manual_seed(3)
    for h_dtype, w_dtype in [(torch.float32, torch.float32), (torch.float64, torch.float64), (torch.bfloat16, torch.float32)]:
        for shape in [(4, 7, 16), (4, 7, 3, 8)]:  # (B, T, d) and per-head (B, T, heads, d) as q_norm/k_norm
            h0 = torch.randn(*shape, generator=gen).to(h_dtype)
            w0 = torch.randn(shape[-1], generator=gen).to(w_dtype)
            w_BT = torch.randn(4, 7, generator=gen)
            out_dtype = torch.promote_types(h_dtype, w_dtype)
            g = torch.randn(*shape, generator=gen).to(out_dtype)
            h1, w1 = h0.clone().requires_grad_(), w0.clone().requires_grad_()
            y = w1.detach() * h1
            y_p = w1 * h1.detach()
            (y + _per_token(w_BT, y) * (y_p - y_p.detach())).backward(g)
            h2, w2 = h0.clone().requires_grad_(), w0.clone().requires_grad_()
            out = TokenWeightedScale.apply(h2, w2, _per_token(w_BT, h2).to(out_dtype))
            out.backward(g)
            assert torch.equal(out, y) and torch.equal(h2.grad, h1.grad) and w2.grad.dtype == w_dtype
            exact = (g.double() * _per_token(w_BT, h0).double() * h0.double()).sum_to_size(w0.shape)
            if h_dtype == w_dtype:
                assert torch.equal(w2.grad, w1.grad)
            else:
                err_new = float((w2.grad.double() - exact).abs().max() / exact.abs().max())
                err_old = float((w1.grad.double() - exact).abs().max() / exact.abs().max())
                assert err_new < 1e-6 and err_new <= err_old


def ema_from(stats: dict, interacting: bool) -> dict:
    """EMA after one step: the mean of the collected values (tr K / B per microbatch, x^2 per sequence)."""
    if interacting:
        return {layer: {"ntk": torch.stack([s["ntk"] for s in v]).mean()} for layer, v in stats.items()}
    return {layer: {k: torch.cat([s[k] ** 2 for s in v]).mean() for k in "NOR"} for layer, v in stats.items()}


@pytest.mark.parametrize("name,settings", [
    ("isopo-interacting", dict(damping=0.3)),
    ("isopo", dict(p=0.5, q=1.0, r=0.5, reg_n=0.5, reg_o=0.7, reg_r=0.2, num_probes=5)),
])
def test_second_step_uses_first_steps_ema_and_checkpoint_resume(name, settings):
    model, mb = tiny_model(), make_batch()
    mbs = [mb.select(slice(0, 2)), mb.select(slice(2, 4))]
    cfg, interacting = run_cfg(name, **settings), name != "isopo"
    algo = build(cfg)
    algo.attach(model)
    algo_step(model, algo, mbs, step=0)
    stats: dict = {}
    assert_grads_close(grads_of(model), brute_grads(model, cfg, mbs, interacting, stats=stats))
    resumed = build(cfg)
    resumed.load_state_dict(copy.deepcopy(algo.state_dict()))
    algo_step(model, algo, mbs, step=1)
    second = grads_of(model)
    expected = brute_grads(model, cfg, mbs, interacting, ema=ema_from(stats, interacting), step=1)
    assert_grads_close(second, expected)
    assert relative_diff(second, brute_grads(model, cfg, mbs, interacting, step=1)) > 1e-4  # EMA mattered
    resumed.attach(model)
    algo_step(model, resumed, mbs, step=1)
    assert_grads_close(grads_of(model), second)


def test_metrics_are_means_over_layers_and_sequences():
    model, mb = tiny_model(), make_batch()
    cfg = run_cfg("isopo", num_probes=1000)
    algo = build(cfg)
    algo.attach(model)
    metrics = algo_step(model, algo, [mb])
    stats: dict = {}
    brute_grads(model, cfg, [mb], False, stats=stats)
    fisher = torch.cat([v[0]["O"] for v in stats.values()])
    assert metrics["algo/isopo_scale_mean"] == pytest.approx(float((1 / (fisher + 1e-8)).mean()), rel=1e-9)
    assert metrics["algo/isopo_fisher_norm_mean"] == pytest.approx(float(fisher.mean()), rel=1e-9)
    assert metrics["algo/isopo_probes_mean"] == float(mb.attention_mask_BT.sum())
    assert metrics["algo/isopo_linear_layers"] == 15 and metrics["algo/isopo_microbatches"] == 1
    assert all(k.startswith("algo/") for k in metrics)


def test_attach_describes_the_policy():
    desc = build(run_cfg("isopo", other_params="freeze")).attach(tiny_model())
    assert desc["isopo/frozen_params"] == (
        "model.layers.*.self_attn.q_norm.weight, model.layers.*.self_attn.k_norm.weight, "
        "model.layers.*.input_layernorm.weight, model.layers.*.post_attention_layernorm.weight, model.norm.weight"
    )
    assert desc["isopo/tied_embedding"] == "model.embed_tokens: split"
    assert "lm_head.weight" in desc["isopo/linear_weights"]
    assert desc["isopo/other_params_rule"] == "freeze"


class ScaledNorm(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.gain * x


def test_unknown_parameter_owner_is_an_error_under_reinforce_only():
    model = tiny_model()
    model.model.layers[0].post_attention_layernorm = ScaledNorm(64).to(torch.float64)
    with pytest.raises(TypeError, match="ScaledNorm"):
        build(run_cfg("isopo")).attach(model)
    grads = algo_grads(model, run_cfg("isopo", other_params="freeze"), [make_batch()])
    assert grads["model.layers.0.post_attention_layernorm.gain"] is None


def test_validate_rejects_kl_and_bad_settings():
    import dataclasses

    with pytest.raises(ConfigError, match="kl_coef"):
        ALGORITHMS.get("isopo").validate(algorithm_setup(dataclasses.replace(run_cfg("isopo"), kl_coef=0.1)))
    with pytest.raises(ConfigError, match="algorithm.damping"):
        ALGORITHMS.get("isopo-interacting").validate(algorithm_setup(run_cfg("isopo-interacting", damping=0.0)))
    with pytest.raises(ConfigError, match="algorithm.num_probes"):
        ALGORITHMS.get("isopo").validate(algorithm_setup(run_cfg("isopo", num_probes=0)))


def test_cpu_autocast_bfloat16_runs_and_tracks_float32():
    model, mb = tiny_model(), make_batch()
    model = model.to(torch.float32)
    mb.response_mask_BT = mb.response_mask_BT.float()
    mb.advantages_B = mb.advantages_B.float()
    cfg = run_cfg("isopo", num_probes=1000)
    exact = algo_grads(model, cfg, [mb])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        approx = algo_grads(model, cfg, [mb])
    w = "model.layers.0.mlp.up_proj.weight"
    assert approx[w].dtype == torch.float32
    assert float((approx[w] - exact[w]).norm() / exact[w].norm()) < 0.1


def test_backward_after_the_context_is_an_error():
    """The Linear overrides are closures over one microbatch's session: a graph built inside the context
    but differentiated after it would use a closed session, and says so."""
    model, mb = tiny_model(), make_batch()
    algo = build(run_cfg("isopo"))
    totals = totals_of([mb])
    ctx = StepContext(0, [mb], totals)
    with algo.backward_context(model, mb, ctx, 0):
        loss = algo.loss(sequence_logprobs(model, mb), mb, totals)[0]
    with pytest.raises(RuntimeError, match="outside its backward_context"):
        loss.backward()
