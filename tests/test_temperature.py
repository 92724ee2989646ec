"""Training at the rollout temperature: log-probs of logits / T. Temperature 1 is bit-identical to the
unscaled computation, and the HF engine's sampler log-probs at T = 0.7 agree with the trainer's at T = 0.7
as closely as at T = 1 (the mismatch metric stays at its T = 1 level), while the former untempered
trainer log-probs are far off."""

import pytest
import torch

from isopo_bench import metric_names as M
from isopo_bench.batch import TrainBatch, pad_and_stack, sequence_logprobs
from isopo_bench.config import ModelConfig, RunConfig, RolloutConfig
from isopo_bench.models import build_char_tokenizer, encode_prompt, tiny_qwen3_config
from isopo_bench.rollout.api import SamplingSettings
from isopo_bench.rollout.hf_engine import HFEngine
from isopo_bench.rollout.mismatch import mismatch_metrics


@pytest.fixture(scope="module")
def setup():
    from transformers import Qwen3ForCausalLM

    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(tiny_qwen3_config(ModelConfig(), len(tokenizer), tokenizer.eos_token_id,
                                               tokenizer.pad_token_id)).eval()
    engine = HFEngine(RunConfig(rollout=RolloutConfig(generation_batch_size=16)), "", tokenizer, model)
    prompts = [encode_prompt(tokenizer, p) for p in ("12+7=", "3*4=", "99-1=")]
    return tokenizer, model, engine, prompts


def batch_of(tokenizer, rollout) -> TrainBatch:
    ids, attention, response, sampler = pad_and_stack(rollout.prompt_ids, rollout.completion_ids,
                                                      tokenizer.pad_token_id, "right", rollout.sampler_logps)
    return TrainBatch(ids, attention, response, torch.zeros(len(ids)), sampler_logp_BT=sampler)


def test_temperature_one_is_bit_identical(setup):
    tokenizer, model, engine, prompts = setup
    batch = batch_of(tokenizer, engine.generate(prompts, SamplingSettings(n=2, temperature=1.0, max_new_tokens=8, seed=1)))
    with torch.no_grad():
        default, ent_default = sequence_logprobs(model, batch, with_entropy=True)
        at_one, ent_one = sequence_logprobs(model, batch, with_entropy=True, temperature=1.0)
    assert torch.equal(default, at_one) and torch.equal(ent_default, ent_one)


def test_tempered_logprobs_are_log_softmax_of_scaled_logits(setup):
    tokenizer, model, engine, prompts = setup
    batch = batch_of(tokenizer, engine.generate(prompts, SamplingSettings(n=1, temperature=1.0, max_new_tokens=6, seed=2)))
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids_BT, attention_mask=batch.attention_mask_BT).logits[:, :-1] / 0.7
        expected = torch.log_softmax(logits, -1).gather(-1, batch.input_ids_BT[:, 1:, None]).squeeze(-1)
        got = sequence_logprobs(model, batch, temperature=0.7)[:, 1:]
    mask = batch.response_mask_BT[:, 1:].bool()
    assert torch.allclose(got[mask], expected[mask], atol=1e-5, rtol=0)


def test_sampler_vs_trainer_mismatch_at_temperature_07_is_at_the_temperature_1_level(setup):
    tokenizer, model, engine, prompts = setup
    levels = {}
    for T in (1.0, 0.7):
        batch = batch_of(tokenizer, engine.generate(prompts, SamplingSettings(n=4, temperature=T, max_new_tokens=12, seed=3)))
        with torch.no_grad():
            trainer = sequence_logprobs(model, batch, temperature=T)
            untempered = sequence_logprobs(model, batch)
        levels[T] = mismatch_metrics(batch.sampler_logp_BT, trainer, batch.response_mask_BT)[M.MISMATCH_MAX_ABS]
        if T != 1.0:
            levels["untempered"] = mismatch_metrics(batch.sampler_logp_BT, untempered, batch.response_mask_BT)[M.MISMATCH_MAX_ABS]
    # float32 rounding of two forward passes (KV-cached generation vs one full forward)
    assert levels[1.0] < 1e-4 and levels[0.7] < 1e-4
    assert levels[0.7] < 10 * max(levels[1.0], 1e-6)
    assert levels["untempered"] > 1e-2  # what a trainer on unscaled logits reported


def test_greedy_rollouts_train_on_unscaled_logits():
    from isopo_bench.batch import logprob_temperature

    assert logprob_temperature(0.0) == 1.0 and logprob_temperature(0.7) == 0.7 and logprob_temperature(1.0) == 1.0
