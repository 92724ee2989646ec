"""Issue 13, item 1: one live writer per run folder, and one initialiser of a new MLflow store.

- the lock itself: refused while held (naming PID and host), free again after release or SIGKILL, a failed
  start leaves no folder;
- `--resume` (and a plain `train`) while the original process is alive: refused, no step duplicated;
- two identical `train` processes started together: one refused, one FINISHED record, no step duplicated;
- two suites on one store: each run trained once, no FAILED record;
- N processes creating one fresh store at once: all succeed, the store is readable.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from isopo_bench import cli
from isopo_bench import metric_names as M
from isopo_bench.run_lock import LOCK_FILE, RunLock, RunLockedError
from isopo_bench.suite_run import SKIPPED_LOCKED, _mark_failed

PY = sys.executable
ENV = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")


def test_lock_is_exclusive_names_its_holder_and_is_released(tmp_path):
    folder = tmp_path / "out" / "run"
    lock = RunLock.hold(folder)
    with pytest.raises(RunLockedError) as refused:
        RunLock.hold(folder)  # a second open file description, as in another process
    assert f"PID {os.getpid()}" in str(refused.value) and socket.gethostname() in str(refused.value)
    assert "Fix:" in str(refused.value)
    lock.release()
    # nothing but the lock was in the folder: it goes, with the parents this lock created
    assert not folder.exists() and not (tmp_path / "out").exists()
    again = RunLock.hold(folder)
    (folder / "run_info.json").write_text("{}")
    again.release()
    assert (folder / LOCK_FILE).exists() and (folder / "run_info.json").exists()  # a real run is kept


def test_lock_of_a_killed_holder_is_free_at_once(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([PY, "-c", textwrap.dedent(f"""
        import time
        from isopo_bench.run_lock import RunLock
        lock = RunLock.hold({str(folder)!r})
        print("held", flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"PID {holder.pid} on host"):
            RunLock.hold(folder)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    RunLock.hold(folder).release()  # the kernel released it: no stale lock after a crash


def test_suite_never_marks_failed_a_run_another_process_holds(tmp_path):
    """suite_backends' mark-failed path: a RUNNING record of a live holder is left alone."""
    from conftest import smoke_config
    from isopo_bench.run_store import RUN_INFO, run_dir_for

    cfg = smoke_config(tmp_path)
    client = MlflowClient(cfg.tracking.uri)
    run_id = client.create_run(client.create_experiment("isopo-bench")).info.run_id
    folder = run_dir_for(cfg)
    lock = RunLock.hold(folder)
    (folder / RUN_INFO).write_text(json.dumps({"run_id": run_id, "tracking_uri": cfg.tracking.uri}))
    _mark_failed(cfg, "RunLockedError: held")
    assert client.get_run(run_id).info.status == "RUNNING"
    lock.release()
    _mark_failed(cfg, "ValueError: boom")  # now this process may close it
    assert client.get_run(run_id).info.status == "FAILED"


# ------------------------------------------------------------------------------------------------
def train_args(root: Path, steps: int, experiment: str = "isopo-bench") -> list[str]:
    return ["train", "--preset", "tiny-smoke", "--optim.steps", str(steps), "--optim.lr", "1e-3", "--eval.every", "0",
            "--eval.no-at-start", "--task.eval-items", "2", "--tracking.checkpoint-every", "1", "--threads", "1",
            "--tracking.uri", f"sqlite:///{root}/mlflow.db", "--tracking.experiment", experiment,
            "--tracking.output-dir", str(root / "runs")]


def step_history(uri: str, experiment: str = "isopo-bench") -> list[tuple[str, list[int]]]:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return [(r.info.status, [m.step for m in client.get_metric_history(r.info.run_id, M.REWARD_MEAN)]) for r in runs]


