"""The issue-14 settings end to end on the tiny model (one process): rollout correction metrics, the
REINFORCE++ estimators, pass@k / mean@k next to greedy accuracy in MLflow, and the pi_old pass at a
rollout temperature of 0.7 agreeing with the sampler's log-probs as at temperature 1."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import smoke_config
from isopo_bench import metric_names as M
from isopo_bench.config import EvalConfig, OptimConfig, replace
from isopo_bench.rollout.api import SamplingSettings
from isopo_bench.rollout.mismatch import mismatch_metrics
from isopo_bench.rollout_correction import CorrectionConfig
from isopo_bench.trainer import Trainer, train


@pytest.mark.slow
def test_correction_estimator_and_pass_at_k_are_logged(workdir):
    cfg = smoke_config(workdir, correction=CorrectionConfig("tis", "token", 2.0),
                       eval=EvalConfig(every=0, at_start=False, samples=4, pass_k=2),
                       optim=OptimConfig(steps=2, lr=1e-3, microbatch_size=8))
    cfg = replace(cfg, **{"algorithm.advantage": "reinforce++-baseline", "task.eval_items": 4})
    result = train(cfg)
    metrics = MlflowClient(cfg.tracking.uri).get_run(result.run_id).data.metrics
    assert metrics[M.CORRECTION_CLIP_FRAC] == 0.0  # the HF engine samples with the trainer's own weights
    assert metrics[M.CORRECTION_WEIGHT_MEAN] == pytest.approx(1.0, abs=1e-3)
    assert 0.0 <= metrics[M.EVAL_MEAN_AT_K] <= metrics[M.EVAL_PASS_AT_K] <= 1.0
    assert M.EVAL_ACCURACY in metrics


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_pi_old_pass_at_the_rollout_temperature_matches_the_sampler(workdir, temperature):
    cfg = smoke_config(workdir, optim=OptimConfig(steps=1, lr=1e-3, microbatch_size=8))
    cfg = replace(cfg, **{"rollout.temperature": temperature, "algorithm.name": "grpo"})
    trainer = Trainer(cfg)
    r = trainer.cfg.rollout
    prompts = [trainer._encode(trainer.task.prompt(item)) for item in trainer.task.train_items(0, r.prompts_per_step)]
    rollout = trainer.engine.generate(prompts, SamplingSettings(n=r.samples_per_prompt, temperature=temperature,
                                                                max_new_tokens=r.max_new_tokens, seed=7))
    batch = trainer._build_batch(rollout, torch.zeros(len(rollout.prompt_ids)))
    old = trainer._forward_logp(trainer.model, batch)
    m = mismatch_metrics(batch.sampler_logp_BT, old, batch.response_mask_BT)
    assert m[M.MISMATCH_MAX_ABS] < 1e-4  # float32 rounding, at either temperature
    trainer.engine.close()


@pytest.mark.parametrize("algorithm", ["reinforce", "isopo"])
def test_a_temperature_07_run_logs_the_mismatch_of_a_temperature_1_run(workdir, algorithm):
    """The training forward (through the step driver) differentiates the tempered distribution that was
    sampled, so the logged sampler/trainer mismatch of a T = 0.7 run is float32 rounding, as at T = 1."""
    logged = {}
    for temperature in (1.0, 0.7):
        cfg = smoke_config(workdir, optim=OptimConfig(steps=1, lr=1e-3, microbatch_size=8),
                           eval=EvalConfig(every=0, at_start=False))
        cfg = replace(cfg, **{"rollout.temperature": temperature, "algorithm.name": algorithm, "task.eval_items": 2,
                              "tracking.run_name": f"t{temperature}"})
        result = train(cfg)
        logged[temperature] = MlflowClient(cfg.tracking.uri).get_run(result.run_id).data.metrics[M.MISMATCH_MAX_ABS]
    assert logged[1.0] < 1e-4 and logged[0.7] < 1e-4, logged
