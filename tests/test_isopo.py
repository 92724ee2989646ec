"""ISOPO gradients equal an obviously-correct brute force, in float64 on random tiny Qwen3 / Llama models.

The brute force takes each sequence's gradient with torch.autograd.grad (on an untied copy of the model,
so a tied lm_head's head and lookup parts are separate), captures per-token Linear inputs a_t and output
gradients g_t with plain module hooks for the Fisher probes J_k = g_k a_k^T, and applies ALGORITHMS.md
section 5 literally: materialised J_k, an explicit matrix inverse, no ghost norms, no custom autograd.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from isopo_bench.aggregation import aggregate
from isopo_bench.algorithms.isopo import IsopoSettings
from isopo_bench.batch import BatchTotals, TrainBatch, pad_and_stack, sequence_logprobs
from isopo_bench.config import AlgorithmConfig
from isopo_bench.layerwise.draws import draw_probes, probe_generator
from isopo_bench.plugin_settings import build_algorithm
from isopo_bench.layerwise import batched as layerwise_batched
from isopo_bench.step_driver import accumulate

torch.set_num_threads(1)
VOCAB = 40
ADV = [1.0, -0.5, 0.3, -0.8]
LENGTHS = [(3, 5), (2, 2), (4, 7), (1, 3)]  # (prompt, completion): unequal, padded
SEED = 0


def tiny_model(kind: str = "qwen3", tied: bool = True) -> torch.nn.Module:
    torch.manual_seed(1)
    common = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=64, tie_word_embeddings=tied,
        pad_token_id=0, initializer_range=0.2,
    )
    model = Qwen3ForCausalLM(Qwen3Config(**common)) if kind == "qwen3" else LlamaForCausalLM(LlamaConfig(**common))
    model = model.to(torch.float64).train()
    with torch.no_grad():  # norm weights start at 1: make their gradients generic
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def make_batch(padding_side: str = "right", order=(0, 1, 2, 3)) -> TrainBatch:
    gen = torch.Generator().manual_seed(2)
    seqs = [torch.randint(1, VOCAB, (p + c,), generator=gen).tolist() for p, c in LENGTHS]
    seqs, lengths = [seqs[i] for i in order], [LENGTHS[i] for i in order]
    prompts = [s[:p] for s, (p, _) in zip(seqs, lengths)]
    completions = [s[p:] for s, (p, _) in zip(seqs, lengths)]
    ids, attn, resp, _ = pad_and_stack(prompts, completions, 0, padding_side)
    adv = torch.tensor([ADV[i] for i in order], dtype=torch.float64)
    return TrainBatch(ids, attn, resp.to(torch.float64), adv)


def run_cfg(name: str = "isopo", loss_agg: str = "token-mean", **isopo) -> AlgorithmConfig:
    return AlgorithmConfig(name=name, loss_agg=loss_agg, settings=IsopoSettings(**isopo))


def build(cfg: AlgorithmConfig, **setup_fields):
    return build_algorithm(cfg, seed=SEED, **setup_fields)


def totals_of(mbs: list[TrainBatch]) -> BatchTotals:
    return BatchTotals(
        num_tokens=float(sum(mb.response_mask_BT.sum() for mb in mbs)), num_seqs=sum(mb.size for mb in mbs),
        num_microbatches=len(mbs), max_len=16,
    )


def algo_step(model, algo, mbs: list[TrainBatch], step: int = 0) -> dict[str, float]:
    """Optimizer step `step`'s gradient, driven exactly as the trainer does."""
    totals = totals_of(mbs)
    return accumulate(algo, model, mbs, totals, step=step)


def algo_grads(model, cfg: AlgorithmConfig, mbs: list[TrainBatch]) -> dict[str, torch.Tensor | None]:
    algo = build(cfg)
    algo.attach(model)
    algo_step(model, algo, mbs)
    return grads_of(model)


def grads_of(model) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------- brute force


