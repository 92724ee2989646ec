"""Curves tab: any logged metric against training step or wall-clock, one line per arm (algorithm, learning
rate, optimizer; dashboards._arms), never averaged across learning rates or optimizers. The line is the
mean over the arm's seeds, the band the seed range or the 95% t-interval; training curves can be smoothed
per run (EMA or rolling mean), evaluation curves stay unsmoothed unless asked."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from isopo_bench import metric_names as M
from isopo_bench.dashboards import _arms, _charts, _data

DEFAULT_METRICS = (M.REWARD_MEAN, M.EVAL_ACCURACY, M.ENTROPY, M.GRAD_NORM)
X_AXES = {"training step": "step", "wall-clock time (time/elapsed)": "elapsed"}
ARM_SELECTOR = "Arms (algorithm · lr · optimizer)"
EMA_DEFAULT, WINDOW_DEFAULT = 0.6, 5


def with_elapsed(uri: str, hist: pd.DataFrame, run_ids: tuple[str, ...]) -> pd.DataFrame:
    """Attach each row's cumulative training time; the evaluation before training (step 0) sits at 0 s."""
    elapsed = _data.history(uri, run_ids, M.TIME_ELAPSED)[[M.LB_RUN_ID, "step", "value"]]
    start = pd.DataFrame({M.LB_RUN_ID: list(run_ids), "step": 0, "value": 0.0})
    elapsed = pd.concat([start, elapsed]).drop_duplicates([M.LB_RUN_ID, "step"], keep="last")
    return hist.merge(elapsed.rename(columns={"value": "elapsed"}), on=[M.LB_RUN_ID, "step"], how="inner")


def metric_band(uri: str, runs: pd.DataFrame, metric: str, x: str, band: str = "range",
                smoothing: tuple[str, float] = ("none", 0.0)) -> pd.DataFrame:
    """The seed band (dashboards._arms.seed_band) of `metric` per arm of `runs`, each run smoothed first."""
    run_ids = tuple(runs[M.LB_RUN_ID])
    hist = _data.history(uri, run_ids, metric)
    if hist.empty:
        return hist
    hist = hist.merge(_arms.with_arm(runs)[[M.LB_RUN_ID, _arms.ARM]], on=M.LB_RUN_ID)
    if x == "elapsed":
        hist = with_elapsed(uri, hist, run_ids)
    if hist.empty:
        return hist
    return _arms.seed_band(_arms.smoothed(hist, *smoothing), x, band)


def select_arms(runs: pd.DataFrame, key: str) -> pd.DataFrame:
    """The runs of the arms chosen in a multiselect whose default is each algorithm at its best lr."""
    arms = _arms.arm_table(runs)[_arms.ARM].tolist()
    default = _arms.best_arms(runs) or arms
    chosen = st.multiselect(ARM_SELECTOR, arms, default=default, key=key,
                            help="Default: each algorithm (and optimizer) at its best learning rate on the leaderboard")
    labelled = _arms.with_arm(runs)
    return labelled[labelled[_arms.ARM].isin(chosen)]


def smoothing_controls() -> tuple[tuple[str, float], bool]:
    """((method, amount), whether evaluation curves are smoothed too)."""
    cols = st.columns([2, 2, 1])
    method = cols[0].radio("Smoothing of training curves", _arms.SMOOTHERS, horizontal=True, key="curve_smooth")
    amount = 0.0
    if method == "EMA":
        amount = cols[1].slider("EMA weight beta (0 = none)", 0.0, 0.95, EMA_DEFAULT, 0.05, key="curve_ema")
    elif method == "rolling mean":
        amount = float(cols[1].slider("Rolling window (steps)", 1, 20, WINDOW_DEFAULT, key="curve_window"))
    smooth_eval = cols[2].checkbox("Smooth eval/ curves too", value=False, key="curve_smooth_eval",
                                   disabled=method == "none")
    return (method, amount), smooth_eval


def caption(band: str, smoothing: tuple[str, float], smooth_eval: bool) -> str:
    method, amount = smoothing
    text = (f"Line: mean over the seeds of one arm (one algorithm at one learning rate with one optimizer; arms are "
            f"never averaged together). Band: {_arms.BANDS[band]} (none with a single seed). ")
    if method == "none":
        text += "No smoothing. "
    else:
        setting = f"beta = {amount:.2f}" if method == "EMA" else f"window {int(amount)} steps"
        text += (f"Each run is smoothed ({method}, {setting}) before its seeds are combined; evaluation curves "
                 f"(eval/...) are {'smoothed too' if smooth_eval else 'drawn unsmoothed'}. ")
    return text + "Runs still in progress are included with the steps they have logged."


def render(uri: str, runs: pd.DataFrame) -> None:
    keys = _data.metric_keys(uri, tuple(runs[M.LB_RUN_ID]))
    if not keys:
        st.info("The selected runs have not logged any metric yet (a run that just started logs after its first step).")
        return
    chosen_runs = select_arms(runs, "curve_arms")
    left, mid, right = st.columns([3, 1, 1])
    chosen = left.multiselect("Metrics", keys, default=[m for m in DEFAULT_METRICS if m in keys],
                              format_func=lambda m: f"{m}  -  {_charts.label(m)}", key="curve_metrics")
    x = X_AXES[mid.radio("x axis", list(X_AXES), key="curve_x")]
    band = right.radio("Band", list(_arms.BANDS), format_func=_arms.BANDS.get, key="curve_band")
    smoothing, smooth_eval = smoothing_controls()
    st.caption(caption(band, smoothing, smooth_eval))
    if chosen_runs.empty:
        st.info(f"Choose at least one arm in `{ARM_SELECTOR}`.")
        return
    columns, colors = st.columns(2), _charts.palette_colors(_arms.arm_table(runs)[_arms.ARM])
    for i, metric in enumerate(chosen):
        with columns[i % 2]:
            st.markdown(f"**{metric}**")
            applied = smoothing if smooth_eval or not metric.startswith("eval/") else ("none", 0.0)
            curves = metric_band(uri, chosen_runs, metric, x, band, applied)
            if curves.empty:
                ending = " with its wall-clock time." if x == "elapsed" else "."
                st.info(f"No selected run logged `{metric}`{ending}")
                continue
            st.plotly_chart(_charts.curve_figure(curves, metric, x, colors, _arms.BANDS[band]),
                            key=f"curve-{metric}-{x}")
