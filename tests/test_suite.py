"""The suite runner: the grids, resume after SIGKILL without duplicated runs, parallel = serial, failed
runs recorded and not redone, and the paper suite's dry run on a CPU."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from isopo_bench import leaderboard as lb
from isopo_bench import metric_names as M
from isopo_bench.config import replace
from isopo_bench.errors import UnknownNameError
from isopo_bench.plugins import ADVANTAGES
from isopo_bench.algorithm_api import AlgorithmPreset
from isopo_bench.algorithms.reinforce import Reinforce
from isopo_bench.suite import SuiteOptions, main, print_report, run_suite
from isopo_bench.suites import compute_estimate, evaluations_per_run, get_suite

# Columns that depend on wall-clock time (the machine's load) or on when the code was committed.
TIME_COLUMNS = {M.LB_BUDGET_S, M.LB_ACC_AT_BUDGET, M.LB_UPDATE_S, M.LB_STEP_S, M.LB_OVERHEAD, M.LB_COMMITS}


def options(root, store: str, workers: int = 1) -> SuiteOptions:
    return SuiteOptions(tracking_uri=f"sqlite:///{root}/{store}.db", output_dir=str(root / store), workers=workers)


def test_quick_suite_grid():
    suite = get_suite("quick")
    configs = suite.configs()
    assert len(configs) == 5 * 3 * 3 and len({c.config_hash() for c in configs}) == 45
    assert {c.tracking.suite for c in configs} == {"quick@v3"}
    assert max(suite.lrs) / min(suite.lrs) == pytest.approx(10.0) and suite.warm_start
    assert dict(suite.warm_start_settings) == {"direct_answer_fraction": 0.6}
    assert [c.seed for c in configs[:15]] == [0] * 15  # seed-major: a partial suite has whole seeds
    assert configs[0].task.eval_items >= 500 and configs[0].threads == 1
    for cfg in configs:  # everything but the compared axes is shared
        back = replace(cfg, algorithm=suite.base.algorithm, seed=suite.base.seed,
                       **{"optim.lr": suite.base.optim.lr, "tracking.run_name": "", "tracking.suite": "",
                          "tracking.algorithm_label": ""})
        assert back == suite.base
    assert get_suite("quick@v3").label == "quick@v3"
    assert {c.tracking.algorithm_label for c in configs} == set(suite.algorithms)  # the leaderboard's names
    with pytest.raises(UnknownNameError, match="version 3"):
        get_suite("quick@v7")


def test_cpu_suite_grid_crosses_seven_algorithms_with_two_optimizers():
    suite = get_suite("cpu")
    configs = suite.configs()
    assert len(configs) == (7 * (4 + 3) + 2) * 3 == len({c.config_hash() for c in configs})
    assert {"dapo", "drgrpo", "isopo", "isopo-interacting", "reinforce", "grpo", "cispo"} == set(suite.algorithms)
    lrs = {opt: sorted({c.optim.lr for c in configs if c.optim.optimizer == opt}) for opt in ("adamw", "sgd")}
    assert lrs == {"adamw": [5e-6, 1.2e-5, 3e-5, 7.5e-5], "sgd": [2.4e-4, 6e-4, 1.5e-3, 4e-3, 1e-2]}
    assert [c.seed for c in configs[:51]] == [0] * 51  # seed-major: an interrupted suite holds whole seeds
    quick = get_suite("quick")
    assert suite.base == quick.base and suite.warm_start_settings == quick.warm_start_settings  # one tier


GSM8K = Path(os.environ.get("ISOPO_BENCH_GSM8K_DIR") or Path(__file__).resolve().parents[2] / "shared/data/gsm8k")


@pytest.mark.skipif(not (GSM8K / "test.jsonl").exists(), reason="shared GSM8K files not present (the dry run reads them)")
def test_paper_dry_run_validates_and_estimates(workdir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # restored afterwards; the dry run sets it for itself
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert main(["paper", "--dry-run", "--tracking-uri", f"sqlite:///{workdir}/m.db"]) == 0
    out = capsys.readouterr().out
    assert "run count: 5; valid" in out and "7473 train / 1319 test items" in out
    assert sum(line.strip().startswith(("1.", "2.", "3.", "4.", "5.")) for line in out.splitlines()) == 5
    assert "GPU-hours" in out and not (workdir / "m.db").exists()  # a dry run writes nothing
    # one seed: 2.801585 sqrt(q / 1319) for q = 0.1, 0.2, 0.3, and no seed variance
    assert "minimum detectable difference in accuracy: q = 0.1: 0.024, q = 0.2: 0.034, q = 0.3: 0.042" in out
    assert "seed-to-seed variance is NOT included" in out and "with 1 seed it cannot be estimated" in out
    suite = get_suite("paper")
    grpo = suite.configs()[1]
    assert grpo.algorithm.name == "grpo" and evaluations_per_run(grpo) == 1 + 20 + 1  # start, every 5, step 102
    est, n = suite.estimate, 0.6e9
    seqs = 102 * 128 * 8
    e = compute_estimate(grpo, est, None, needs_old_logp=True)
    assert e["generated_tokens"] == seqs * 400 + 22 * 1319 * 400
    assert e["train_flops"] == pytest.approx(seqs * 530 * 8 * n + 2 * n * seqs * 530)
    assert e["device_hours"] == pytest.approx((e["generated_tokens"] / 10_000 + e["train_flops"] / 150e12) / 3600)


def seeded_noise(rewards_PG: torch.Tensor) -> torch.Tensor:
    """The random tiny model earns no reward; noise advantages give updates that diverge at lr 1e30."""
    return torch.randn(rewards_PG.shape, generator=torch.Generator().manual_seed(7))


def test_failed_run_is_recorded_counted_and_not_redone(workdir, capsys, monkeypatch):
    if "suite-test-noise" not in ADVANTAGES.names():
        ADVANTAGES.register("suite-test-noise")(seeded_noise)
    # A preset declared by the plug-in class, exactly where a plug-in declares its own.
    presets = dict(Reinforce.presets, **{"reinforce-noise": AlgorithmPreset(advantage="suite-test-noise")})
    monkeypatch.setattr(Reinforce, "presets", presets)
    smoke = get_suite("smoke")
    suite = dataclasses.replace(smoke, name="smoke-fail", algorithms=("reinforce-noise",), seeds=(0,), lrs=(1e-3, 1e30),
                                base=replace(smoke.base, **{"optim.grad_clip": 0.0, "optim.steps": 2}))
    opts = options(workdir, "fail")
    outcomes = run_suite(suite, opts)
    assert {o.cfg.optim.lr: o.status for o in outcomes} == {1e-3: "FINISHED", 1e30: "FAILED"}
    assert "NonFiniteError" in next(o.error for o in outcomes if o.status == "FAILED")
    assert print_report(suite, opts, outcomes, 1.0) == 1 and "1 failed" in capsys.readouterr().out
    runs = lb.load_runs(opts.tracking_uri, suite=suite.label)
    assert sorted(runs[M.LB_STATUS]) == ["FAILED", "FINISHED"]
    row = lb.leaderboard(runs).iloc[0]
    finished_acc = runs[runs[M.LB_STATUS] == "FINISHED"][M.LB_FINAL_ACC].item()
    assert (row[M.LB_N_FINISHED], row[M.LB_N_FAILED], row[M.LB_LRS_FINISHED]) == (1, 1, "1/2")
    assert row[M.LB_ACC_MEAN] == finished_acc and row[M.LB_BEST_LR] == 1e-3
    # A second invocation settles both runs from the ledger: nothing is trained or duplicated.
    again = run_suite(suite, opts)
    assert sorted(o.status for o in again) == ["SKIPPED-FAILED", "SKIPPED-FINISHED"]
    assert len(lb.load_runs(opts.tracking_uri)) == 2


def run_records(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name("isopo-bench").experiment_id])


def half_done(runs_dir) -> bool:
    """One run finished and another checkpointed mid-way (step 2 of 4) but not finished."""
    finished = list(runs_dir.glob("*/summary.json"))
    states = [p for p in runs_dir.glob("*/checkpoint/trainer_state.json") if not (p.parents[1] / "summary.json").exists()]
    return bool(finished) and any(json.loads(p.read_text())["step"] >= 2 for p in states)


def kill_when_half_done(args: list[str], runs_dir, log_path) -> None:
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "isopo_bench.cli", *args], stdout=log, stderr=log,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and not half_done(runs_dir):
            time.sleep(0.02)
        assert proc.poll() is None, "the suite ended before it could be killed mid-run"
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_sigkill_resume_then_same_leaderboard_as_uninterrupted_parallel_run(workdir):
    killed = options(workdir, "killed")
    args = ["suite", "smoke", "--tracking-uri", killed.tracking_uri, "--output-dir", killed.output_dir]
    kill_when_half_done(args, workdir / "killed", workdir / "killed.log")
    run_ids = {d.name: json.loads((d / "run_info.json").read_text())["run_id"]
               for d in (workdir / "killed").iterdir() if (d / "run_info.json").exists()}
    unfinished = [name for name in run_ids if not (workdir / "killed" / name / "summary.json").exists()]
    assert 2 <= len(run_ids) < 4 and len(unfinished) == 1

    assert subprocess.run([sys.executable, "-m", "isopo_bench.cli", *args], capture_output=True).returncode == 0
    records = run_records(killed.tracking_uri)
    assert len(records) == 4 and len({r.data.tags[M.TAG_CONFIG_HASH] for r in records}) == 4
    assert {r.info.status for r in records} == {"FINISHED"}
    for name, run_id in run_ids.items():  # the half-done run continued in its own MLflow run
        assert json.loads((workdir / "killed" / name / "run_info.json").read_text())["run_id"] == run_id
    client = MlflowClient(killed.tracking_uri)
    for r in records:
        assert [m.step for m in client.get_metric_history(r.info.run_id, M.REWARD_MEAN)] == [1, 2, 3, 4]

    straight = options(workdir, "straight", workers=2)
    assert {o.status for o in run_suite(get_suite("smoke"), straight)} == {"FINISHED"}
    a = lb.leaderboard(lb.load_runs(killed.tracking_uri))
    b = lb.leaderboard(lb.load_runs(straight.tracking_uri))
    columns = [c for c in lb.BOARD_COLUMNS if c not in TIME_COLUMNS]
    pd.testing.assert_frame_equal(a[columns], b[columns])  # NaN (no pairs for the baseline) equals NaN
    assert len(a) == 2 and a[M.LB_N_FINISHED].tolist() == [2, 2]
    # Beyond the (all-zero) accuracies of the random model: every deterministic metric of every step.
    for metric in (M.ENTROPY, M.ROLLOUT_TOKENS, M.LOSS, M.EVAL_MEAN_LEN):
        histories = []
        for opts in (killed, straight):
            runs = lb.load_runs(opts.tracking_uri)
            h = lb.load_metric_history(opts.tracking_uri, runs[M.LB_RUN_ID].tolist(), metric)
            h = h.merge(runs[[M.LB_RUN_ID, M.LB_CONFIG_HASH]], on=M.LB_RUN_ID)
            histories.append(sorted(zip(h[M.LB_CONFIG_HASH], h["step"], h["value"])))
        assert histories[0] == histories[1] and len(histories[0]) >= 4 * 3, metric


def test_power_lines_of_a_three_seed_suite_by_hand():
    from isopo_bench.suites import power_lines

    lines = "\n".join(power_lines(3, 512))
    # 2.801585 sqrt(q / (3 x 512)); the t-test factor (4.302653 + 1.060660) / sqrt(3) = 3.0965
    assert "q = 0.1: 0.023, q = 0.2: 0.032, q = 0.3: 0.039" in lines
    assert "(t_0.975 + t_0.8) / sqrt(n) = 3.10 x the seed sd" in lines and "1 seed" not in lines