def untied_copy(model):
    m = copy.deepcopy(model)
    if m.lm_head.weight is m.get_input_embeddings().weight:
        m.lm_head.weight = torch.nn.Parameter(m.lm_head.weight.detach().clone())
    return m


def per_sequence(model, mb: TrainBatch, totals: BatchTotals, loss_agg: str):
    """Per-sequence gradients of every parameter {name: (B, *shape)} and per-token (a, g) of every Linear."""
    m = untied_copy(model)
    params = dict(m.named_parameters())
    acts, handles = {}, []
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear):
            def hook(mod, inp, out, name=name):
                acts[name] = [inp[0].detach(), None]
                out.register_hook(lambda g, name=name: acts[name].__setitem__(1, g.detach()))
            handles.append(mod.register_forward_hook(hook))
    logp = sequence_logprobs(m, mb)
    for h in handles:
        h.remove()
    per_seq = {n: [] for n in params}
    for i in range(mb.size):
        row = torch.zeros(mb.size, 1, dtype=torch.float64)
        row[i] = 1
        loss_i = aggregate(-logp, mb.response_mask_BT * row, loss_agg, totals)
        grads = torch.autograd.grad(loss_i, list(params.values()), retain_graph=True, allow_unused=True)
        for n, g in zip(params, grads):
            per_seq[n].append(torch.zeros_like(params[n]) if g is None else g)
    aggregate(-logp, mb.response_mask_BT, loss_agg, totals).backward()
    return {n: torch.stack(v) for n, v in per_seq.items()}, acts


def soft(x, c, form, ema=None):
    if c == 0:
        return x.abs()
    lam = c * ((x**2).mean() if ema is None else ema)
    return torch.sqrt(x**2 / (lam + 1e-8) + 1) if form == "keep-small" else torch.sqrt(x**2 + lam)


def brute_stats(G, a, g, probes):
    """N_i, O_i, R_i and tr K / B of one layer, straight from the formulas."""
    a_N, g_N = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
    J = g_N[probes][:, :, None] * a_N[probes][:, None, :]
    P = torch.einsum("boi,soi->sb", G, J)
    denom = ((g_N[probes].norm(dim=1) * a_N[probes].norm(dim=1) + 1e-12) ** 2).sum().sqrt()
    N = G.flatten(1).norm(dim=1)
    O = P.norm(dim=0) / denom
    K = torch.einsum("boi,coi->bc", G, G)
    return {"N": N, "O": O, "R": O / (N + 1e-12), "K": K, "ntk": torch.trace(K) / G.shape[0]}


def brute_weights(st, A, icfg, interacting, ema=None):
    """Per-sequence weights w_i of one layer; `ema` (per statistic) replaces the current values."""
    ema = ema or {}
    if interacting:
        K, B = st["K"], len(A)
        lam = icfg.damping * ema.get("ntk", st["ntk"])
        return lam * torch.linalg.inv(K + (lam + 1e-8) * torch.eye(B, dtype=K.dtype)) @ A
    regs = {"N": icfg.reg_n, "O": icfg.reg_o, "R": icfg.reg_r}
    tl = [soft(st[k], regs[k], icfg.reg_form, ema.get(k)) for k in "NOR"]
    s = 1 / (tl[0] ** icfg.p * tl[1] ** icfg.q * tl[2] ** icfg.r + 1e-8)
    return s * A


def brute_probes(mb, icfg, layer, step=0, micro=0):
    real = mb.attention_mask_BT.reshape(-1).nonzero().squeeze(-1)
    gen = probe_generator(SEED, step, micro, -1 if icfg.share_probes else layer)
    return draw_probes(real, icfg.num_probes, gen)


def other_weight(name, mb, icfg, tied_embed):
    lookup_of_tied = tied_embed and icfg.tied_embedding == "reference"
    if icfg.other_params == "reference" and not lookup_of_tied:
        return torch.ones(mb.size, dtype=torch.float64)
    if icfg.other_params == "reinforce" and not lookup_of_tied:
        return mb.advantages_B
    return torch.zeros(mb.size, dtype=torch.float64)


