"""Per-step diagnostics (isopo_bench.diagnostics) against a dense reference on a float64 tiny model.

The reference forms U explicitly (one autograd.grad per sequence, on an untied copy so a tied lm_head's head
and lookup parts are apart; the whole-model score of the tied weight is their sum), the Fisher F = U^T U / B
as a P x P matrix, d_lambda with a dense solve, and the KL from two full forwards. Every operation runs in
float64 (RMSNorm patched, a float64 eager attention), so agreement is to 1e-10.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from isopo_bench import metric_names as M
from isopo_bench.algorithm_api import StepContext
from isopo_bench.algorithms.isopo import IsopoSettings
from isopo_bench.batch import BatchTotals, TrainBatch, pad_and_stack, sequence_logprobs
from isopo_bench.config import AlgorithmConfig
from isopo_bench.diagnostics import DiagnosticsConfig
from isopo_bench.diagnostics.alignment import aggregation_weights, layer_cosines, natural_coefficients, project
from isopo_bench.diagnostics.monitor import StepDiagnostics
from isopo_bench.errors import ConfigError
from isopo_bench.plugin_settings import build_algorithm
from isopo_bench.step_driver import step_gradients

torch.set_num_threads(1)
VOCAB = 24
LENGTHS = [(3, 4), (2, 2), (4, 5), (1, 3)]  # (prompt, completion): unequal, padded
ADV = [1.0, -0.5, 0.3, -0.8]
RHOS = (1e-2, 1.0)


def _eager64(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    w = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
        w = w.masked_fill(~mask, torch.finfo(w.dtype).min) if mask.dtype == torch.bool else w + mask
    w = torch.softmax(w, dim=-1)
    return torch.matmul(w, value).transpose(1, 2).contiguous(), w


AttentionInterface.register("eager64", _eager64)
AttentionMaskInterface.register("eager64", eager_mask)  # an additive float mask, as eager attention gets


def _rms64(self, x):
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


@pytest.fixture(autouse=True)
def float64_norms(monkeypatch):
    monkeypatch.setattr(Qwen3RMSNorm, "forward", _rms64)
    monkeypatch.setattr(LlamaRMSNorm, "forward", _rms64)


def tiny_model(kind: str = "qwen3", tied: bool = True, layers: int = 1) -> torch.nn.Module:
    torch.manual_seed(1)
    common = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=layers,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
                  tie_word_embeddings=tied, pad_token_id=0, initializer_range=0.3)
    config = (Qwen3Config if kind == "qwen3" else LlamaConfig)(**common)
    config._attn_implementation = "eager64"
    model = (Qwen3ForCausalLM if kind == "qwen3" else LlamaForCausalLM)(config).to(torch.float64).train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def make_batch(padding_side: str = "right") -> TrainBatch:
    gen = torch.Generator().manual_seed(2)
    seqs = [torch.randint(1, VOCAB, (p + c,), generator=gen).tolist() for p, c in LENGTHS]
    ids, attn, resp, _ = pad_and_stack([s[:p] for s, (p, _) in zip(seqs, LENGTHS)],
                                       [s[p:] for s, (p, _) in zip(seqs, LENGTHS)], 0, padding_side)
    return TrainBatch(ids, attn, resp.to(torch.float64), torch.tensor(ADV, dtype=torch.float64))


def split(mb: TrainBatch, parts: int) -> list[TrainBatch]:
    n = mb.size // parts
    return [mb.select(slice(i * n, (i + 1) * n)).trimmed()[0] for i in range(parts)]


def totals_of(mbs) -> BatchTotals:
    return BatchTotals(float(sum(mb.response_mask_BT.sum() for mb in mbs)), sum(mb.size for mb in mbs), len(mbs), 16)


# ---------------------------------------------------------------- dense reference
def untied_copy(model):
    m = copy.deepcopy(model)
    if m.lm_head.weight is m.get_input_embeddings().weight:
        m.lm_head.weight = torch.nn.Parameter(m.lm_head.weight.detach().clone())
    return m


def dense_scores(model, mbs) -> tuple[torch.Tensor, list[str], dict[str, torch.Tensor]]:
    """U (B x P) over the model's trainable parameters (named_parameters order, a tied weight once with both
    uses summed), their names, and the head-use-only per-sequence gradient of every Linear weight."""
    m = untied_copy(model).eval()
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(m.named_parameters())
    rows, linear_rows = [], {}
    linears = [n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)]
    for mb in mbs:
        logp = sequence_logprobs(m, mb)
        for i in range(mb.size):
            J = (logp[i] * mb.response_mask_BT[i]).sum()
            grads = dict(zip(params, torch.autograd.grad(J, list(params.values()), retain_graph=True)))
            for lin in linears:
                linear_rows.setdefault(lin, []).append(grads[f"{lin}.weight"].flatten())
            if tied:
                grads["model.embed_tokens.weight"] = grads["model.embed_tokens.weight"] + grads["lm_head.weight"]
            rows.append(torch.cat([grads[n].flatten() for n in names]))
    return torch.stack(rows), names, {k: torch.stack(v) for k, v in linear_rows.items()}


def flat(model, names, values: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([values[n].flatten() for n in names])


def cos(x, y):
    return float(x @ y / (x.norm() * y.norm()))


def dense_natural(U, w, rho):
    B, P = U.shape
    K = U @ U.T
    lam = rho * float(K.trace()) / B**2
    F = U.T @ U / B
    return torch.linalg.solve(F + lam * torch.eye(P, dtype=U.dtype), U.T @ w)


def dense_kl(before, after, mbs):
    """Per-sequence (sum of token KL, tokens, sum of taken-token log-ratios) from full logits."""
    out = []
    with torch.no_grad():
        for mb in mbs:
            lb, la = (torch.log_softmax(m(input_ids=mb.input_ids_BT, attention_mask=mb.attention_mask_BT,
                                           position_ids=(mb.attention_mask_BT.cumsum(-1) - 1).clamp(min=0)).logits[:, :-1], -1)
                      for m in (before, after))
            kl = (lb.exp() * (lb - la)).sum(-1)
            y = mb.input_ids_BT[:, 1:, None]
            d = (la.gather(-1, y) - lb.gather(-1, y)).squeeze(-1)
            mask = mb.response_mask_BT[:, 1:]
            out += list(zip((kl * mask).sum(1), mask.sum(1), (d * mask).sum(1), (d.abs() * mask).sum(1)))
    return [torch.stack(c) for c in zip(*out)]


# ---------------------------------------------------------------- one step, as the trainer runs it
def run_step(model, algo_cfg: AlgorithmConfig, mbs, lr=1e-2, diag=DiagnosticsConfig(proximity_every=1, alignment_every=1), reducer=None,
             step=0, zero_step=False):
    algo = build_algorithm(algo_cfg, seed=0)
    algo.attach(model)
    if algo.needs_old_logp:
        for mb in mbs:
            with torch.no_grad():
                mb.old_logp_BT = sequence_logprobs(model, mb)
    ctx = StepContext(step, mbs, totals_of(mbs), **({"reducer": reducer} if reducer else {}))
    step_gradients(algo, model, ctx)
    monitor = StepDiagnostics(diag, model, algo_cfg.loss_agg)
    from isopo_bench.step_driver import MicrobatchWork

    pending = monitor.prepare(model, ctx, [MicrobatchWork(i, mb) for i, mb in enumerate(mbs)])
    grad = {n: -p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    before = copy.deepcopy(model)
    if not zero_step:
        torch.optim.Adam(model.parameters(), lr=lr).step()
    return monitor.finish(model, pending), before, grad, monitor, pending


ALGOS = {
    "reinforce": AlgorithmConfig(name="reinforce"),
    "grpo": AlgorithmConfig(name="grpo"),
    "isopo": AlgorithmConfig(name="isopo", settings=IsopoSettings()),
    "isopo-interacting": AlgorithmConfig(name="isopo-interacting", settings=IsopoSettings()),
}


@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("kind,padding,loss_agg", [("qwen3", "right", "token-mean"),
                                                   ("llama", "left", "seq-mean-token-mean")])
def test_equals_dense_reference(algo, kind, padding, loss_agg):
    model = tiny_model(kind, tied=kind == "qwen3")
    mbs = split(make_batch(padding), 2)
    cfg = AlgorithmConfig(name=ALGOS[algo].name, settings=ALGOS[algo].settings, loss_agg=loss_agg)
    metrics, before, grad, _, _ = run_step(model, cfg, mbs)
    U, names, U_lin = dense_scores(before, mbs)
    B = U.shape[0]
    w = aggregation_weights(mbs, loss_agg, totals_of(mbs)) * torch.tensor(ADV, dtype=torch.float64)
    params_b = dict(before.named_parameters())
    params_a = dict(model.named_parameters())
    x = {"grad": flat(model, names, {n: grad.get(n, torch.zeros_like(params_a[n])) for n in names}),
         "update": flat(model, names, {n: params_a[n].detach() - params_b[n].detach() for n in names})}
    g = U.T @ w
    expected = {M.DIAG_FISHER_LEN: float((U @ x["update"]).pow(2).sum()) / B}
    for d, xd in x.items():
        expected[M.diag_cos(d, "vanilla")] = cos(xd, g)
        for rho in RHOS:
            expected[M.diag_cos(d, "natural", rho)] = cos(xd, dense_natural(U, w, rho))
            per, num, xs, ds = [], 0.0, 0.0, 0.0
            for lin, Ul in U_lin.items():
                xl = x[d][_slice(names, params_a, lin)] if f"{lin}.weight" in names else \
                    x[d][_slice(names, params_a, "model.embed_tokens")]
                dl = dense_natural(Ul, w, rho)
                per.append(cos(xl, dl))
                num, xs, ds = num + float(xl @ dl), xs + float(xl @ xl), ds + float(dl @ dl)
            expected[M.diag_cos(d, "layer_natural", rho)] = sum(per) / len(per)
            expected[M.diag_cos(d, "blockdiag_natural", rho)] = num / math.sqrt(xs * ds)
    kl, tokens, dlogp, absd = dense_kl(before, model, mbs)
    adv = torch.tensor(ADV, dtype=torch.float64)
    expected |= {M.DIAG_KL_TOK: float(kl.sum() / tokens.sum()), M.DIAG_KL_SEQ: float(kl.mean()),
                 M.DIAG_KL_TOK_MAX_SEQ: float((kl / tokens).max()), M.DIAG_LOGRATIO_ABS: float(absd.sum() / tokens.sum()),
                 M.DIAG_DLOGP_POS: float(dlogp[adv > 0].mean()), M.DIAG_DLOGP_NEG: float(dlogp[adv < 0].mean()),
                 M.DIAG_SURROGATE: float((adv * dlogp).mean())}
    expected[M.DIAG_SURROGATE_PER_KL] = expected[M.DIAG_SURROGATE] / expected[M.DIAG_KL_TOK]
    assert set(expected) <= set(metrics), set(expected) - set(metrics)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-10, rel=1e-10), key
    assert expected[M.DIAG_KL_TOK] > 1e-6  # the step moved the policy
    if algo == "reinforce":
        assert metrics[M.diag_cos("grad", "vanilla")] == pytest.approx(1.0, abs=1e-10)


def _slice(names, params, module):
    start = 0
    for n in names:
        size = params[n].numel()
        if n == f"{module}.weight":
            return slice(start, start + size)
        start += size
    raise KeyError(module)


def test_isopo_interacting_layer_cosine_is_one_at_matching_damping():
    """Token-mean, one microbatch, first step: ISOPO interacting's layer-l direction is that layer's damped
    natural gradient at rho = its damping (untied, so every Linear's gradient is ISOPO's alone)."""
    for damping in (1.0, 0.01):
        model = tiny_model("llama", tied=False, layers=2)
        mbs = [make_batch()]
        cfg = AlgorithmConfig(name="isopo-interacting", settings=IsopoSettings(damping=damping))
        _, _, _, monitor, pending = run_step(model, cfg, mbs, diag=DiagnosticsConfig(alignment_every=1, rhos=(damping,)))
        # Recompute the layer blocks from the pending capture (finish already ran; nothing was consumed).
        sizes = {0: mbs[0].size}
        _, layers = project(monitor.capture, pending.scores, sizes, {"grad": pending.grad_ascent}, lambda t: t)
        w = aggregation_weights(mbs, "token-mean", totals_of(mbs)) * mbs[0].advantages_B
        per_layer = layer_cosines(layers, w, "grad", damping)
        assert len(per_layer) == 2 * 7 + 1
        for name, c in per_layer.items():
            assert c == pytest.approx(1.0, abs=1e-9), name
        off = layer_cosines(layers, w, "grad", damping * 30)
        assert min(off.values()) < 1 - 1e-6  # a mismatched damping is visibly off


def test_damping_limits():
    model = tiny_model()
    mbs = split(make_batch(), 2)
    U, _, _ = dense_scores(model, mbs)
    K = U @ U.T
    w = torch.tensor(ADV, dtype=torch.float64)
    v = natural_coefficients(K, w, 1e9)  # d = U^T v tends to g = U^T w
    assert float(v @ K @ w) / math.sqrt(float(v @ K @ v) * float(w @ K @ w)) == pytest.approx(1.0, abs=1e-9)
    B = K.shape[0]
    v0 = natural_coefficients(K, w, 1e-9)  # d tends to B U^T K^-1 w, the minimum-norm x with U x = B w
    assert torch.allclose(U @ (U.T @ v0), B * w, rtol=1e-6, atol=1e-8)
    assert torch.allclose(v0, B * torch.linalg.solve(K, w), rtol=1e-5)


def test_zero_step_has_zero_kl():
    model = tiny_model()
    metrics, *_ = run_step(model, ALGOS["reinforce"], split(make_batch(), 2), zero_step=True)
    assert metrics[M.DIAG_KL_TOK] == 0.0 and metrics[M.DIAG_KL_SEQ] == 0.0 and metrics[M.DIAG_LOGRATIO_ABS] == 0.0
    assert metrics[M.DIAG_FISHER_LEN] == 0.0
    assert M.diag_cos("update", "natural", 1.0) not in metrics  # undefined for a zero update: not logged


def test_half_fisher_length_approaches_sequence_kl():
    """Responses sampled from the policy itself: then E[(u . Delta)^2] is the sequence Fisher, and for a
    small step (1/2) Delta^T F Delta -> KL_seq (sampling error ~ 1/sqrt(B))."""
    model = tiny_model()
    gen = torch.Generator().manual_seed(5)
    B, L = 2048, 3
    prompts = torch.randint(1, VOCAB, (B, 2), generator=gen)
    ids = prompts
    with torch.no_grad():
        for _ in range(L):
            logits = model(input_ids=ids).logits[:, -1]
            ids = torch.cat([ids, torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)], 1)
    resp = torch.zeros(B, 2 + L, dtype=torch.float64)
    resp[:, 2:] = 1
    mbs = [TrainBatch(ids[s : s + 256], torch.ones_like(ids[s : s + 256]), resp[s : s + 256],
                      torch.ones(256, dtype=torch.float64)) for s in range(0, B, 256)]
    ctx = StepContext(0, mbs, totals_of(mbs))
    from isopo_bench.step_driver import MicrobatchWork

    monitor = StepDiagnostics(DiagnosticsConfig(alignment_every=1), model, "token-mean")
    model.zero_grad()
    pending = monitor.prepare(model, ctx, [MicrobatchWork(i, mb) for i, mb in enumerate(mbs)])
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
        # The embedding's padding row (token 0) gets no gradient (padding_idx), so a move of its lookup is
        # invisible to every score: keep it, so that the step stays inside what the Fisher sees.
        model.get_input_embeddings().weight[0] = pending.params_before["model.embed_tokens.weight"][0]
    metrics = monitor.finish(model, pending)
    ratio = 0.5 * metrics[M.DIAG_FISHER_LEN] / metrics[M.DIAG_KL_SEQ]
    assert abs(ratio - 1) < 0.12, ratio


def test_diagnostics_are_refused_on_the_control_track():
    from isopo_bench.control.config import ControlRunConfig
    from isopo_bench.control.trainer import validate_control_config

    validate_control_config(ControlRunConfig())  # off by default there
    with pytest.raises(ConfigError, match="diagnostics.proximity_every"):
        validate_control_config(ControlRunConfig(diagnostics=DiagnosticsConfig()))


def test_config_hash_ignores_diagnostics():
    from isopo_bench.config import RunConfig

    assert RunConfig().config_hash() == RunConfig(diagnostics=DiagnosticsConfig(alignment_every=3)).config_hash()


# ---------------------------------------------------------------- through the real trainer
@pytest.mark.parametrize("algo", ["reinforce", "isopo", "isopo-interacting"])
def test_diagnostics_never_change_the_trajectory(workdir, algo):
    """Same seed, diagnostics at every step vs off: bit-identical final weights and training metrics."""
    from safetensors.torch import load_file

    from conftest import smoke_config
    from isopo_bench.config import replace
    from isopo_bench.plugin_settings import algorithm_preset
    from isopo_bench.trainer import Trainer
    from test_trainer import deterministic, metric_histories, random_advantages

    weights, histories = {}, {}
    for on in (True, False):
        diag = DiagnosticsConfig(proximity_every=1, alignment_every=1) if on else DiagnosticsConfig(proximity_every=0, alignment_every=0)
        (workdir / str(on)).mkdir()
        cfg = smoke_config(workdir / str(on), algorithm=algorithm_preset(algo), diagnostics=diag)
        cfg = replace(cfg, **{"optim.microbatch_size": 8})
        trainer = Trainer(cfg)
        trainer.advantage_fn = random_advantages  # the random tiny model earns no reward
        result = trainer.run()
        weights[on] = load_file(result.run_dir / "final_model" / "model.safetensors")
        histories[on] = metric_histories(cfg, result.run_id)
    assert weights[True].keys() == weights[False].keys()
    for name, value in weights[False].items():
        assert torch.equal(weights[True][name], value), name
    on, off = deterministic(histories[True]), deterministic(histories[False])
    assert {k: v for k, v in on.items() if not k.startswith("diag/")} == off
    assert not any(k.startswith("diag/") for k in off)
    for key in (M.DIAG_KL_TOK, M.DIAG_SURROGATE, M.DIAG_FISHER_LEN, M.DIAG_COS_UPDATE_NAT, M.diag_cos("grad", "vanilla")):
        assert len(on[key]) == 3, key
    assert M.TIME_DIAGNOSTICS in histories[True]
    if algo == "reinforce":
        assert all(abs(v - 1) < 1e-5 for _, v in on[M.diag_cos("grad", "vanilla")])  # float32 model


def test_nested_phase_is_not_counted_in_its_parent():
    import time

    from isopo_bench.timing import PhaseTimer

    timer = PhaseTimer(torch.device("cpu"))
    with timer.phase("outer"):
        with timer.phase("inner"):
            time.sleep(0.05)
    times = timer.pop()
    assert times["inner"] >= 0.05 and times["outer"] < 0.01
