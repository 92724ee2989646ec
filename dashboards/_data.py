"""Every MLflow read of the dashboard, cached for TTL_S seconds (the Refresh button clears the cache).

Runs and metric histories come from isopo_bench.leaderboard, the aggregation module the CLI uses, so the
dashboard and `isopo-bench leaderboard` can never disagree. The rest (tags, params, artifacts) are plain
MlflowClient reads that the leaderboard has no reason to own.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from isopo_bench import leaderboard as lb
from isopo_bench import metric_names as M
from isopo_bench.dashboard_launcher import OVERHEAD_FILE_ENV
from isopo_bench.tracking import resolve_uri

TTL_S = 60
"""Short enough that a run in progress shows new steps without a manual refresh; long enough that a
suite of many runs is not re-read from MLflow on every click."""
# MLflow draws a tqdm bar on the server's terminal for every artifact download; the dashboard reads many.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
READ_TIMEOUT_S = 20.0
"""The longest one read of the run table may take; a server that does not answer is an error with the fix,
never a spinner (MLflow's own HTTP client would retry with back-off for minutes)."""
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(READ_TIMEOUT_S)))


class StoreTimeout(Exception):
    pass


def bounded(fn, *args, timeout_s: float | None = None):
    """fn(*args), or StoreTimeout after timeout_s (the read is left to finish in a daemon thread)."""
    import concurrent.futures as cf

    pool = cf.ThreadPoolExecutor(1, thread_name_prefix="mlflow-read")
    try:
        return pool.submit(fn, *args).result(timeout=READ_TIMEOUT_S if timeout_s is None else timeout_s)
    except cf.TimeoutError:
        raise StoreTimeout(f"no answer within {READ_TIMEOUT_S if timeout_s is None else timeout_s:.0f} s. Fix: check "
                           "that the tracking server is running and reachable from here (`mlflow server`), or enter "
                           "another tracking URI in the sidebar") from None
    finally:
        pool.shutdown(wait=False)


def tracking_uri() -> str:
    return resolve_uri("")


def missing_store_file(uri: str) -> str | None:
    """The path of a SQLite store that does not exist (None for servers and existing files)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).exists():
        return str(Path(uri[len(prefix):]).resolve())
    return None


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@st.cache_data(ttl=TTL_S, show_spinner="Reading runs from MLflow")
def runs(uri: str) -> pd.DataFrame:
    from isopo_bench.tracking import check_reachable

    if uri.startswith(("http://", "https://")):  # an unreachable server: an error with the fix, in seconds
        check_reachable(uri, timeout_s=5.0)
    return bounded(lb.load_runs, uri)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def history(uri: str, run_ids: tuple[str, ...], metric: str) -> pd.DataFrame:
    """Columns run_id, step, value (empty when no run logged the metric)."""
    if not run_ids:
        return pd.DataFrame(columns=[M.LB_RUN_ID, "step", "value"])
    return lb.load_metric_history(uri, list(run_ids), metric)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def metric_keys(uri: str, run_ids: tuple[str, ...]) -> list[str]:
    """Metrics logged per step by any of the runs (final/ summaries are single points, not curves)."""
    client, keys = _client(uri), set()
    for run_id in run_ids:
        keys |= set(client.get_run(run_id).data.metrics)
    return sorted(k for k in keys if not k.startswith("final/"))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def run_record(uri: str, run_id: str) -> dict:
    run = _client(uri).get_run(run_id)
    return {"status": run.info.status, "name": run.info.run_name, "start_ms": run.info.start_time,
            "end_ms": run.info.end_time, "tags": dict(run.data.tags), "params": dict(run.data.params),
            "metrics": dict(run.data.metrics)}


@st.cache_data(ttl=TTL_S, show_spinner=False)
def artifact_paths(uri: str, run_id: str, folder: str = "") -> list[str]:
    try:
        return [a.path for a in _client(uri).list_artifacts(run_id, folder or None)]
    except Exception:  # noqa: BLE001 - a run without artifacts (or an unreachable artifact store) has none to show
        return []


@st.cache_data(ttl=TTL_S, show_spinner=False)
def artifact_text(uri: str, run_id: str, path: str) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = _client(uri).download_artifacts(run_id, path, tmp)
        except Exception:  # noqa: BLE001 - a missing artifact is reported by the caller as "not logged"
            return None
        return Path(local).read_text()


def artifact_json(uri: str, run_id: str, path: str):
    text = artifact_text(uri, run_id, path)
    return None if text is None else json.loads(text)


def _rows_from_text(text: str, name: str) -> pd.DataFrame:
    if name.endswith(".csv"):
        from io import StringIO

        return pd.read_csv(StringIO(text))
    data = json.loads(text)
    return pd.DataFrame(data["rows"] if isinstance(data, dict) else data)


def overhead_results(uri: str) -> tuple[pd.DataFrame | None, str]:
    """(rows, where they came from): the file named by ISOPO_OVERHEAD_FILE first, else the newest MLflow
    run tagged kind=overhead; (None, reason) when there are none."""
    return _overhead_results(uri, os.environ.get(OVERHEAD_FILE_ENV, ""))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def _overhead_results(uri: str, path: str) -> tuple[pd.DataFrame | None, str]:
    if path:
        if not Path(path).is_file():
            return None, f"{OVERHEAD_FILE_ENV}={path} does not exist"
        return _rows_from_text(Path(path).read_text(), path), path
    client = _client(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, f"tags.{M.TAG_KIND} = '{M.KIND_OVERHEAD}'", max_results=1,
                               order_by=["attributes.start_time DESC"]) if experiments else []
    for run in found:
        for name in artifact_paths(uri, run.info.run_id):
            if name.endswith((".json", ".csv")):
                rows = _rows_from_text(artifact_text(uri, run.info.run_id, name), name)
                return rows, f"MLflow run {run.info.run_id}, {name}"
    return None, f"no file given (--overhead-file) and no MLflow run tagged {M.TAG_KIND}={M.KIND_OVERHEAD}"


def clear() -> None:
    st.cache_data.clear()
