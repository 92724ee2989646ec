"""One run of a suite, on whatever worker a backend gives it (isopo_bench.suite_backends): train it and turn
any failure into an Outcome, skip it when another invocation settled it after this one read the ledger or
another live process holds it (isopo_bench.run_lock), and close a record the trainer could not close itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from isopo_bench.config import RunConfig

SKIPPED_LOCKED = "SKIPPED-LOCKED"


@dataclasses.dataclass
class Outcome:
    cfg: RunConfig
    status: str
    """FINISHED, FAILED, SKIPPED-FINISHED / SKIPPED-FAILED for runs the ledger already held, or SKIPPED-LOCKED
    for a run another live process is training (isopo_bench.run_lock)."""
    seconds: float = 0.0
    accuracy: float | None = None
    error: str = ""


def execute(cfg: RunConfig, resume: bool) -> Outcome:
    """Train one run; any exception becomes a FAILED outcome (and a FAILED MLflow record)."""
    from isopo_bench.run_lock import RunLockedError
    from isopo_bench.trainer import train

    start = time.perf_counter()
    settled = _settled_since_planned(cfg, resume)
    if settled:  # another invocation finished it after this one read the ledger
        return Outcome(cfg, f"SKIPPED-{settled}")
    try:
        result = train(cfg, resume=resume or _started_since_planned(cfg))
    except RunLockedError as exc:  # another process is training it: not ours to run or to mark
        return Outcome(cfg, SKIPPED_LOCKED, time.perf_counter() - start, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad run must not stop the suite
        message = f"{type(exc).__name__}: {exc}"
        _mark_failed(cfg, message)
        return Outcome(cfg, "FAILED", time.perf_counter() - start, error=message)
    return Outcome(cfg, result.status, time.perf_counter() - start, result.final_accuracy)


def _recorded_run(cfg: RunConfig):
    """(MLflow client, run id, status) of the run's record as its folder names it; None when there is no
    folder yet, or its store is gone or unreadable."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from isopo_bench.run_store import RUN_INFO, run_dir_for

    info = run_dir_for(cfg) / RUN_INFO
    if not info.exists():
        return None
    try:
        data = json.loads(info.read_text())
        client = MlflowClient(data["tracking_uri"])
        return client, data["run_id"], client.get_run(data["run_id"]).info.status
    except (MlflowException, OSError, ValueError, KeyError):
        return None


def _mark_failed(cfg: RunConfig, message: str) -> None:
    """The trainer marks failures inside its loop; one raised while loading or saving would leave the
    MLflow run RUNNING (read as incomplete), so close it here, under the run lock."""
    from mlflow.exceptions import MlflowException

    from isopo_bench import metric_names as M
    from isopo_bench.run_lock import RunLock
    from isopo_bench.run_store import RUN_INFO, run_dir_for

    if not (run_dir_for(cfg) / RUN_INFO).exists():
        return
    lock = RunLock.try_hold(run_dir_for(cfg), create=False)
    if lock is None:  # another live process holds the run: its record is not this suite's to close
        return
    try:
        recorded = _recorded_run(cfg)
        if recorded is not None and recorded[2] == "RUNNING":
            client, run_id, _ = recorded
            client.set_tag(run_id, M.TAG_STATUS_DETAIL, message[:4000])
            client.set_terminated(run_id, "FAILED")
    except (MlflowException, OSError):
        pass  # its store went away meanwhile: the outcome still reports the failure
    finally:
        lock.release()


def _started_since_planned(cfg: RunConfig) -> bool:
    """The run folder exists now (another invocation started the run after the ledger was read)."""
    from isopo_bench.run_store import RUN_INFO, run_dir_for

    return (run_dir_for(cfg) / RUN_INFO).exists()


def _settled_since_planned(cfg: RunConfig, resume: bool) -> str | None:
    """FINISHED when the run planned as new was finished meanwhile by another invocation on the same store."""
    recorded = None if resume else _recorded_run(cfg)
    return "FINISHED" if recorded is not None and recorded[2] == "FINISHED" else None


def quiet_worker(threads: int) -> None:
    """A worker process: `threads` torch threads and no per-run progress bars (the runner reports
    progress). A run's own `threads` setting, when set, still wins (the trainer applies it)."""
    os.environ.update(OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                      TRANSFORMERS_VERBOSITY="error")
    import torch

    torch.set_num_threads(threads)


def execute_on_worker(cfg: RunConfig, resume: bool, threads: int) -> Outcome:
    """The body of a Ray task or submitit job."""
    quiet_worker(threads)
    return execute(cfg, resume)