def brute_grads(model, cfg: AlgorithmConfig, mbs: list[TrainBatch], interacting: bool, ema=None, step=0, stats=None):
    """Expected gradient of every parameter of `model` (names as in model.named_parameters()).
    `ema`: {layer: {statistic: value}} from earlier steps; `stats` (a dict) receives this step's values."""
    icfg, totals = cfg.settings, totals_of(mbs)
    linear_names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    embed_name = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    total: dict[str, torch.Tensor] = {}
    for micro, mb in enumerate(mbs):
        per_seq, acts = per_sequence(model, mb, totals, cfg.loss_agg)
        for name, G in per_seq.items():
            layer = name.removesuffix(".weight")
            if layer in linear_names:
                a, g = acts[layer]
                probes = brute_probes(mb, icfg, linear_names.index(layer), step=step, micro=micro)
                st = brute_stats(G, a, g * mb.attention_mask_BT[..., None], probes)
                if stats is not None:
                    stats.setdefault(layer, []).append(st)
                w = brute_weights(st, mb.advantages_B, icfg, interacting, (ema or {}).get(layer))
            else:
                w = other_weight(name, mb, icfg, tied and name == embed_name)
            total[name] = total.get(name, 0) + torch.einsum("b,b...->...", w, G)
    if tied:
        total[embed_name] = total[embed_name] + total.pop("lm_head.weight")
    return total


def assert_grads_close(actual: dict, expected: dict, rtol: float = 1e-9):
    assert set(expected) <= set(actual)
    for name, exp in expected.items():
        act = actual[name]
        assert act is not None, name
        err = (act - exp).norm() / exp.norm().clamp(min=1e-30)
        assert err < rtol, f"{name}: relative error {err:.2e}"


# ---------------------------------------------------------------- gradient equalities

NONINTERACTING_SETTINGS = {
    "released": dict(),
    "all-probes": dict(num_probes=1000),
    "pqr": dict(p=0.5, q=1.0, r=-0.7, num_probes=9),
    "reg-keep-small": dict(p=1.0, q=0.5, r=0.5, reg_n=0.5, reg_o=0.3, reg_r=0.2, num_probes=7),
    "reg-additive": dict(p=0.3, q=1.0, r=1.0, reg_n=0.4, reg_o=2.0, reg_r=0.1, reg_form="additive"),
    "per-layer-probes": dict(num_probes=5, share_probes=False),
}


@pytest.mark.parametrize("mode", ["fast", "faithful"])
@pytest.mark.parametrize("setting", list(NONINTERACTING_SETTINGS))
def test_noninteracting_equals_bruteforce(mode, setting):
    model, mb = tiny_model(), make_batch()
    cfg = run_cfg("isopo", mode=mode, **NONINTERACTING_SETTINGS[setting])
    assert_grads_close(algo_grads(model, cfg, [mb]), brute_grads(model, cfg, [mb], interacting=False))


@pytest.mark.parametrize("mode", ["fast", "faithful"])
@pytest.mark.parametrize("damping", [1.0, 0.05])
@pytest.mark.parametrize("batching", ["batched", "per-layer"])
def test_interacting_equals_bruteforce(mode, damping, batching, monkeypatch):
    """Both the small-layer batched path (the default for a model this small) and the per-layer one."""
    if batching == "per-layer":
        monkeypatch.setattr(layerwise_batched, "MAX_BATCHED_MB", 0)
    model, mb = tiny_model(), make_batch()
    cfg = run_cfg("isopo-interacting", mode=mode, damping=damping)
    assert_grads_close(algo_grads(model, cfg, [mb]), brute_grads(model, cfg, [mb], interacting=True))


