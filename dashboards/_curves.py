"""Curves tab: any logged metric against training step or wall-clock, one line per algorithm with a
min-max band over seeds."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from isopo_bench import metric_names as M
from isopo_bench.dashboards import _charts, _data

DEFAULT_METRICS = (M.REWARD_MEAN, M.EVAL_ACCURACY, M.ENTROPY, M.GRAD_NORM)
X_AXES = {"training step": "step", "wall-clock time (time/elapsed)": "elapsed"}


def with_elapsed(uri: str, hist: pd.DataFrame, run_ids: tuple[str, ...]) -> pd.DataFrame:
    """Attach each row's cumulative training time; the evaluation before training (step 0) sits at 0 s."""
    elapsed = _data.history(uri, run_ids, M.TIME_ELAPSED)[[M.LB_RUN_ID, "step", "value"]]
    start = pd.DataFrame({M.LB_RUN_ID: list(run_ids), "step": 0, "value": 0.0})
    elapsed = pd.concat([start, elapsed]).drop_duplicates([M.LB_RUN_ID, "step"], keep="last")
    return hist.merge(elapsed.rename(columns={"value": "elapsed"}), on=[M.LB_RUN_ID, "step"], how="inner")


def metric_band(uri: str, runs: pd.DataFrame, metric: str, x: str) -> pd.DataFrame:
    run_ids = tuple(runs[M.LB_RUN_ID])
    hist = _data.history(uri, run_ids, metric)
    if hist.empty:
        return hist
    hist = hist.merge(runs[[M.LB_RUN_ID, M.LB_ALGORITHM]], on=M.LB_RUN_ID)
    if x == "elapsed":
        hist = with_elapsed(uri, hist, run_ids)
    return _charts.seed_band(hist, x) if not hist.empty else hist


def render(uri: str, runs: pd.DataFrame) -> None:
    keys = _data.metric_keys(uri, tuple(runs[M.LB_RUN_ID]))
    if not keys:
        st.info("The selected runs have not logged any metric yet (a run that just started logs after its first step).")
        return
    left, right = st.columns([3, 1])
    chosen = left.multiselect("Metrics", keys, default=[m for m in DEFAULT_METRICS if m in keys],
                              format_func=lambda m: f"{m}  -  {_charts.label(m)}", key="curve_metrics")
    x = X_AXES[right.radio("x axis", list(X_AXES), key="curve_x")]
    st.caption("Line: mean over the seeds of each algorithm; band: lowest to highest seed. Runs still in progress "
               "are included with the steps they have logged.")
    columns, colors = st.columns(2), _charts.algorithm_colors(runs[M.LB_ALGORITHM])
    for i, metric in enumerate(chosen):
        with columns[i % 2]:
            st.markdown(f"**{metric}**")
            band = metric_band(uri, runs, metric, x)
            if band.empty:
                st.info(f"No selected run logged `{metric}`" + (" with its wall-clock time." if x == "elapsed" else "."))
                continue
            st.plotly_chart(_charts.curve_figure(band, metric, x, colors), key=f"curve-{metric}-{x}")
