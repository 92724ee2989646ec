"""A run killed with SIGKILL and resumed continues the same MLflow run with no duplicated or missing steps,
and its metrics equal those of an uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import kill_after_checkpoint
from isopo_bench import metric_names as M

# The random tiny model earns no reward, so the launcher adds an advantage estimator with seeded noise:
# the optimizer state then matters for resume, as it does in real runs.
LAUNCHER = """
import sys, torch
from isopo_bench.plugins import ADVANTAGES

@ADVANTAGES.register("seeded-noise")
def seeded_noise(rewards_PG):
    return torch.randn(rewards_PG.shape, generator=torch.Generator().manual_seed(7))

from isopo_bench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def train_args(root: Path, name: str) -> list[str]:
    return ["train", "--preset", "tiny-smoke", "--optim.steps", "8", "--optim.lr", "1e-3",
            "--algorithm.advantage", "seeded-noise", "--eval.every", "4", "--tracking.checkpoint-every", "2",
            "--tracking.uri", f"sqlite:///{root}/mlflow.db", "--tracking.experiment", name,
            "--tracking.output-dir", str(root / name), "--threads", "1"]


def histories(uri: str, experiment: str) -> tuple[str, dict]:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, "resume must continue the same MLflow run, not start another"
    run = runs[0]
    return run.info.status, {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)]
                             for k in run.data.metrics}


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(workdir):
    launcher = workdir / "launch.py"
    launcher.write_text(LAUNCHER)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(launcher), *train_args(workdir, "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = kill_after_checkpoint(proc, workdir / "killed", step=4)
    assert 4 <= killed_at < 8

    # Without --resume the existing run is refused rather than overwritten.
    refused = subprocess.run([sys.executable, str(launcher), *train_args(workdir, "killed")], env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "--resume" in refused.stderr

    subprocess.run([sys.executable, str(launcher), *train_args(workdir, "killed"), "--resume"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([sys.executable, str(launcher), *train_args(workdir, "straight")], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    uri = f"sqlite:///{workdir}/mlflow.db"
    status_k, resumed = histories(uri, "killed")
    status_s, straight = histories(uri, "straight")
    assert status_k == status_s == "FINISHED"
    assert set(resumed) == set(straight)
    for name, points in straight.items():
        steps = [s for s, _ in resumed[name]]
        assert len(steps) == len(set(steps)), f"{name} logged a step twice: {steps}"
        assert steps == [s for s, _ in points], name
        if not name.startswith(("time/", "time_cpu/", "time_thread/")) and name != M.ROLLOUT_TOKENS_PER_S:
            assert [v for _, v in resumed[name]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-9), name
    assert [s for s, _ in straight[M.REWARD_MEAN]] == list(range(1, 9))
    assert straight[M.GRAD_NORM][-1][1] > 0  # the noise advantages really drove updates
