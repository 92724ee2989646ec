"""The suite's cluster backends: a Ray sweep on a loopback-only local instance, SIGKILLed mid-way and resumed;
SLURM through submitit's local executor (jobs outliving a killed driver are waited for, not resubmitted);
and the errors raised before anything runs."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient
from test_suite import half_done, options, run_records

from isopo_bench import metric_names as M
from isopo_bench.errors import IsopoBenchError
from isopo_bench.suite import SuiteOptions, main, run_suite
from isopo_bench.suites import get_suite

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}  # the last: IPv4 loopback on a dual-stack socket
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (extra `cluster`)")
needs_submitit = pytest.mark.skipif(importlib.util.find_spec("submitit") is None,
                                    reason="submitit not installed (extra `cluster`)")


@pytest.fixture
def tiny_model_cached():
    """Two first runs starting at once race to create the shared tiny-model cache folder (the loser's rename
    fails in isopo_bench.models.tiny_model_dir), so build it before a sweep starts runs in parallel."""
    from isopo_bench.models import model_source

    model_source(get_suite("smoke").base.model, seed=0)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "isopo_bench.cli", *args]


class ProcessTree:
    """Every process started under a driver, and every listening socket they opened, seen while it ran.
    Ray's agents outlive a SIGKILLed driver for a while, reparented away from it, so the set is collected
    as the sweep runs rather than at kill time."""

    def __init__(self, root_pid: int):
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(root_pid)
        self.procs: dict[int, object] = {}
        self.listening: set[tuple[str, int, str]] = set()
        self.names: set[str] = set()

    def snapshot(self) -> None:
        psutil = self.psutil
        try:
            for p in self.root.children(recursive=True):
                self.procs.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            return
        names = {}
        for pid, p in self.procs.items():
            try:
                names[pid] = p.name()
            except psutil.Error:
                pass
        self.names.update(names.values())
        for c in psutil.net_connections("inet"):
            if c.status == psutil.CONN_LISTEN and c.pid in names:
                self.listening.add((c.laddr.ip, c.laddr.port, names[c.pid]))

    def kill_all(self) -> list:
        """SIGKILL whatever still runs (psutil checks each pid still is the process seen); the survivors."""
        for p in self.procs.values():
            try:
                p.kill()
            except self.psutil.NoSuchProcess:
                pass
        _, alive = self.psutil.wait_procs(list(self.procs.values()), timeout=30)
        return alive


def kill_ray_sweep_when_half_done(args: list[str], runs_dir, log_path) -> ProcessTree:
    """Run the driver in its own process group, watch its processes' sockets, SIGKILL the group once one run
    finished and another is checkpointed mid-way, then every Ray process it started."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cli(*args), stdout=log, stderr=log, start_new_session=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        tree = ProcessTree(proc.pid)
        deadline, next_snapshot = time.time() + 600, 0.0
        try:
            while time.time() < deadline and proc.poll() is None and not half_done(runs_dir):
                if time.time() > next_snapshot:
                    tree.snapshot()
                    next_snapshot = time.time() + 1.0
                time.sleep(0.02)
            assert proc.poll() is None, "the sweep ended before it could be killed mid-run"
            tree.snapshot()  # the training workers are up now
        finally:
            with contextlib.suppress(ProcessLookupError):  # the group is gone when the driver ended first
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            survivors = tree.kill_all()
    assert not survivors, f"Ray processes survived SIGKILL: {survivors}"
    return tree


