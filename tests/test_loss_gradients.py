"""Model-level gradients of the loss-based algorithms on a random tiny Qwen3ForCausalLM in float64:
reductions to REINFORCE, CISPO's stop-gradient weight, GSPO's sequence weighting against a brute-force
loop over tokens, and invariance to the microbatch split and to the padding side."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from isopo_bench.aggregation import MODES
from isopo_bench.batch import BatchTotals, TrainBatch, pad_and_stack, sequence_logprobs
from isopo_bench.plugin_settings import algorithm_config, build_algorithm
from isopo_bench.plugins import ALGORITHMS

F64 = torch.float64
MAX_LEN = 6
PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14, 15], [16, 17, 18], [19, 20], [21, 22, 23], [24, 25]]
COMPLETIONS = [[3, 4, 1], [26, 27, 28, 29, 1], [30], [2, 3, 4, 5], [6, 1], [7, 8, 9, 10, 11, 1], [12, 13], [14, 15, 16]]
ADVANTAGES = [1.0, -0.5, 2.0, -1.5, 0.3, -2.0, 0.8, -0.7]
# Clip ranges wide enough that, with the perturbed old log-probs below, some tokens/sequences clip and some do not.
LOSS_FIELDS = {
    "reinforce": {},
    "grpo": {},
    "cispo": {},
    "gspo": {"gspo_clip_eps_low": 0.05, "gspo_clip_eps_high": 0.05},
}


def make_algo(name, **fields):
    return build_algorithm(algorithm_config(name, **fields))


@pytest.fixture(scope="module")
def model():
    config = Qwen3Config(
        vocab_size=32, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=64, tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(F64).train()
    for module in model.modules():
        if isinstance(module, Qwen3RMSNorm):
            make_rms_norm_float64(module)
    return model


def make_rms_norm_float64(module: Qwen3RMSNorm) -> None:
    """Qwen3RMSNorm computes in float32 even for float64 inputs, which makes the backward pass inexact
    (a sum of per-token gradients then differs from the gradient of the sum by ~1e-7). The test model is
    float64 throughout, so that gradient identities hold to 1e-12."""

    def forward(hidden_BTD):
        variance_BT1 = hidden_BTD.pow(2).mean(-1, keepdim=True)
        return module.weight * (hidden_BTD * torch.rsqrt(variance_BT1 + module.variance_epsilon))

    module.forward = forward


def model_batch(padding_side="right") -> TrainBatch:
    ids_BT, attention_BT, response_BT, _ = pad_and_stack(PROMPTS, COMPLETIONS, 0, padding_side=padding_side)
    return TrainBatch(ids_BT, attention_BT, response_BT.to(F64), torch.tensor(ADVANTAGES, dtype=F64))


def place_on_real_tokens(values_N, attention_BT):
    """Per-token values in reading order of the real tokens: identical for left and right padding."""
    out_BT = torch.zeros(attention_BT.shape, dtype=F64)
    out_BT[attention_BT.bool()] = values_N
    return out_BT


def with_old_and_ref(model, batch, old_noise=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = int(batch.attention_mask_BT.sum())
    with torch.no_grad():
        logp_BT = sequence_logprobs(model, batch)
    old_noise_BT = place_on_real_tokens(old_noise * torch.randn(n, generator=g, dtype=F64), batch.attention_mask_BT)
    ref_noise_BT = place_on_real_tokens(0.5 * torch.randn(n, generator=g, dtype=F64), batch.attention_mask_BT)
    batch.old_logp_BT = logp_BT + old_noise_BT
    batch.ref_logp_BT = logp_BT + ref_noise_BT
    return batch


def flat_grad(model):
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in model.parameters()])


def accumulated_grads(model, algo, batch, num_microbatches=1):
    """Gradient of one optimizer step, accumulated over microbatches with whole-batch totals."""
    totals = BatchTotals.of(batch, num_microbatches, max_len=MAX_LEN)
    model.zero_grad(set_to_none=True)
    size = batch.size // num_microbatches
    all_metrics = []
    for start in range(0, batch.size, size):
        mb = batch.select(slice(start, start + size))
        loss, metrics = algo.loss(sequence_logprobs(model, mb), mb, totals)
        loss.backward()
        all_metrics.append(metrics)
    return flat_grad(model), all_metrics


def on_policy_grads(model, algo, batch):
    model.zero_grad(set_to_none=True)
    logp_BT = sequence_logprobs(model, batch)
    batch.old_logp_BT = logp_BT.detach()
    loss, metrics = algo.loss(logp_BT, batch, BatchTotals.of(batch, 1, max_len=MAX_LEN))
    loss.backward()
    return flat_grad(model), metrics


def noise_like(x_BT, seed):
    return torch.randn(x_BT.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def per_token_grads(model, batch):
    """grad logp_{i,t} of every response token, one autograd.grad call each: the slow, obvious reference."""
    logp_BT = sequence_logprobs(model, batch)
    params = list(model.parameters())
    grads = {}
    for i, t in batch.response_mask_BT.nonzero().tolist():
        parts = torch.autograd.grad(logp_BT[i, t], params, retain_graph=True, allow_unused=True)
        grads[(i, t)] = torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, parts)])
    return logp_BT.detach(), grads


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["grpo", "cispo", "gspo"])
def test_on_policy_gradient_equals_reinforce(model, name, mode):
    reference, _ = on_policy_grads(model, make_algo("reinforce", loss_agg=mode), model_batch())
    grads, metrics = on_policy_grads(model, make_algo(name, loss_agg=mode), model_batch())
    assert reference.norm() > 1e-3
    assert torch.allclose(grads, reference, atol=1e-12, rtol=0)
    assert metrics["algo/clip_frac_low"] == 0.0 and metrics["algo/clip_frac_high"] == 0.0
    assert metrics["algo/ratio_mean"] == pytest.approx(1.0, abs=1e-12)
    assert metrics["algo/ppo_kl"] == pytest.approx(0.0, abs=1e-12)


def test_cispo_gradient_is_clipped_weight_times_logp_gradient(model):
    batch = model_batch().select(slice(0, 3))
    logp_BT, token_grads = per_token_grads(model, batch)
    batch.old_logp_BT = logp_BT + 0.4 * noise_like(logp_BT, seed=2)
    ratio_BT = (logp_BT - batch.old_logp_BT).exp()
    num_tokens = float(batch.response_mask_BT.sum())
    weight_BT = ratio_BT.clamp(0.8, 1.2)
    expected = sum(-float(weight_BT[i, t]) * ADVANTAGES[i] / num_tokens * grad for (i, t), grad in token_grads.items())
    response_ratios = ratio_BT[batch.response_mask_BT.bool()]
    assert bool((response_ratios < 0.8).any()) and bool((response_ratios > 1.2).any())
    got, _ = accumulated_grads(model, make_algo("cispo", loss_agg="token-mean", clip_eps_low=0.2), batch)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("eps_low, eps_high, num_clipped", [(0.9, 10.0, 0), (3e-4, 4e-4, 3)])
def test_gspo_gradient_is_sequence_ratio_weighted_reinforce(model, eps_low, eps_high, num_clipped):
    batch = model_batch().select(slice(0, 4))
    logp_BT, token_grads = per_token_grads(model, batch)
    batch.old_logp_BT = logp_BT + 0.2 * noise_like(logp_BT, seed=3)
    mask_BT = batch.response_mask_BT
    lengths = [float(n) for n in mask_BT.sum(-1)]
    seq_ratios = [float((((logp_BT - batch.old_logp_BT) * mask_BT)[i].sum() / lengths[i]).exp()) for i in range(4)]
    clipped = [(a > 0 and s > 1 + eps_high) or (a < 0 and s < 1 - eps_low) for a, s in zip(ADVANTAGES, seq_ratios)]
    scale = [0.0 if clipped[i] else -ADVANTAGES[i] * seq_ratios[i] / (4 * lengths[i]) for i in range(4)]
    expected = sum(scale[i] * grad for (i, t), grad in token_grads.items())
    assert sum(clipped) == num_clipped
    assert min(abs(s - 1) for s in seq_ratios) > 1e-2
    algo = make_algo("gspo", loss_agg="seq-mean-token-mean", gspo_clip_eps_low=eps_low, gspo_clip_eps_high=eps_high)
    got, _ = accumulated_grads(model, algo, batch)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(LOSS_FIELDS))
def test_microbatch_split_invariance(model, name, mode):
    algo = make_algo(name, loss_agg=mode, kl_coef=0.1, **LOSS_FIELDS[name])
    batch = with_old_and_ref(model, model_batch())
    (whole, metrics), *splits = [accumulated_grads(model, algo, batch, k) for k in (1, 2, 4)]
    assert whole.norm() > 1e-3
    if name != "reinforce":
        assert metrics[0]["algo/clip_frac_low"] + metrics[0]["algo/clip_frac_high"] > 0
    for grads, _ in splits:
        assert torch.allclose(grads, whole, atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(LOSS_FIELDS))
def test_left_and_right_padding_give_the_same_gradient(model, name, mode):
    algo = make_algo(name, loss_agg=mode, kl_coef=0.1, **LOSS_FIELDS[name])
    right, _ = accumulated_grads(model, algo, with_old_and_ref(model, model_batch("right")), 2)
    left, _ = accumulated_grads(model, algo, with_old_and_ref(model, model_batch("left")), 2)
    assert right.norm() > 1e-3
    assert torch.allclose(left, right, atol=1e-10, rtol=0)
