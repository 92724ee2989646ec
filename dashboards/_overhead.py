"""Overhead tab: where a training step's wall-clock goes, per algorithm, from the runs' time/ metrics; and
the offline update-step benchmark (`isopo-bench overhead`) when its results were saved."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from isopo_bench import leaderboard as lb
from isopo_bench import metric_names as M
from isopo_bench.dashboards import _charts, _data


def phase_histories(uri: str, run_ids: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    return {metric: _data.history(uri, run_ids, metric) for metric in (*M.TIME_PHASES, M.TIME_STEP)}


def render_ratio(runs: pd.DataFrame) -> None:
    """The update-time ratio is the leaderboard's (median over steps, finished runs), so the two tabs agree."""
    board = lb.leaderboard(runs)
    columns = [*lb.GROUP, M.LB_ALGORITHM, M.LB_UPDATE_S, M.LB_STEP_S, M.LB_OVERHEAD, M.LB_FLOOR,
               M.LB_OVERHEAD_RELIABLE]
    if board[M.LB_OVERHEAD].isna().all():
        st.info(f"No update-time ratio yet: it needs a finished `{lb.REINFORCE}` run and finished runs of the other "
                "algorithms in the same (suite, task, model) group.")
    st.dataframe(board[columns], hide_index=True, key="update-ratio", column_config={
        M.LB_UPDATE_S: st.column_config.NumberColumn(format="%.4f", help="median over steps of time/update (s)"),
        M.LB_STEP_S: st.column_config.NumberColumn(format="%.4f", help="median over steps of time/step (s)"),
        M.LB_OVERHEAD: st.column_config.NumberColumn(format="%.2fx", help=f"update time relative to {lb.REINFORCE}"),
        M.LB_FLOOR: st.column_config.NumberColumn(format="%.2fx", help="FLOP floor of the update vs REINFORCE's"),
    })


def render_runs(uri: str, runs: pd.DataFrame) -> None:
    st.subheader("Per-phase time in the training runs")
    histories = phase_histories(uri, tuple(runs[M.LB_RUN_ID]))
    if histories[M.TIME_STEP].empty:
        st.info("No selected run has logged a training step yet, so there are no phase timings to show.")
        return
    st.caption("Mean seconds per training step of each phase, averaged over each algorithm's runs (evaluation time "
               "is spread over all steps). Runs on different machines or tasks are not comparable: filter in the "
               "sidebar. The table below gives the leaderboard's medians and the update-time ratio to REINFORCE.")
    st.plotly_chart(_charts.phase_figure(_charts.phase_table(histories, runs)), key="phase-bars")
    render_ratio(runs)


def offline_figure(rows: pd.DataFrame):
    fig = px.bar(rows, x="algorithm", y="ratio", color="shape", barmode="group",
                 hover_data=[c for c in ("median_s", "T", "B", "hidden", "probes", "floor", "probes_used", "state_mib")
                             if c in rows])
    fig.add_hline(y=1.0, line_dash="dot", annotation_text=lb.REINFORCE)
    fig.update_layout(xaxis_title="algorithm", yaxis_title=f"update-step time / {lb.REINFORCE} (median ratio)",
                      legend_title="model shape", margin={"t": 30}, height=420)
    return fig


def render_offline(uri: str) -> None:
    st.subheader("Offline update-step benchmark")
    rows, source = _data.overhead_results(uri)
    if rows is None or rows.empty:
        st.info(f"No offline overhead results: {source}. Run `isopo-bench overhead`, save its rows as CSV or JSON "
                "and start the dashboard with `--overhead-file PATH`.")
        return
    st.caption(f"From {source}: one update step (forward, backward, optimizer step) timed in one process.")
    if {"algorithm", "ratio"} <= set(rows.columns):
        if "shape" not in rows.columns:
            rows = rows.assign(shape="")
        st.plotly_chart(offline_figure(rows), key="offline-bars")
    st.dataframe(rows, hide_index=True, key="offline-table")


def render(uri: str, runs: pd.DataFrame) -> None:
    render_runs(uri, runs)
    render_offline(uri)