def wait_for(predicate, proc, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not predicate():
        time.sleep(0.05)
    assert proc.poll() is None, "the first process ended before the check could run; give it more steps"


@pytest.mark.slow
def test_resume_or_train_while_the_run_is_alive_is_refused(workdir, capsys):
    proc = subprocess.Popen([PY, "-m", "isopo_bench.cli", *train_args(workdir, steps=200)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: list((workdir / "runs").glob("*/checkpoint/manifest.json")), proc)
        for extra in (["--resume"], []):
            rc = cli.main([*train_args(workdir, steps=200), *extra])
            err = capsys.readouterr().err
            assert rc == 1 and f"PID {proc.pid} on host {socket.gethostname()}" in err, err
            assert "Traceback" not in err
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [(status, steps)] = step_history(f"sqlite:///{workdir}/mlflow.db")
    assert status == "RUNNING" and steps == sorted(set(steps)), "no step may be logged twice"


@pytest.mark.slow
def test_two_identical_trains_started_together(workdir):
    """Also two processes creating one fresh store at once (no mlflow.db exists when they start)."""
    args = [PY, "-m", "isopo_bench.cli", *train_args(workdir, steps=4)]
    procs = [subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 1], [err[-2000:] for _, _, err in results]
    refused = next(err for rc, _, err in results if rc == 1)
    assert "Traceback" not in refused and ("being trained right now by PID" in refused or "--resume" in refused)
    [(status, steps)] = step_history(f"sqlite:///{workdir}/mlflow.db")
    assert status == "FINISHED" and steps == [1, 2, 3, 4]


STORE_CREATOR = """
import sys, time
from isopo_bench.store_init import ensure_store
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
ensure_store(sys.argv[1], "isopo-bench")
print("ok")
"""


@pytest.mark.slow
def test_processes_creating_one_fresh_store_at_once_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    start = str(time.time() + 8)  # every process has imported mlflow by then
    procs = [subprocess.Popen([PY, "-c", STORE_CREATOR, uri, start], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert all(rc == 0 for rc, _, _ in results), [err[-2000:] for _, _, err in results]
    client = MlflowClient(uri)
    assert [e.name for e in client.search_experiments()].count("isopo-bench") == 1
    client.create_run(client.get_experiment_by_name("isopo-bench").experiment_id)  # writable, schema complete
    assert not list(tmp_path.glob(".mlflow.db.init-*")), "no temporary store left behind"


def test_leaderboard_without_a_store_is_an_error_and_creates_nothing(workdir, capsys):
    rc = cli.main(["leaderboard"])
    err = capsys.readouterr().err
    assert rc == 1 and "mlflow.db" in err and "Fix:" in err and "Traceback" not in err
    assert not (workdir / "mlflow.db").exists()


@pytest.mark.slow
def test_two_suites_on_one_store_train_each_run_once(workdir):
    args = [PY, "-m", "isopo_bench.cli", "suite", "smoke", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db",
            "--output-dir", str(workdir / "runs")]
    procs = [subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outputs]
    assert "Traceback" not in "".join(outputs)
    assert any(SKIPPED_LOCKED in o or "IN PROGRESS ELSEWHERE" in o or "SKIPPED-FINISHED" in o for o in outputs)
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("isopo-bench").experiment_id])
    hashes = [r.data.tags[M.TAG_CONFIG_HASH] for r in runs]
    assert len(hashes) == len(set(hashes)) == 4, "each run of the suite has one record"
    assert {r.info.status for r in runs} == {"FINISHED"}, "no run may be marked FAILED"
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, M.REWARD_MEAN)]
        assert steps == [1, 2, 3, 4], (r.info.run_name, steps)


def test_every_backend_skips_a_run_another_process_holds(tmp_path):
    """Ray tasks and SLURM jobs run suite_run.execute too: a held run is reported, not trained or marked."""
    from conftest import smoke_config
    from isopo_bench.run_store import run_dir_for
    from isopo_bench.suite_run import execute

    cfg = smoke_config(tmp_path)
    lock = RunLock.hold(run_dir_for(cfg))
    try:
        outcome = execute(cfg, resume=False)
    finally:
        lock.release()
    assert outcome.status == SKIPPED_LOCKED and f"PID {os.getpid()}" in outcome.error
    client = MlflowClient(cfg.tracking.uri)
    assert client.get_experiment_by_name("isopo-bench") is None, "nothing was written to the store"
