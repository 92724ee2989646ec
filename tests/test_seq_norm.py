"""seq-norm (algorithms/seq_norm.py, the smallest method on the layer-wise engine) equals a brute-force
per-sequence autograd loop in float64: every Linear weight gets sum_i A_i G_i / (||G_i||_F + eps) with G_i
each sequence's own autograd gradient of its share of the advantage-free loss, every other parameter its
REINFORCE gradient sum_i A_i G_i (tied lm_head: head part + lookup part)."""

from __future__ import annotations

import pytest
import torch
from test_isopo import assert_grads_close, grads_of, make_batch, per_sequence, tiny_model, totals_of

from isopo_bench.algorithms.seq_norm import SeqNormSettings
from isopo_bench.config import AlgorithmConfig
from isopo_bench.plugin_settings import algorithm_presets, build_algorithm
from isopo_bench.step_driver import accumulate

torch.set_num_threads(1)


def brute_force(model, mbs, loss_agg: str, eps: float, normalise: bool = True) -> dict[str, torch.Tensor]:
    totals = totals_of(mbs)
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    total: dict[str, torch.Tensor] = {}
    for mb in mbs:
        per_seq, _ = per_sequence(model, mb, totals, loss_agg)  # on an untied copy: head and lookup apart
        for name, G in per_seq.items():
            w = mb.advantages_B
            if name in linears and normalise:
                w = w / (G.flatten(1).norm(dim=1) + eps)
            total[name] = total.get(name, 0) + torch.einsum("b,b...->...", w, G)
    if model.lm_head.weight is model.get_input_embeddings().weight:
        total["model.embed_tokens.weight"] = total["model.embed_tokens.weight"] + total.pop("lm_head.weight")
    return total


@pytest.mark.parametrize("kind,loss_agg,padding", [("qwen3", "token-mean", "right"),
                                                   ("llama", "seq-mean-token-sum", "left")])
@pytest.mark.parametrize("eps", [1e-8, 0.05])
def test_equals_bruteforce(kind, loss_agg, padding, eps):
    model, mb = tiny_model(kind, tied=kind == "qwen3"), make_batch(padding)
    mbs = [mb.select(slice(0, 2)), mb.select(slice(2, 4))]
    algo = build_algorithm(AlgorithmConfig(name="seq-norm", loss_agg=loss_agg, settings=SeqNormSettings(eps)))
    metrics = accumulate(algo, model, mbs, totals_of(mbs))
    actual = grads_of(model)
    assert_grads_close(actual, brute_force(model, mbs, loss_agg, eps))
    reinforce = brute_force(model, mbs, loss_agg, eps, normalise=False)
    w = "model.layers.0.mlp.up_proj.weight"
    assert float((actual[w] - reinforce[w]).norm() / actual[w].norm()) > 1e-2  # the normalisation mattered
    assert metrics["algo/seq_norm_microbatches"] == 2


def test_preset_is_registered():
    assert algorithm_presets()["seq-norm"] == AlgorithmConfig(name="seq-norm", settings=SeqNormSettings())
