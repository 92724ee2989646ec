"""MLflow tracking: the embedded SQLite store by default, a server when configured.

An unreachable server is reported before any model is loaded. Metric logging is idempotent across
resumes: steps already recorded in the run are not written again (a resumed run replays them
deterministically from its last checkpoint).
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from isopo_bench.errors import IsopoBenchError

DEFAULT_URI = "sqlite:///mlflow.db"


class TrackingError(IsopoBenchError):
    """The MLflow store cannot be used; nothing has been trained yet."""


def resolve_uri(configured: str) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (seconds, not after an hour of training) when the store cannot be reached."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(
                f"MLflow server {uri} is unreachable ({exc}). Fix: start it (`mlflow server`), correct "
                "--tracking.uri / MLFLOW_TRACKING_URI, or unset them to use the local sqlite:///mlflow.db store"
            ) from None
    elif uri.startswith("sqlite:///"):
        check_sqlite_writable(Path(uri[len("sqlite:///") :]).expanduser().resolve())


SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_writable(db: Path) -> None:
    """A real write in the store's folder (os.access says yes to root on read-only mounts) and, for an
    existing file, a writable SQLite database: MLflow would otherwise retry for minutes."""
    import tempfile

    fix = "choose another --tracking.uri (e.g. sqlite:///mlflow.db in a folder you can write)"
    folder = db.parent
    if not folder.is_dir():
        raise TrackingError(f"MLflow store folder {folder} does not exist. Fix: create it or {fix}")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".isopo-write-test-"):
            pass
    except OSError as exc:
        raise TrackingError(f"MLflow store folder {folder} is not writable ({exc.strerror}). Fix: {fix}") from None
    if db.exists():
        if not db.is_file():
            raise TrackingError(f"MLflow store {db} is not a file. Fix: {fix}")
        try:
            with open(db, "r+b") as fh:
                header = fh.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise TrackingError(f"MLflow store {db} cannot be opened for writing ({exc.strerror}). Fix: {fix}") from None
        if header and header != SQLITE_HEADER:
            raise TrackingError(f"{db} is not an SQLite database. Fix: {fix}")


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


class RunTracker:
    """One MLflow run; created new or reopened by id when resuming."""

    def __init__(self, uri: str, experiment: str, run_name: str, run_id: str | None = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        self._mlflow = mlflow
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
            run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
            self.logged_until: dict[str, int] = {}
        else:
            self.client.update_run(run_id, status="RUNNING")
            self.logged_until = self._last_logged_steps(run_id)
        self.run_id = run_id

    def _last_logged_steps(self, run_id: str) -> dict[str, int]:
        keys = self.client.get_run(run_id).data.metrics
        return {k: max(m.step for m in self.client.get_metric_history(run_id, k)) for k in keys}

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i : i + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log a step's metrics, except those this run recorded for this step before a resume."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if step > self.logged_until.get(k, -1)]
        for i in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 500])

    def log_dict(self, data, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def clear_tag(self, key: str) -> None:
        if key in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, key)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)
