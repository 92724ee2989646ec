"""Chunked log-probs (isopo_bench.chunked_logprobs) equal the full path: values, entropy and gradients, in
float32 (1e-6) and float64 (exact values), with padding on both sides, tied and untied heads, several chunks."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from isopo_bench import chunked_logprobs as C
from isopo_bench.batch import TrainBatch, pad_and_stack, sequence_logprobs

torch.set_num_threads(1)


def tiny(dtype, tied: bool, vocab: int = 61):
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, tie_word_embeddings=tied, pad_token_id=0)
    torch.manual_seed(0)
    return Qwen3ForCausalLM(cfg).to(dtype)


def batch(side: str, vocab: int = 61) -> TrainBatch:
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, vocab, (n,), generator=g).tolist() for n in (3, 5, 2)]
    completions = [torch.randint(1, vocab, (n,), generator=g).tolist() for n in (6, 2, 9)]
    ids, attn, resp, _ = pad_and_stack(prompts, completions, 0, padding_side=side)
    return TrainBatch(ids, attn, resp, torch.tensor([1.0, -0.5, 2.0]))


def both(model, mb, budget_mb):
    with C.mode("full"):
        full = sequence_logprobs(model, mb, with_entropy=True)
    assert C.applies(model)
    chunked = C.chunked_sequence_logprobs(model, mb, with_entropy=True, budget_mb=budget_mb)
    return full, chunked


def grads(model, logp_BT, mb):
    model.zero_grad(set_to_none=True)
    ((logp_BT * mb.response_mask_BT.to(logp_BT.dtype)) * mb.advantages_B[:, None].to(logp_BT.dtype)).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("side", ["right", "left"])
def test_chunked_equals_full(dtype, tied, side, monkeypatch):
    model, mb = tiny(dtype, tied), batch(side)
    monkeypatch.setattr(C, "chunk_rows", lambda vocab, budget_mb=0: 4)  # several chunks over 17 response tokens
    (lp_f, ent_f), (lp_c, ent_c) = both(model, mb, 0)
    mask = mb.response_mask_BT.bool()
    tol = {"rtol": 0, "atol": 0} if dtype == torch.float64 else {"rtol": 1e-6, "atol": 1e-6}
    torch.testing.assert_close(lp_c[mask], lp_f[mask], **tol)
    torch.testing.assert_close(ent_c[mask], ent_f[mask], **tol)
    assert (lp_c[~mask] == 0).all() and (ent_c[~mask] == 0).all()
    g_full = grads(model, lp_f, mb)
    g_chunk = grads(model, lp_c, mb)
    assert g_full.keys() == g_chunk.keys()
    gtol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    for name in g_full:
        torch.testing.assert_close(g_chunk[name], g_full[name], **gtol, msg=name)


def test_temperature_divides_the_logits():
    model, mb = tiny(torch.float64, True), batch("right")
    lp2 = C.chunked_sequence_logprobs(model, mb, temperature=2.0)
    logits = model(input_ids=mb.input_ids_BT, attention_mask=mb.attention_mask_BT,
                   position_ids=(mb.attention_mask_BT.cumsum(-1) - 1).clamp(min=0)).logits[:, :-1] / 2.0
    ref = torch.nn.functional.pad(logits.log_softmax(-1).gather(-1, mb.input_ids_BT[:, 1:, None]).squeeze(-1), (1, 0))
    mask = mb.response_mask_BT.bool()
    torch.testing.assert_close(lp2[mask], ref[mask], rtol=1e-12, atol=1e-12)
    g = torch.autograd.grad((lp2[mask]).sum(), model.lm_head.weight)[0]
    g_ref = torch.autograd.grad((ref[mask]).sum(), model.lm_head.weight)[0]
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_overridden_head_keeps_the_full_path():
    """The layer-wise engine overrides the LM head's forward (it needs the whole (B, T, d) input)."""
    model = tiny(torch.float32, True)
    model.lm_head.forward = lambda x: torch.nn.functional.linear(x, model.lm_head.weight)
    assert not C.applies(model)
    with pytest.raises(RuntimeError), C.mode("chunked"):
        C.applies(model)
    del model.lm_head.forward
    assert C.applies(model)
    with C.mode("full"):
        assert not C.applies(model)


def test_bfloat16_close_to_full():
    model, mb = tiny(torch.bfloat16, True), batch("right")
    (lp_f, _), (lp_c, _) = both(model, mb, C.CHUNK_BUDGET_MB)
    mask = mb.response_mask_BT.bool()
    torch.testing.assert_close(lp_c[mask], lp_f[mask], rtol=0, atol=0)  # same bf16 logits, same float32 reduction


def test_hooked_head_keeps_the_full_path():
    model = tiny(torch.float32, True)
    handle = model.lm_head.register_forward_hook(lambda m, i, o: None)
    assert not C.applies(model)
    handle.remove()
    assert C.applies(model)
