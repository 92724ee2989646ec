"""pi_old from the sampler (algorithm.old_logp_source=sampler, verl's bypass mode): equal to the pi_old
forward with the HF engine at temperature 1 (to rounding), the first-step check refuses a deliberately
mismatched sampler and warns between its thresholds, the saved forward is saved, bad settings fail early."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch

from conftest import smoke_config
from isopo_bench.algorithm_api import StepContext
from isopo_bench.batch import BatchTotals, TrainBatch, pad_and_stack, sequence_logprobs
from isopo_bench.config import AlgorithmConfig, EvalConfig, ModelConfig, OptimConfig, RolloutConfig, RunConfig, replace
from isopo_bench.errors import ConfigError
from isopo_bench.models import build_char_tokenizer, encode_prompt, tiny_qwen3_config
from isopo_bench.plugin_settings import build_algorithm
from isopo_bench.rollout.api import SamplingSettings
from isopo_bench.rollout.hf_engine import HFEngine
from isopo_bench.rollout_correction import BypassGuard, CorrectionConfig, SamplerMismatchError, check_bypass
from isopo_bench.step_driver import step_gradients


# ------------------------------------------------------------------ the check itself, by hand
def test_check_bypass_thresholds():
    cfg = CorrectionConfig(bypass_warn=0.02, bypass_refuse=0.1)
    assert check_bypass(0.0, cfg, 1) is None
    assert check_bypass(0.02, cfg, 1) is None  # at the threshold: not above it
    warning = check_bypass(0.05, cfg, 3)
    assert "0.05" in warning and "bypass_warn = 0.02" in warning and "step 3" in warning
    assert check_bypass(0.1, cfg, 1) is not None  # warned, not refused
    with pytest.raises(SamplerMismatchError) as exc:
        check_bypass(0.25, cfg, 1)
    msg = str(exc.value)
    assert "0.25" in msg and "correction.bypass_refuse = 0.1" in msg and "old-logp-source recompute" in msg
    with pytest.raises(SamplerMismatchError):
        check_bypass(math.nan, cfg, 1)  # an impossible sampler token
    assert check_bypass(1e6, CorrectionConfig(bypass_refuse=math.inf), 1) is not None


def test_guard_reads_own_rows_sums_ranks_and_runs_once(caplog):
    """Rows 0-1 are this rank's (row 2 is another rank's, unfilled: its 9.0 must not count); the other rank
    reports |diff| sum 0.3 over 2 tokens. Mean = (0.1 + 0.2 + 0.0 + 0.3) / (3 + 2) = 0.12: warned, not refused."""
    mask = torch.tensor([[0, 1, 1], [0, 1, 0], [0, 1, 1]], dtype=torch.float32)
    sampler = torch.tensor([[0, -1.0, -2.0], [0, -0.5, 5.0], [0, -1.0, -1.0]])
    trainer = torch.tensor([[0, -1.1, -1.8], [0, -0.5, 0.0], [0, 8.0, 0.0]])
    batch = TrainBatch(torch.zeros(3, 3, dtype=torch.long), torch.ones(3, 3), mask, torch.zeros(3), sampler_logp_BT=sampler)
    forwards, shares = [], []
    guard = BypassGuard(CorrectionConfig(bypass_warn=0.1, bypass_refuse=0.13),
                        lambda share: shares.append(share) or [share, (0.3, 2.0)])
    with caplog.at_level(logging.WARNING, logger="isopo_bench.rollout_correction"):
        guard.check(lambda: forwards.append(1) or trainer, batch, [slice(0, 2)], step=1)
        guard.check(lambda: forwards.append(1) or trainer, batch, [slice(0, 2)], step=2)
    assert forwards == [1] and shares[0][0] == pytest.approx(0.3) and shares[0][1] == 3.0
    assert any("by 0.12 per response token" in r.getMessage() for r in caplog.records)
    with pytest.raises(SamplerMismatchError):
        BypassGuard(CorrectionConfig(bypass_warn=0.1, bypass_refuse=0.11),
                    lambda share: [share, (0.3, 2.0)]).check(lambda: trainer, batch, [slice(0, 2)], step=1)


@pytest.mark.parametrize("changes,field", [
    ({"algorithm.name": "isopo", "algorithm.old_logp_source": "sampler"}, "algorithm.old_logp_source"),
    ({"algorithm.name": "reinforce", "algorithm.old_logp_source": "sampler"}, "algorithm.old_logp_source"),
    ({"algorithm.name": "grpo", "algorithm.old_logp_source": "sampled"}, "algorithm.old_logp_source"),
    ({"correction.bypass_warn": 0.2, "correction.bypass_refuse": 0.1}, "correction.bypass_warn / correction.bypass_refuse"),
    ({"correction.bypass_warn": 0.0}, "correction.bypass_warn / correction.bypass_refuse"),
])
def test_config_errors_name_the_field(changes, field):
    with pytest.raises(ConfigError) as exc:
        replace(RunConfig(), **changes).validate()
    assert exc.value.field == field


def test_guards_leave_the_config_hash():
    base = replace(RunConfig(), **{"algorithm.name": "grpo", "algorithm.old_logp_source": "sampler", "correction.mode": "tis"})
    moved = replace(base, **{"correction.bypass_warn": 0.5, "correction.bypass_refuse": 1.0})
    assert moved.config_hash() == base.config_hash()
    assert replace(base, **{"algorithm.old_logp_source": "recompute"}).config_hash() != base.config_hash()


# ------------------------------------------------------------------ same update as the pi_old forward
def test_sampler_logp_gives_the_pi_old_forward_update_at_temperature_1():
    from transformers import Qwen3ForCausalLM

    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(tiny_qwen3_config(ModelConfig(), len(tokenizer), tokenizer.eos_token_id,
                                               tokenizer.pad_token_id))
    engine = HFEngine(RunConfig(rollout=RolloutConfig(generation_batch_size=16)), "", tokenizer, model)
    prompts = [encode_prompt(tokenizer, p) for p in ("12+7=", "3*4=", "99-1=", "5+5=")]
    rollout = engine.generate(prompts, SamplingSettings(n=2, temperature=1.0, max_new_tokens=10, seed=4))
    model.train()
    ids, attention, response, sampler = pad_and_stack(rollout.prompt_ids, rollout.completion_ids,
                                                      tokenizer.pad_token_id, "right", rollout.sampler_logps)
    advantages = torch.randn(len(ids), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        recomputed = sequence_logprobs(model, TrainBatch(ids, attention, response, advantages))
    mask = response.bool()
    assert (recomputed[mask] - sampler[mask]).abs().max() < 1e-5  # the HF engine's float32 logits
    results = {}
    for name, old in (("forward", recomputed), ("sampler", sampler)):
        batch = TrainBatch(ids, attention, response, advantages, old_logp_BT=old, sampler_logp_BT=sampler)
        mbs = [batch.select(slice(0, 4)), batch.select(slice(4, 8))]
        algo = build_algorithm(AlgorithmConfig(name="grpo"))
        out = step_gradients(algo, model, StepContext(0, mbs, BatchTotals.of(batch, 2, 10)))
        results[name] = ([r.loss for r in out.microbatches], {n: p.grad.clone() for n, p in model.named_parameters()})
    (loss_f, grad_f), (loss_s, grad_s) = results["forward"], results["sampler"]
    assert loss_s == pytest.approx(loss_f, abs=1e-6)
    for n in grad_f:
        torch.testing.assert_close(grad_s[n], grad_f[n], rtol=1e-4, atol=1e-6, msg=n)


# ------------------------------------------------------------------ the trainer's first-step check
def bypass_config(workdir, **correction):
    cfg = smoke_config(workdir, optim=OptimConfig(steps=2, lr=1e-3, microbatch_size=4),
                       eval=EvalConfig(every=0, at_start=False, max_new_tokens=2))
    cfg = replace(cfg, **{"algorithm.name": "grpo", "algorithm.old_logp_source": "sampler", "rollout.max_new_tokens": 8})
    return replace(cfg, correction=dataclasses.replace(cfg.correction, **correction))


def mismatched_sampler(monkeypatch, temperature: float):
    """The HF engine samples (and reports log-probs) at `temperature` whatever the run asks for."""
    real = HFEngine.generate
    monkeypatch.setattr(HFEngine, "generate", lambda self, ids, s: real(self, ids, dataclasses.replace(s, temperature=temperature)))


def test_refuses_a_mismatched_sampler_before_any_update(workdir, monkeypatch):
    from isopo_bench import trainer as T

    mismatched_sampler(monkeypatch, 3.0)
    steps = []
    real_update = T.Trainer._update
    monkeypatch.setattr(T.Trainer, "_update", lambda self, *a: steps.append(1) or real_update(self, *a))
    with pytest.raises(SamplerMismatchError) as exc:
        T.train(bypass_config(workdir))
    assert "at step 1" in str(exc.value) and "correction.bypass_refuse = 0.1" in str(exc.value)
    assert steps == []


def test_warns_between_thresholds_and_runs_one_pi_old_forward(workdir, monkeypatch, caplog):
    from isopo_bench import trainer as T

    mismatched_sampler(monkeypatch, 3.0)
    forwards = []
    real_forward = T.Trainer._forward_logp
    monkeypatch.setattr(T.Trainer, "_forward_logp", lambda self, *a: forwards.append(1) or real_forward(self, *a))
    with caplog.at_level(logging.WARNING, logger="isopo_bench.rollout_correction"):
        result = T.train(bypass_config(workdir, bypass_warn=1e-3, bypass_refuse=math.inf))
    assert result.status == "FINISHED" and result.steps_done == 2
    assert any("above correction.bypass_warn = 0.001" in r.getMessage() for r in caplog.records)
    assert len(forwards) == 1  # the first step's check; no pi_old forward at step 2


def test_matched_sampler_passes_silently(workdir, caplog):
    from isopo_bench import trainer as T

    with caplog.at_level(logging.WARNING, logger="isopo_bench.rollout_correction"):
        assert T.train(bypass_config(workdir)).status == "FINISHED"
    assert not any("old_logp_source=sampler" in r.getMessage() for r in caplog.records)
