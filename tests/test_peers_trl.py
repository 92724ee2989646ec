"""Peer parity with the real TRL (`pip install -e '.[peers]'`): isopo-bench's loss and parameter gradients
equal TRL GRPOTrainer's on identical batches, for every preset that claims parity (docs/conventions.md),
on and off policy, at temperature 1 and 0.7.

Both sides see the same tiny random Qwen3 (built from a transformers config, weights copied), the same
token batch (equal-length prompts, right-padded completions of different lengths), the same advantages
and, off policy, the same pi_old log-probs (a perturbed copy of the model at the same temperature). TRL's
side is its own `GRPOTrainer.compute_loss` on the inputs its `_generate_and_score_completions` would
produce (prompt/completion ids and masks, advantages, old_per_token_logps, num_items_in_batch), one
optimizer window (gradient_accumulation_steps = steps_per_generation = 1). Its fused LM head computes log-probs of
logits / temperature in chunks, so agreement is to float32 rounding, not bitwise.

Printed with -s: the max relative difference of loss and gradient per preset (docs/conventions.md's table).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

trl = pytest.importorskip("trl")
pytestmark = pytest.mark.peers

from isopo_bench.batch import BatchTotals, TrainBatch, sequence_logprobs  # noqa: E402
from isopo_bench.config import ModelConfig, RunConfig  # noqa: E402
from isopo_bench.models import build_char_tokenizer, tiny_qwen3_config  # noqa: E402
from isopo_bench.plugin_settings import build_algorithm  # noqa: E402

L_MAX = 8
"""Completion width = TRL's max_completion_length = isopo-bench's loss_agg_max_len."""
P, G, PROMPT_LEN = 2, 4, 5
LOSS_TOL = 2e-6
GRAD_TOL = 2e-6
"""Relative tolerances (float32: the fused, chunked LM head of TRL sums in another order)."""


def isopo_algorithm(preset: str, loss_agg: str | None = None):
    """The ONE place that builds an isopo-bench algorithm from a preset, optionally with another loss
    aggregation (after the settings refactor: the preset's AlgorithmSetup/Settings from the algorithm file)."""
    from isopo_bench.presets import algorithm_preset

    acfg = dataclasses.replace(algorithm_preset(preset), loss_agg_max_len=L_MAX)
    if loss_agg:
        acfg = dataclasses.replace(acfg, loss_agg=loss_agg)
    return build_algorithm(acfg)


# preset -> the TRL GRPOConfig fields that reproduce it (docs/conventions.md)
PEERS = {
    "reinforce": dict(loss_type="dapo"),  # on policy only: ratio 1, no clipping
    "grpo": dict(loss_type="dapo", epsilon=0.2, epsilon_high=0.2, delta=3.0),
    "dapo": dict(loss_type="dapo", epsilon=0.2, epsilon_high=0.28, delta=3.0),
    "drgrpo": dict(loss_type="dr_grpo", epsilon=0.2, epsilon_high=0.2, delta=3.0),
    "cispo": dict(loss_type="cispo", epsilon_high=1.2),  # TRL's cap is the ratio bound itself: 1 + 0.2
    "gspo": dict(loss_type="grpo", importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4),
}
SEQ_MEAN = ("grpo", dict(loss_type="grpo", epsilon=0.2, epsilon_high=0.2, delta=3.0))
"""The grpo preset with seq-mean-token-mean aggregation = TRL's `grpo` loss type."""

RESULTS: dict[tuple, tuple[float, float]] = {}


@pytest.fixture(scope="module")
def world():
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM(tiny_qwen3_config(ModelConfig(), len(tokenizer), tokenizer.eos_token_id,
                                               tokenizer.pad_token_id)).float()
    g = torch.Generator().manual_seed(1)
    B = P * G
    prompt = torch.randint(3, 90, (P, PROMPT_LEN), generator=g).repeat_interleave(G, dim=0)
    completion = torch.randint(3, 90, (B, L_MAX), generator=g)
    lengths = torch.tensor([8, 3, 5, 8, 2, 7, 4, 6])
    completion_mask = (torch.arange(L_MAX)[None] < lengths[:, None]).long()
    completion = completion.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    advantages = torch.tensor([1.2, -0.4, 0.7, -1.5, 0.3, -0.9, 1.1, -0.2])
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return dict(tokenizer=tokenizer, model=model, perturbed=perturbed, prompt=prompt, completion=completion,
                completion_mask=completion_mask, advantages=advantages)


def isopo_batch(w) -> TrainBatch:
    ids = torch.cat([w["prompt"], w["completion"]], dim=1)
    attention = torch.cat([torch.ones_like(w["prompt"]), w["completion_mask"]], dim=1)
    response = torch.cat([torch.zeros_like(w["prompt"]), w["completion_mask"]], dim=1).float()
    return TrainBatch(ids, attention, response, w["advantages"].clone(), group_ids_B=torch.arange(P * G) // G)


def flat_grad(model) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def isopo_side(w, preset, agg_override, temperature, old_BT):
    algo = isopo_algorithm(preset, agg_override)
    model = copy.deepcopy(w["model"]).train()
    batch = isopo_batch(w)
    batch.old_logp_BT = old_BT
    logp_BT = sequence_logprobs(model, batch, temperature=temperature)
    if old_BT is None:  # on policy: pi_old = the current policy, detached
        batch.old_logp_BT = logp_BT.detach()
    loss, _ = algo.loss(logp_BT, batch, BatchTotals.of(batch, 1, max_len=L_MAX))
    loss.backward()
    return float(loss.detach()), flat_grad(model)


def trl_side(w, trl_fields, temperature, old_BT, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model = copy.deepcopy(w["model"]).train()
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, per_device_train_batch_size=P * G,
                      num_generations=G, gradient_accumulation_steps=1, max_completion_length=L_MAX,
                      temperature=temperature, beta=0.0, save_strategy="no", bf16=False, **trl_fields)
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                          train_dataset=Dataset.from_dict({"prompt": ["x"] * (P * G)}), processing_class=w["tokenizer"])
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets for one optimizer window
    inputs = dict(prompt_ids=w["prompt"], prompt_mask=torch.ones_like(w["prompt"]), completion_ids=w["completion"],
                  completion_mask=w["completion_mask"], advantages=w["advantages"].clone(),
                  num_items_in_batch=w["completion_mask"].sum().float())
    if old_BT is not None:
        inputs["old_per_token_logps"] = old_BT[:, PROMPT_LEN:]
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    return float(loss.detach()), flat_grad(trainer.model)


def old_logps(w, temperature):
    batch = isopo_batch(w)
    with torch.no_grad():
        return sequence_logprobs(w["perturbed"], batch, temperature=temperature)


CASES = [(preset, None, fields) for preset, fields in PEERS.items()] + [(SEQ_MEAN[0], "seq-mean-token-mean", SEQ_MEAN[1])]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("policy", ["on", "off"])
@pytest.mark.parametrize("preset, agg, trl_fields", CASES, ids=[f"{p}-{a or 'preset'}" for p, a, _ in CASES])
def test_loss_and_gradients_match_trl(world, preset, agg, trl_fields, policy, temperature, tmp_path):
    if preset == "reinforce" and policy == "off":
        pytest.skip("TRL has no unclipped REINFORCE off policy (documented: reinforce is on-policy only)")
    old_BT = old_logps(world, temperature) if policy == "off" else None
    ours_loss, ours_grad = isopo_side(world, preset, agg, temperature, old_BT)
    trl_loss, trl_grad = trl_side(world, trl_fields, temperature, old_BT, tmp_path)
    loss_rel = abs(ours_loss - trl_loss) / max(abs(trl_loss), 1e-12)
    grad_rel = float((ours_grad - trl_grad).norm() / trl_grad.norm().clamp(min=1e-30))
    RESULTS[(preset, agg or "preset", policy, temperature)] = (loss_rel, grad_rel)
    print(f"PARITY {preset:10s} {agg or 'preset':20s} {policy:3s} T={temperature}: loss {ours_loss:+.6e} vs {trl_loss:+.6e} "
          f"rel {loss_rel:.1e}; grad |{float(trl_grad.norm()):.3e}| rel {grad_rel:.1e}")
    assert trl_grad.norm() > 0
    if preset != "reinforce":  # REINFORCE's loss is -A logp, TRL's -A r: equal gradients, different values
        assert loss_rel < LOSS_TOL
    assert grad_rel < GRAD_TOL