@pytest.mark.parametrize("plan", ["ghost", "materialise", "chunked"])
@pytest.mark.parametrize("name", ["isopo", "isopo-interacting"])
def test_fast_plans_equal_bruteforce_on_llama(plan, name):
    """Every fast-mode form (ghost/Gram, materialised, chunked) on an untied Llama, seq-mean-token-sum."""
    model, mb = tiny_model("llama", tied=False), make_batch("left")
    forced = dict(fast_plan="materialise", materialise_budget_mb=0) if plan == "chunked" else dict(fast_plan=plan)
    cfg = run_cfg(name, loss_agg="seq-mean-token-sum", q=0.5, p=0.5, num_probes=6, **forced)
    assert_grads_close(algo_grads(model, cfg, [mb]), brute_grads(model, cfg, [mb], interacting=name != "isopo"))


@pytest.mark.parametrize("other", ["reference", "freeze"])
@pytest.mark.parametrize("tied_rule", ["split", "reference"])
def test_other_param_policies(other, tied_rule):
    model, mb = tiny_model(), make_batch()
    cfg = run_cfg("isopo", other_params=other, tied_embedding=tied_rule)
    actual = algo_grads(model, cfg, [mb])
    expected = brute_grads(model, cfg, [mb], interacting=False)
    linear_or_tied = {n for n in expected if "proj" in n or "embed" in n}
    assert_grads_close(actual, {n: expected[n] for n in linear_or_tied})
    for name in set(expected) - linear_or_tied:  # norms
        if other == "freeze":
            assert actual[name] is None, name
        else:
            assert_grads_close(actual, {name: expected[name]})


# ---------------------------------------------------------------- reductions


def reinforce_grads(model, mbs, loss_agg="token-mean"):
    """The REINFORCE gradient from its definition: d/dtheta of sum over microbatches of aggregate(-A logp)."""
    totals = totals_of(mbs)
    model.zero_grad(set_to_none=True)
    for mb in mbs:
        per_token = -mb.advantages_B[:, None] * sequence_logprobs(model, mb)
        aggregate(per_token, mb.response_mask_BT, loss_agg, totals).backward()
    return grads_of(model)


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
@pytest.mark.parametrize("mode", ["fast", "faithful"])
def test_zero_powers_is_reinforce(kind, mode):
    model, mb = tiny_model(kind, tied=kind == "qwen3"), make_batch()
    mbs = [mb.select(slice(0, 2)), mb.select(slice(2, 4))]
    actual = algo_grads(model, run_cfg("isopo", mode=mode, p=0.0, q=0.0, r=0.0), mbs)
    expected = reinforce_grads(model, mbs)
    assert_grads_close(actual, expected, rtol=1e-6)  # s_i = 1 / (1 + 1e-8); float32 RMSNorm rounding


@pytest.mark.parametrize("mode", ["fast", "faithful"])
def test_huge_damping_is_reinforce(mode):
    model, mb = tiny_model(), make_batch()
    actual = algo_grads(model, run_cfg("isopo-interacting", mode=mode, damping=1e9), [mb])
    assert_grads_close(actual, reinforce_grads(model, [mb]), rtol=1e-6)


def test_reinforce_rule_for_norms_and_embeddings_is_exact_reinforce():
    """Norm and (untied) embedding gradients under other_params=reinforce are REINFORCE's, whatever the
    Linear transform does."""
    model, mb = tiny_model("llama", tied=False), make_batch()
    actual = algo_grads(model, run_cfg("isopo-interacting", damping=0.1), [mb])
    expected = reinforce_grads(model, [mb])
    others = [n for n in expected if "norm" in n or "embed" in n]
    assert len(others) == 6
    # Not 1e-9: the models' RMSNorms compute in float32 even in float64 models, and REINFORCE's backward
    # feeds them different upstream gradients than the advantage-free loss, so they round differently.
    assert_grads_close(actual, {n: expected[n] for n in others}, rtol=1e-6)
