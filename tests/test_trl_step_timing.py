"""scripts/trl_step_timing.py without its timings: the TRL arm and the two isopo-bench arms are configured to
do the same work (docs/conventions.md's grpo row, the cpu-tier shape with two optimizer steps per rollout
batch), and two interleaved rounds at a toy shape really do it: the same starting weights, the same prompt
tokens, the same number of sequences, completions within the same length, one pi_old forward per rollout
batch (none in `sampler` after its first-step check), two AdamW steps per rollout batch on every arm. The
statistics are checked against hand-computed values. No timing is asserted."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl")
pytestmark = pytest.mark.peers

from conftest import fresh_mlflow_uri  # noqa: E402
from isopo_bench.models import encode_prompt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("trl_step_timing", ROOT / "scripts" / "trl_step_timing.py")
timing = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = timing  # dataclasses look their module up there
spec.loader.exec_module(timing)

TOY = timing.Shape(prompts=2, samples=2, max_new_tokens=4, microbatch=2)
ROUNDS = 2


def test_the_trl_config_is_the_conventions_grpo_row_at_the_cpu_tier_shape(tmp_path):
    cfg = timing.isopo_config(timing.Shape(), 12, str(tmp_path), "recompute")
    assert (cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt, cfg.rollout.max_new_tokens) == (8, 8, 40)
    assert (cfg.optim.microbatch_size, cfg.optim.minibatches_per_step, cfg.optim.epochs, cfg.optim.lr) == (8, 2, 1, 1e-4)
    assert (cfg.algorithm.name, cfg.algorithm.loss_agg, cfg.algorithm.kl_coef, cfg.model.dtype) == ("grpo", "token-mean", 0.0, "float32")
    assert not cfg.diagnostics.enabled
    args = timing.trl_args(cfg, str(tmp_path))
    # docs/conventions.md, row `grpo`: loss_type="dapo", epsilon=0.2, epsilon_high=0.2, delta=3.0; no KL
    assert (args.loss_type, args.epsilon, args.epsilon_high, args.delta, args.beta) == ("dapo", 0.2, 0.2, 3.0, 0.0)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.steps_per_generation) == (8, 4, 8)
    assert (args.generation_batch_size, args.num_generations, args.num_iterations) == (64, 8, 1)
    # 64 sequences per generation, 32 per optimizer step: 2 optimizer steps per rollout batch, as isopo-bench's
    assert args.steps_per_generation // args.gradient_accumulation_steps == 2
    # TRL computes pi_old only when the generation outlives one optimizer step (grpo_trainer.py, generate_every)
    assert args.gradient_accumulation_steps % (args.steps_per_generation * args.num_iterations) != 0
    assert (args.max_completion_length, args.temperature, args.top_p, args.top_k) == (40, 1.0, 1.0, 0)
    assert (args.learning_rate, args.weight_decay, args.adam_beta1, args.adam_beta2, args.max_grad_norm) == (1e-4, 0.01, 0.9, 0.999, 1.0)
    assert (str(args.lr_scheduler_type), args.warmup_steps, args.bf16, args.max_steps) == ("SchedulerType.CONSTANT", 0, False, 24)
    assert (args.scale_rewards, args.shuffle_dataset, args.save_strategy.value, args.report_to) == ("group", False, "no", [])


def test_shapes_that_cannot_match_are_refused(tmp_path):
    with pytest.raises(ValueError, match="on policy"):
        timing.isopo_config(timing.Shape(optimizer_steps=1), 4, str(tmp_path), "recompute")
    with pytest.raises(ValueError, match="whole groups"):
        timing.isopo_config(timing.Shape(prompts=3), 4, str(tmp_path), "recompute")


def record(arm, step, wall, cpu=None):
    cpu = wall if cpu is None else cpu
    phases = timing.with_other({"generate": (wall / 2, cpu / 2), "pi_old": (0.0, 0.0), "update": (wall / 4, cpu / 4)}, wall, cpu)
    return timing.StepRecord(arm, step, wall, cpu, phases, 1, [[1]], [step, step + 2])


def test_summary_against_hand_values():
    assert timing.with_other({"generate": (1.0, 0.9), "pi_old": (0.2, 0.2), "update": (3.0, 2.5)}, 5.0, 4.0)["other"] == \
        pytest.approx((0.8, 0.4))
    trl_walls = [9.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # step 1 is warm-up
    ours = [9.0, 0.9, 1.8, 2.1, 4.0, 4.5]
    records = [r for s in range(6) for r in (record("trl", s + 1, trl_walls[s]), record("recompute", s + 1, ours[s]),
                                             record("sampler", s + 1, trl_walls[s] / 2, cpu=1.0))]
    summary = timing.summarize(records, warmup=1)
    assert summary["trl"]["wall"] == pytest.approx((2.0, 3.0, 4.0))  # inclusive quartiles of 1..5
    assert summary["trl"]["steps"] == 5
    assert summary["recompute"]["wall_vs_trl"] == pytest.approx(2.1 / 3.0)
    assert summary["recompute"]["wall_vs_trl_paired"] == pytest.approx(0.9)  # ratios .9 .9 .7 1 .9
    assert summary["sampler"]["wall_vs_trl"] == pytest.approx(0.5)
    assert summary["sampler"]["cpu_vs_trl_paired"] == pytest.approx(statistics.median([1.0, 0.5, 1 / 3, 0.25, 0.2]))
    assert summary["trl"]["generate_wall"] == pytest.approx(1.5)
    assert summary["trl"]["other_wall"] == pytest.approx(0.75)
    assert summary["trl"]["mean_completion_len"] == pytest.approx(statistics.fmean([2, 4, 3, 5, 4, 6, 5, 7, 6, 8]))


def test_the_reward_is_the_tasks_scorer_and_the_dataset_follows_the_step_order(tmp_path):
    from isopo_bench.plugins import TASKS

    cfg = timing.isopo_config(TOY, 3, str(tmp_path), "recompute")
    task = TASKS.get(cfg.task.name)(cfg.task, cfg.seed)
    items, dataset = timing.trl_dataset(task, 3, 2)
    for step in range(3):
        expected = [task.prompt(item) for item in task.train_items(step, 2)]
        assert [row[0]["content"] for row in dataset["prompt"][2 * step : 2 * step + 2]] == expected
    reward = timing.task_reward(task, items)
    answer = items[3].answer
    completions = [[{"role": "assistant", "content": f"so\n#### {answer}"}], [{"role": "assistant", "content": f"#### {answer}1"}]]
    assert reward(completions, item=[3, 3]) == [1.0, 0.0]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trl_timing")
    fresh_mlflow_uri(out)  # the empty store the isopo-bench arms open (out/mlflow.db)
    arms = timing.build_arms(TOY, ROUNDS, str(out))
    start = {name: {k: v.clone() for k, v in arm.trainer.model.state_dict().items()} for name, arm in arms.items()}
    try:
        records = timing.run_interleaved(arms, ROUNDS)
    finally:
        for arm in arms.values():
            arm.close()
    return arms, start, records


def test_every_arm_starts_from_the_same_weights(toy_run):
    _, start, _ = toy_run
    reference = start["recompute"]
    for name in ("trl", "sampler"):
        assert start[name].keys() == reference.keys()
        assert all(torch.equal(start[name][k], reference[k]) for k in reference), name


def test_the_arms_generate_the_same_batches(toy_run):
    arms, _, records = toy_run
    assert [r.arm for r in records] == list(timing.ARMS) * ROUNDS
    t = arms["recompute"].trainer
    trl_trainer = arms["trl"].trainer
    assert trl_trainer.generation_config.max_new_tokens == t.cfg.rollout.max_new_tokens == 4
    assert trl_trainer.generation_config.temperature == t.cfg.rollout.temperature
    assert t.tokenizer.eos_token_id in trl_trainer.eos_token_ids
    for step in range(1, ROUNDS + 1):
        prompts = [encode_prompt(t.tokenizer, t.task.prompt(item)) for item in t.task.train_items(step - 1, TOY.prompts)]
        expected = [ids for ids in prompts for _ in range(TOY.samples)]  # prompt-major, G samples each
        for r in (r for r in records if r.step == step):
            assert r.prompt_rows == expected, r.arm
            assert len(r.completion_lengths) == TOY.prompts * TOY.samples
            assert 1 <= min(r.completion_lengths) and max(r.completion_lengths) <= TOY.max_new_tokens


def test_pi_old_forwards_and_optimizer_steps_per_rollout_batch(toy_run):
    arms, _, records = toy_run
    forwards = {arm: [r.pi_old_forwards for r in records if r.arm == arm] for arm in timing.ARMS}
    assert forwards == {"trl": [1, 1], "recompute": [1, 1], "sampler": [1, 0]}  # sampler: its step-1 check only
    for name, arm in arms.items():
        optimizer = getattr(arm.trainer.optimizer, "optimizer", arm.trainer.optimizer)  # TRL's is accelerate-wrapped
        assert isinstance(optimizer, torch.optim.AdamW) and not optimizer.defaults.get("fused"), name
        assert {float(s["step"]) for s in optimizer.state.values()} == {2.0 * ROUNDS}, name
        assert [g["lr"] for g in optimizer.param_groups] == [1e-4] * len(optimizer.param_groups), name
        assert optimizer.defaults["weight_decay"] == 0.01 and optimizer.defaults["betas"] == (0.9, 0.999), name
