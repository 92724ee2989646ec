"""Leaderboard tab: exactly `isopo-bench leaderboard`'s numbers (isopo_bench.leaderboard), shown per
(suite, task, model) group as a sortable table, a bar chart of mean final accuracy with its 95% CI, and the
accuracy against the learning rate per (algorithm, optimizer) with the initial accuracy for reference and a
note where an algorithm's best learning rate sits at the edge of its grid. Models show by their readable
name (dashboards._arms.model_names); the CSV keeps the model as recorded."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from isopo_bench import leaderboard as lb
from isopo_bench import metric_names as M
from isopo_bench.dashboards import _arms, _charts

TABLE_COLUMNS = [*lb.GROUP, *lb.DISPLAY_COLUMNS]
"""The CLI's terminal columns, preceded by the group they belong to (the dashboard shows all groups)."""
FORMATS = {
    **{c: "%.3f" for c in (M.LB_ROBUST_MEAN, M.LB_ROBUST_WORST, M.LB_ACC_MEAN, M.LB_ACC_CI_LO, M.LB_ACC_CI_HI,
                           M.LB_ACC_AT_BUDGET, M.LB_BEST_ACC_MEAN, M.LB_DIFF_MEAN, M.LB_DIFF_CI_LO, M.LB_DIFF_CI_HI,
                           M.LB_PASS_AT_K, M.LB_MEAN_AT_K)},
    M.LB_BEST_LR: "%.2e", M.LB_STEPS_TO_THRESHOLD: "%.1f", M.LB_UPDATE_S: "%.4f", M.LB_STEP_S: "%.4f",
    M.LB_OVERHEAD: "%.2fx", M.LB_FLOOR: "%.2fx",
}
HELP = {
    M.LB_ACC_MEAN: "final held-out accuracy at the best learning rate, mean over finished seeds",
    M.LB_ACC_CI_LO: "95% Student-t interval over seeds, low end (blank with one seed)",
    M.LB_ACC_CI_HI: "95% Student-t interval over seeds, high end (blank with one seed)",
    M.LB_DIFF_MEAN: "mean paired difference (same seed and lr) to the baseline's final accuracy",
    M.LB_OVERHEAD: "median update-phase time per step relative to REINFORCE's (process CPU time when every run "
                   "logged it); its noise floor is the update_time_reliable column",
    M.LB_FLOOR: "FLOP floor of the update relative to REINFORCE's: the ratio the method's own arithmetic implies "
                "(isopo_bench.flop_floor); the excess of the measured ratio over it is implementation or noise",
    M.LB_UPDATE_S: "median over steps of time/update (s)",
    M.LB_STEP_S: "median over steps of time/step, evaluation excluded (s)",
    M.LB_N_INCOMPLETE: "runs still RUNNING or KILLED: counted, never averaged",
    M.LB_PASS_AT_K: "final sampled evaluation: pass@k (unbiased estimator, eval.pass_k of eval.samples), mean over seeds at the best lr; blank when eval.samples = 0",
    M.LB_MEAN_AT_K: "final sampled evaluation: mean reward of the eval.samples samples per item, mean over seeds at the best lr",
}


def column_config() -> dict:
    return {c: st.column_config.NumberColumn(format=FORMATS.get(c), help=HELP.get(c))
            for c in set(FORMATS) | set(HELP)}


def accuracy_figure(group: pd.DataFrame):
    """group: the leaderboard's rows of one group. Bars per algorithm, or per algorithm · optimizer
    when the group holds more than one optimizer (each at its own best learning rate)."""
    finished = group.dropna(subset=[M.LB_ACC_MEAN])
    several = finished[M.LB_OPTIMIZER].nunique() > 1
    bars = finished[M.LB_ALGORITHM] + (" · " + finished[M.LB_OPTIMIZER] if several else "")
    # A single seed has no interval: draw the bar without an error bar rather than a NaN one.
    mean = finished[M.LB_ACC_MEAN]
    lo, hi = finished[M.LB_ACC_CI_LO].fillna(mean), finished[M.LB_ACC_CI_HI].fillna(mean)
    fig = _charts.bar_with_ci(finished.assign(lo=lo, hi=hi, bar=bars), "bar", M.LB_ACC_MEAN, "lo", "hi",
                              "final held-out accuracy (fraction correct)")
    fig.update_layout(xaxis_title=f"algorithm{' · optimizer' if several else ''} (best learning rate each)",
                      yaxis_range=[0, 1])
    return fig


