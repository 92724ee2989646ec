"""Shared fixtures: every test works in a temporary folder with its own MLflow store; the tiny model is
built once per session into a shared cache (nothing is downloaded)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from isopo_bench.config import OptimConfig, RunConfig, TrackingConfig, replace
from isopo_bench.presets import run_preset


@pytest.fixture(scope="session", autouse=True)
def _shared_model_cache(tmp_path_factory):
    cache = os.environ.get("ISOPO_BENCH_CACHE") or str(tmp_path_factory.mktemp("isopo_cache"))
    os.environ["ISOPO_BENCH_CACHE"] = cache
    os.environ.setdefault("ISOPO_BENCH_GSM8K_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"))
    torch.set_num_threads(1)
    yield


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working folder with an embedded MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


_TEMPLATE_DB: list[Path] = []


def fresh_mlflow_uri(folder: Path) -> str:
    """An empty SQLite MLflow store in `folder`. Creating the schema takes seconds, so it is done once
    per session and the empty database file is copied."""
    target = folder / "mlflow.db"
    if not target.exists():
        if not _TEMPLATE_DB:
            from mlflow.tracking import MlflowClient

            template = Path(os.environ["ISOPO_BENCH_CACHE"]) / "empty-mlflow.db"
            if not template.exists():
                MlflowClient(f"sqlite:///{template}").search_experiments()
            _TEMPLATE_DB.append(template)
        shutil.copy(_TEMPLATE_DB[0], target)
    return f"sqlite:///{target}"


def smoke_config(tmp_path: Path, **changes) -> RunConfig:
    """The tiny-smoke preset writing into tmp_path (its own MLflow store and run folders)."""
    cfg = replace(
        run_preset("tiny-smoke"),
        tracking=TrackingConfig(uri=fresh_mlflow_uri(tmp_path), output_dir=str(tmp_path / "runs"), checkpoint_every=2),
        optim=OptimConfig(steps=3, lr=1e-3, microbatch_size=4),
    )
    return replace(cfg, **changes)


def kill_after_checkpoint(proc, runs_dir: Path, step: int, group: bool = False, timeout: float = 300) -> int:
    """SIGKILL `proc` (its whole process group with group=True: torchrun and its ranks) as soon as a run
    folder under `runs_dir` holds a checkpoint of at least `step`; returns the step that checkpoint holds."""
    import json
    import signal
    import time

    state_files = lambda: list(runs_dir.glob("*/checkpoint/trainer_state.json"))  # noqa: E731
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        files = state_files()
        if files and json.loads(files[0].read_text())["step"] >= step:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; give it more steps"
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return json.loads(state_files()[0].read_text())["step"]