@pytest.mark.slow
@pytest.mark.ray
@needs_ray
def test_ray_sweep_listens_on_loopback_only_and_resumes_after_sigkill(workdir, tiny_model_cached):
    pytest.importorskip("psutil")
    opts = options(workdir, "ray")
    args = ["suite", "smoke", "--backend", "ray", "--tracking-uri", opts.tracking_uri, "--output-dir", opts.output_dir]
    tree = kill_ray_sweep_when_half_done(args, workdir / "ray", workdir / "killed.log")

    print("listening while the sweep ran:", sorted(tree.listening))  # shown with -s, or when the test fails
    names = {name for _, _, name in tree.listening}
    assert {"gcs_server", "raylet"} <= names, (names, (workdir / "killed.log").read_text()[-3000:])
    assert {ip for ip, _, _ in tree.listening} <= LOOPBACK, sorted(tree.listening)
    task_names = {f"ray::{c.tracking.run_name}-{c.config_hash()}" for c in get_suite("smoke").configs()}
    assert task_names & tree.names, f"no Ray task named RUN_NAME-CONFIGHASH among {tree.names}"

    run_dirs = [d for d in (workdir / "ray").iterdir() if (d / "run_info.json").exists()]
    run_ids = {d.name: json.loads((d / "run_info.json").read_text())["run_id"] for d in run_dirs}
    unfinished = [d for d in run_dirs if not (d / "summary.json").exists()]
    assert len(run_dirs) > len(unfinished) >= 1  # something finished, something is left to resume

    resumed = subprocess.run(cli(*args), capture_output=True, text=True, start_new_session=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert int(re.search(r"\((\d+) resumed\)", resumed.stderr).group(1)) >= len(unfinished)
    records = run_records(opts.tracking_uri)
    hashes = [r.data.tags[M.TAG_CONFIG_HASH] for r in records]
    assert len(records) == 4 and len(set(hashes)) == 4 and {r.info.status for r in records} == {"FINISHED"}
    for name, run_id in run_ids.items():  # killed runs continued in their own MLflow runs
        assert json.loads((workdir / "ray" / name / "run_info.json").read_text())["run_id"] == run_id
    client = MlflowClient(opts.tracking_uri)
    interrupted = {run_ids[d.name] for d in unfinished}
    for r in records:  # each step logged once, in the run's one MLflow record
        steps = [m.step for m in client.get_metric_history(r.info.run_id, M.REWARD_MEAN)]
        assert len(steps) == len(set(steps)) and max(steps) == 4 and set(steps) <= {1, 2, 3, 4}
        # Trainer.run writes a step's checkpoint before it logs the step's metrics: a kill in between (the
        # moment this test kills at) loses that step's metrics, as on the local backend.
        assert set(steps) >= ({3, 4} if r.info.run_id in interrupted else {1, 2, 3, 4})
    # Nothing left to do: a third invocation starts no Ray instance and changes nothing.
    assert main(args[1:]) == 0 and len(run_records(opts.tracking_uri)) == 4


# ------------------------------------------------------------------------------------------------
TWO_RUNS = "dataclasses.replace(get_suite('smoke'), name='smoke-slurm', seeds=(0,))"


def two_runs():
    return eval(TWO_RUNS, {"dataclasses": dataclasses, "get_suite": get_suite})  # noqa: S307 - a fixed literal


def slurm_options(workdir) -> SuiteOptions:
    return dataclasses.replace(options(workdir, "slurm"), backend="slurm", slurm_cluster="local", workers=2)


DRIVER = f"""
import dataclasses, sys
from isopo_bench.suite import SuiteOptions, run_suite
from isopo_bench.suites import get_suite
run_suite({TWO_RUNS}, SuiteOptions(tracking_uri=sys.argv[1], output_dir=sys.argv[2], backend="slurm",
                                  slurm_cluster="local", workers=2))
"""


@pytest.mark.slow
@needs_submitit
def test_slurm_jobs_outlive_a_killed_driver_are_awaited_then_skipped(workdir, caplog, tiny_model_cached):
    opts = slurm_options(workdir)
    folder = workdir / "slurm" / "slurm"
    registry = folder / "jobs.json"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, opts.tracking_uri, opts.output_dir])
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(json.loads(registry.read_text() or "{}")
                                                                  if registry.exists() else {}) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # the driver only: its jobs run on, as SLURM jobs would
    proc.wait()
    job_ids = json.loads(registry.read_text())
    assert len(job_ids) == 2

    with caplog.at_level(logging.INFO, logger="isopo_bench.suite_backends"):
        outcomes = run_suite(two_runs(), opts)
    assert {o.status for o in outcomes} <= {"FINISHED", "SKIPPED-FINISHED"}
    assert "still queued or running" in caplog.text  # waited for the earlier jobs instead of resubmitting
    assert json.loads(registry.read_text()) == job_ids and len(list(folder.glob("*_submitted.pkl"))) == 2
    records = run_records(opts.tracking_uri)
    assert len(records) == 2 and len({r.data.tags[M.TAG_CONFIG_HASH] for r in records}) == 2
    assert {r.info.status for r in records} == {"FINISHED"}

    again = run_suite(two_runs(), opts)
    assert [o.status for o in again] == ["SKIPPED-FINISHED"] * 2
    assert len(list(folder.glob("*_submitted.pkl"))) == 2 and len(run_records(opts.tracking_uri)) == 2


# ------------------------------------------------------------------------------------------------
def test_unknown_backend_is_refused_before_anything_runs(workdir):
    opts = dataclasses.replace(options(workdir, "x"), backend="kubernetes")
    with pytest.raises(IsopoBenchError, match="unknown suite backend `kubernetes`. Known backends: local, ray, slurm"):
        run_suite(get_suite("smoke"), opts)
    assert not (workdir / "x.db").exists()


@pytest.mark.parametrize(("backend", "package"), [("ray", "ray"), ("slurm", "submitit")])
def test_missing_package_names_the_pip_fix(workdir, monkeypatch, backend, package):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    opts = dataclasses.replace(options(workdir, "x"), backend=backend, slurm_cluster="local")
    with pytest.raises(IsopoBenchError, match=rf"needs the `{package}` package.*pip install 'isopo-bench\[cluster\]'"):
        run_suite(get_suite("smoke"), opts)
    assert not (workdir / "x.db").exists()


def test_cluster_settings_a_cluster_cannot_honour_are_refused(workdir, monkeypatch):
    relative = SuiteOptions(tracking_uri="sqlite:///mlflow.db", backend="ray", ray_address="ray://head:10001")
    with pytest.raises(IsopoBenchError, match="relative sqlite path"):
        run_suite(get_suite("smoke"), relative)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(IsopoBenchError, match="no `sbatch` on PATH"):
        run_suite(get_suite("smoke"), dataclasses.replace(options(workdir, "x"), backend="slurm"))
    assert not (workdir / "x.db").exists() and not (workdir / "mlflow.db").exists()