def lr_figure(arm_rows: pd.DataFrame, initial: float, colors: dict[str, str]) -> go.Figure:
    """Mean final accuracy against the learning rate (log x), one line per (algorithm, optimizer) (dashed
    for an optimizer other than AdamW), error bars the 95% t-interval over seeds (none from one seed), and
    the group's initial accuracy (the warm start's, before any update) as a dotted horizontal line."""
    fig = go.Figure()
    rows = arm_rows.dropna(subset=[M.LB_ACC_MEAN]).sort_values(M.LB_LR)
    for (algo, optimizer), g in rows.groupby([M.LB_ALGORITHM, M.LB_OPTIMIZER], sort=True):
        y = g[M.LB_ACC_MEAN]
        fig.add_trace(go.Scatter(
            x=g[M.LB_LR], y=y, mode="lines+markers", name=f"{algo} · {optimizer}", marker={"color": colors.get(algo)},
            line={"color": colors.get(algo), "dash": "solid" if optimizer == _arms.DEFAULT_OPTIMIZER else "dash"},
            customdata=g[[M.LB_SEEDS]], hovertemplate="lr %{x:.3g}: %{y:.3f} (seeds %{customdata[0]})",
            error_y={"type": "data", "symmetric": False, "array": (g[M.LB_ACC_CI_HI].fillna(y) - y).tolist(),
                     "arrayminus": (y - g[M.LB_ACC_CI_LO].fillna(y)).tolist()}))
    if not math.isnan(initial):
        fig.add_hline(y=initial, line_dash="dot", line_color="gray",
                      annotation_text=f"initial accuracy {initial:.3f}", annotation_position="bottom right")
    lrs = sorted(rows[M.LB_LR].unique())
    fig.update_xaxes(tickvals=lrs, ticktext=[f"{lr:g}" for lr in lrs])  # the grid itself, not "100µ"
    fig.update_layout(xaxis_title="learning rate (log scale)", xaxis_type="log",
                      yaxis_title="final held-out accuracy, mean over seeds", legend_title="algorithm · optimizer",
                      margin={"t": 30}, height=400)
    return fig


def initial_accuracy(runs: pd.DataFrame) -> float:
    """The group's accuracy before training: median over finished runs, as the leaderboard's threshold uses it."""
    finished = runs[runs[M.LB_STATUS] == "FINISHED"]
    return float(finished[M.LB_INITIAL_ACC].median()) if len(finished) else math.nan


def render_group(key: tuple, board: pd.DataFrame, arm_rows: pd.DataFrame, runs: pd.DataFrame, names: dict) -> None:
    """board: the leaderboard's rows of the group (one per algorithm and optimizer)."""
    suite, task, model = key
    st.markdown(f"#### Leaderboard: suite `{suite or '(none)'}`, task `{task}`, model `{names.get(model, model)}`")
    if board[M.LB_ACC_MEAN].notna().any():
        st.plotly_chart(accuracy_figure(board), key=f"acc-{key}")
    else:
        st.info("No finished run in this group yet: the accuracy columns fill in when runs finish.")
    if arm_rows[M.LB_ACC_MEAN].notna().any():
        st.markdown("**Accuracy against learning rate**: mean final accuracy over seeds, bars the 95% Student-t "
                    "interval (none from one seed); dotted line: the accuracy before training")
        colors = _charts.palette_colors(runs[M.LB_ALGORITHM])
        st.plotly_chart(lr_figure(arm_rows, initial_accuracy(runs), colors), key=f"lr-{key}")
        for note in _arms.edge_notes(arm_rows):
            st.caption(f"Grid edge: {note}")


def in_group(frame: pd.DataFrame, key: tuple) -> pd.DataFrame:
    return frame[(frame[lb.GROUP] == pd.Series(key, index=lb.GROUP)).all(axis=1)]


def render(uri: str, runs: pd.DataFrame) -> None:
    algorithms = sorted(runs[M.LB_ALGORITHM].unique())
    default = algorithms.index(lb.REINFORCE) if lb.REINFORCE in algorithms else 0
    baseline = st.selectbox("Baseline for paired differences", algorithms, index=default, key="lb-baseline")
    board, arm_rows, names = lb.leaderboard(runs, baseline=baseline), _arms.by_arm(runs), _arms.model_names(runs)
    st.caption("Same aggregation as `isopo-bench leaderboard`: only FINISHED runs are averaged; failed and unfinished "
               "runs are counted; algorithms are compared only within one (suite, task, model) group; intervals are "
               "95% Student-t over seeds. Click a column header to sort.")
    # The table shows readable model names; the CSV keeps the model as recorded (often a warm-start path).
    shown = board[[c for c in TABLE_COLUMNS if c in board.columns]].assign(
        **{M.LB_MODEL: board[M.LB_MODEL].map(lambda m: names.get(m, m))})
    st.dataframe(shown, hide_index=True, key="leaderboard-table", column_config=column_config())
    st.download_button("Download the full leaderboard (CSV)", board.to_csv(index=False),
                       file_name="leaderboard.csv", mime="text/csv", key="lb-csv")
    for key, group in board.groupby(lb.GROUP, sort=True):
        render_group(key, group, in_group(arm_rows, key), in_group(runs, key), names)
