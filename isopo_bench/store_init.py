"""Opening the MLflow store safely when several processes start at once.

MLflow creates a new SQLite store by running its schema migrations in whichever process opens it first;
two processes doing that together crash, and a crash mid-migration leaves the file permanently broken
(`table _alembic_tmp_params already exists`). Here a new store is built by one initialiser under a file lock
beside the database (DB.init.lock), in a temporary file that is renamed into place when complete: a store
either does not exist yet or is whole, whoever is killed when. `train`, `suite` and `leaderboard` all come
through here; the experiment is created under the same lock (two creators would collide).

`require_store` is for readers: a store that does not exist is an error, never silently created empty.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from isopo_bench.tracking import TrackingError, check_reachable, resolve_uri

INIT_TIMEOUT_S = 300.0


def sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]).expanduser().resolve() if uri.startswith(prefix) else None


def init_lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".init.lock")


def ensure_store(uri: str, experiment: str | None = None) -> str:
    """The resolved URI of a store that exists and holds `experiment` (both created when missing)."""
    from isopo_bench.run_lock import wait_for_lock

    uri = resolve_uri(uri)
    check_reachable(uri)
    db = sqlite_path(uri)
    if db is None:
        if experiment:
            _create_experiment(uri, experiment)
        return uri
    if db.exists() and experiment is None:
        return uri  # complete by construction: a new store appears only by an atomic rename
    fd = wait_for_lock(init_lock_path(db), INIT_TIMEOUT_S, f"creating the MLflow store {db}")
    try:
        if not db.exists():
            _initialise_sqlite(db)
        if experiment:
            _create_experiment(uri, experiment)
    finally:
        os.close(fd)
    return uri


def _initialise_sqlite(db: Path) -> None:
    from mlflow.tracking import MlflowClient

    tmp = db.with_name(f".{db.name}.init-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        MlflowClient(f"sqlite:///{tmp}").search_experiments()  # runs the schema migrations
        os.replace(tmp, db)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _create_experiment(uri: str, experiment: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if client.get_experiment_by_name(experiment) is not None:
        return
    try:
        client.create_experiment(experiment)
    except MlflowException:  # created by another process meanwhile (a server has no lock of ours)
        if client.get_experiment_by_name(experiment) is None:
            raise


def require_store(uri: str) -> str:
    """The resolved URI of a store that already exists; a missing SQLite file is an error naming it."""
    uri = resolve_uri(uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise TrackingError(
            f"no MLflow store at {db} (nothing has been trained into it). Fix: pass --tracking-uri with the store "
            "your runs wrote (e.g. sqlite:////path/to/mlflow.db), set MLFLOW_TRACKING_URI, or run the command in "
            "the folder holding mlflow.db")
    if db is None:
        check_reachable(uri)
    return uri

