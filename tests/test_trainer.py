"""The spine end to end on the tiny model: invariances, determinism, MLflow contents, NaN guard."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import smoke_config
from isopo_bench import metric_names as M
from isopo_bench.config import ModelConfig, OptimConfig, replace
from isopo_bench.errors import NonFiniteError
from isopo_bench.trainer import Trainer, train


def metric_histories(cfg, run_id) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(cfg.tracking.uri)
    keys = client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def deterministic(histories):
    return {k: v for k, v in histories.items() if not k.startswith(("time/", "time_cpu/", "time_thread/", "rollout/tokens_per_s"))}


def random_advantages(rewards_PG: torch.Tensor) -> torch.Tensor:
    """The random tiny model earns no reward; seeded random advantages give the update a real gradient."""
    generator = torch.Generator().manual_seed(123)
    return torch.randn(rewards_PG.shape, generator=generator, dtype=torch.float64)


def one_update(cfg) -> dict[str, torch.Tensor]:
    trainer = Trainer(cfg)
    trainer.advantage_fn = random_advantages
    trainer.algorithm.attach(trainer.model)
    trainer._train_step(1)
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_microbatch_split_does_not_change_the_update(workdir):
    base = smoke_config(workdir, model=ModelConfig(dtype="float64"))
    base = replace(base, **{"optim.weight_decay": 0.0})
    params = {}
    for mb in (16, 4, 1):
        cfg = replace(base, **{"optim.microbatch_size": mb, "tracking.output_dir": str(workdir / f"mb{mb}")})
        params[mb] = one_update(cfg)
    moved = max(float((params[16][n] - p0).abs().max()) for n, p0 in one_initial(base).items())
    assert moved > 1e-6, "the update must change the weights for the comparison to mean anything"
    for mb in (4, 1):
        for name, value in params[16].items():
            torch.testing.assert_close(params[mb][name], value, rtol=0, atol=1e-12)


def one_initial(cfg):
    trainer = Trainer(replace(cfg, **{"tracking.output_dir": cfg.tracking.output_dir + "-init"}))
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_padding_side_does_not_change_the_update(workdir):
    base = smoke_config(workdir, model=ModelConfig(dtype="float64"))
    right = one_update(replace(base, **{"optim.padding_side": "right", "tracking.output_dir": str(workdir / "r")}))
    left = one_update(replace(base, **{"optim.padding_side": "left", "tracking.output_dir": str(workdir / "l")}))
    for name, value in right.items():
        torch.testing.assert_close(left[name], value, rtol=0, atol=1e-10)


def test_same_seed_gives_identical_metrics(workdir):
    cfg_a = smoke_config(workdir)
    cfg_b = replace(cfg_a, **{"tracking.output_dir": str(workdir / "runs_b"), "tracking.experiment": "b"})
    a, b = train(cfg_a), train(cfg_b)
    hist_a, hist_b = deterministic(metric_histories(cfg_a, a.run_id)), deterministic(metric_histories(cfg_b, b.run_id))
    assert hist_a == hist_b
    assert len(hist_a[M.REWARD_MEAN]) == cfg_a.optim.steps
    # a different seed samples different completions
    cfg_c = replace(cfg_a, seed=1, **{"tracking.output_dir": str(workdir / "runs_c")})
    c = train(cfg_c)
    assert deterministic(metric_histories(cfg_c, c.run_id))[M.ROLLOUT_TOKENS] != hist_a[M.ROLLOUT_TOKENS] or \
        deterministic(metric_histories(cfg_c, c.run_id))[M.ENTROPY] != hist_a[M.ENTROPY]


def test_mlflow_record_is_complete(workdir):
    cfg = smoke_config(workdir)
    result = train(cfg)
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["optim.lr"] == str(cfg.optim.lr) and params["rollout.samples_per_prompt"] == "4"
    assert params["algorithm.name"] == "reinforce"
    assert tags[M.TAG_CONFIG_HASH] == cfg.config_hash() and tags[M.TAG_ALGORITHM] == "reinforce"
    assert tags[M.TAG_SEED] == "0" and tags[M.TAG_COMMIT] and tags[M.TAG_VERSION] == "0.1.0"
    history = metric_histories(cfg, result.run_id)
    steps = list(range(1, cfg.optim.steps + 1))
    for name in (M.REWARD_MEAN, M.LOSS, M.GRAD_NORM, M.ENTROPY, M.TIME_ROLLOUT, M.TIME_UPDATE, M.TIME_STEP, M.LR):
        assert [s for s, _ in history[name]] == steps, name
    assert [s for s, _ in history[M.EVAL_ACCURACY]] == [0, 2, 3]
    # elapsed time is the running sum of the per-step times
    elapsed = [v for _, v in history[M.TIME_ELAPSED]]
    per_step = [v for _, v in history[M.TIME_STEP]]
    assert elapsed == pytest.approx([sum(per_step[: i + 1]) for i in range(len(per_step))])
    assert history[M.FINAL_ACCURACY][-1][1] == history[M.EVAL_ACCURACY][-1][1]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.json", "summary.json", "samples"} <= artifacts
    local = client.download_artifacts(result.run_id, "summary.json", str(workdir))
    assert json.load(open(local))["steps"] == cfg.optim.steps
    samples = client.download_artifacts(result.run_id, "samples/eval_step_00003.json", str(workdir))
    rows = json.load(open(samples))
    assert len(rows) == 8 and all(r["reward"] in (0.0, 1.0) for r in rows)


def test_nan_guard_stops_and_keeps_last_checkpoint(workdir):
    cfg = smoke_config(workdir, optim=OptimConfig(steps=4, lr=1e30, microbatch_size=4, grad_clip=0.0))
    cfg = replace(cfg, **{"tracking.checkpoint_every": 1})
    trainer = Trainer(cfg)
    trainer.advantage_fn = random_advantages
    with pytest.raises(NonFiniteError, match="lower --optim.lr"):
        trainer.run()
    run = MlflowClient(cfg.tracking.uri).get_run(trainer.store.tracker.run_id)
    assert run.info.status == "FAILED"
    assert "NaN" in run.data.tags[M.TAG_STATUS_DETAIL] or "nan" in run.data.tags[M.TAG_STATUS_DETAIL]
    state = json.loads((trainer.store.run_dir / "checkpoint" / "trainer_state.json").read_text())
    assert 1 <= state["step"] < 4
    # the kept checkpoint holds finite weights
    from safetensors.torch import load_file

    weights = load_file(trainer.store.run_dir / "checkpoint" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
