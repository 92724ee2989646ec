"""isopo-bench dashboard: leaderboard, training curves, time overhead and run details, read from MLflow.

Start it with `isopo-bench dashboard` (or `streamlit run dashboards/app.py` with MLFLOW_TRACKING_URI set).
It reads the MLflow store only and never imports torch, so it runs beside training on any machine.
"""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st

from isopo_bench import metric_names as M
from isopo_bench.dashboards import _arms, _curves, _data, _details, _diagnostics, _leaderboard, _overhead, _start
from isopo_bench.start_check import describe_start_conflicts, select_start_hash

FILTERS = {M.LB_SUITE: "Suite", M.LB_TASK: "Task", M.LB_MODEL: "Model", M.LB_ALGORITHM: "Algorithm",
           M.LB_OPTIMIZER: "Optimizer"}
TABS = {"Leaderboard": _leaderboard.render, "Curves": _curves.render, "Overhead": _overhead.render,
        "Run details": _details.render, "Diagnostics": _diagnostics.render}
log = logging.getLogger(__name__)


def sidebar_store() -> str:
    st.sidebar.title("isopo-bench")
    uri = st.sidebar.text_input("MLflow tracking URI", value=_data.tracking_uri(), key="tracking_uri")
    if st.sidebar.button("Refresh data", help=f"Re-read MLflow now (otherwise every {_data.TTL_S} s)"):
        _data.clear()
    return uri


def sidebar_filters(runs: pd.DataFrame) -> pd.DataFrame:
    """Multiselects over suite, task, model, algorithm and optimizer; an empty selection means all. Models
    are listed by their readable names (the model_display tag, else the last folder of a path)."""
    st.sidebar.subheader("Filters")
    shown = {M.LB_MODEL: _arms.model_names(runs)}
    for column, title in FILTERS.items():
        if column not in runs:
            continue
        options = sorted(runs[column].fillna("").astype(str).unique())
        names = shown.get(column, {})
        chosen = st.sidebar.multiselect(title, options, key=f"filter-{column}", placeholder="all",
                                        format_func=lambda value, names=names: names.get(value, value))
        if chosen:
            runs = runs[runs[column].fillna("").astype(str).isin(chosen)]
    return runs


def sidebar_start_point(runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The start hash the tabs show (dashboards._start): read-only when the selection holds one, else a
    selector (hash and run count) applied as `isopo-bench leaderboard --start-hash` is. Returns the runs
    kept and the choice (_start.ALL keeps every run)."""
    counts = dict(_start.start_counts(runs))
    if len(counts) == 1:
        only, n = next(iter(counts.items()))
        st.sidebar.markdown(f"**Start point**: `{only}` ({n} run{'s' * (n != 1)})",
                            help="The start_hash tag of the weights every selected run started from.")
        return runs, only
    options = [*counts, _start.ALL]
    default = _start.default_start(runs)
    # Streamlit keeps the choice while the filters leave its option list unchanged, and starts again from
    # `index` when they change it (tests/test_dashboard.py pins both).
    chosen = st.sidebar.selectbox(
        "Start point (start_hash)", options, index=options.index(default), key="start-hash",
        format_func=lambda h: _start.start_label(h, counts),
        help="Runs from different starting weights are never compared; this keeps the runs of one start hash, "
             "as `isopo-bench leaderboard --start-hash HASH` does.")
    mixed = _start.mixes_starts(runs)
    if mixed and chosen == default:
        st.sidebar.caption(f"Default: the start hash of the most runs ({counts[default]} of {len(runs)}): a "
                           "(suite, task, model) group here holds runs from more than one starting point.")
    elif not mixed and chosen == _start.ALL:
        st.sidebar.caption("Default: all; each start hash here belongs to its own (suite, task, model) group, so "
                           "none is compared with another.")
    return select_start_hash(runs, chosen), chosen


def load_runs(uri: str) -> pd.DataFrame | None:
    missing = _data.missing_store_file(uri)
    if missing:
        # Opening a missing SQLite store would create it: a viewer should not write a store.
        st.info(f"There is no MLflow store at `{missing}` yet. Train a run first (`isopo-bench train --preset "
                "tiny-smoke` writes ./mlflow.db), or enter another tracking URI in the sidebar.")
        return None
    try:
        return _data.runs(uri)
    except Exception as exc:  # noqa: BLE001 - any store problem becomes a message, not a stack trace
        log.exception("reading %s failed", uri)
        st.error(f"Cannot read the MLflow store `{uri}`: {type(exc).__name__}: {exc}. Fix: check the tracking "
                 "URI in the sidebar (or `isopo-bench dashboard --tracking-uri`).")
        return None


def render_tab(render, uri: str, runs: pd.DataFrame) -> None:
    """One broken tab (an unexpected record in the store) must not take the others down."""
    try:
        render(uri, runs)
    except Exception as exc:  # noqa: BLE001
        log.exception("tab failed")
        st.error(f"This tab could not be drawn: {type(exc).__name__}: {exc}")


def main() -> None:
    st.set_page_config(page_title="isopo-bench dashboard", layout="wide")
    uri = sidebar_store()
    runs = load_runs(uri)
    if runs is None:
        return
    if runs.empty:
        st.info(f"No runs in `{uri}` yet. Start one with `isopo-bench train --preset tiny-smoke` (or a suite with "
                "`isopo-bench suite NAME`), then press Refresh data.")
        return
    runs = sidebar_filters(_arms.with_optimizer(runs))
    if runs.empty:
        st.sidebar.caption("0 runs selected")
        st.warning("No run matches the filters in the sidebar.")
        return
    runs, start = sidebar_start_point(runs)
    st.sidebar.caption(f"{len(runs)} runs selected")
    refusal = describe_start_conflicts(runs) if start == _start.ALL else ""
    if refusal:  # the leaderboard's refusal, and the curves would average seeds from different weights
        st.error(refusal.replace("\n", "  \n") + "  \nIn the dashboard: pick one start point in the sidebar.")
        return
    for tab, render in zip(st.tabs(list(TABS)), TABS.values()):
        with tab:
            render_tab(render, uri, runs)


main()
