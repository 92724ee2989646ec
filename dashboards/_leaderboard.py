"""Leaderboard tab: exactly `isopo-bench leaderboard`'s numbers (isopo_bench.leaderboard), shown per
(suite, task, model) group as a sortable table and a bar chart of mean final accuracy with its 95% CI."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from isopo_bench import leaderboard as lb
from isopo_bench import metric_names as M
from isopo_bench.dashboards import _charts

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
    finished = group.dropna(subset=[M.LB_ACC_MEAN])
    # A single seed has no interval: draw the bar without an error bar rather than a NaN one.
    mean = finished[M.LB_ACC_MEAN]
    lo, hi = finished[M.LB_ACC_CI_LO].fillna(mean), finished[M.LB_ACC_CI_HI].fillna(mean)
    fig = _charts.bar_with_ci(finished.assign(lo=lo, hi=hi), M.LB_ALGORITHM, M.LB_ACC_MEAN, "lo", "hi",
                              "final held-out accuracy (fraction correct)")
    fig.update_layout(xaxis_title="algorithm (best learning rate each)", yaxis_range=[0, 1])
    return fig


def lr_figure(by_lr: pd.DataFrame):
    fig = px.line(by_lr.dropna(subset=[M.LB_ACC_MEAN]).sort_values(M.LB_LR), x=M.LB_LR, y=M.LB_ACC_MEAN,
                  color=M.LB_ALGORITHM, markers=True, log_x=True)
    fig.update_layout(xaxis_title="learning rate (log scale)", yaxis_title="final held-out accuracy, mean over seeds",
                      legend_title="algorithm", margin={"t": 30}, height=360)
    return fig


def render_group(key: tuple, board: pd.DataFrame, by_lr: pd.DataFrame) -> None:
    suite, task, model = key
    st.markdown(f"#### Leaderboard: suite `{suite or '(none)'}`, task `{task}`, model `{model}`")
    if board[M.LB_ACC_MEAN].notna().any():
        st.plotly_chart(accuracy_figure(board), key=f"acc-{key}")
    else:
        st.info("No finished run in this group yet: the accuracy columns fill in when runs finish.")
    if by_lr[M.LB_LR].nunique() > 1:
        with st.expander("Accuracy against learning rate"):
            st.plotly_chart(lr_figure(by_lr), key=f"lr-{key}")


def render(uri: str, runs: pd.DataFrame) -> None:
    algorithms = sorted(runs[M.LB_ALGORITHM].unique())
    default = algorithms.index(lb.REINFORCE) if lb.REINFORCE in algorithms else 0
    baseline = st.selectbox("Baseline for paired differences", algorithms, index=default, key="lb-baseline")
    board, by_lr = lb.leaderboard(runs, baseline=baseline), lb.accuracy_vs_lr(runs)
    st.caption("Same aggregation as `isopo-bench leaderboard`: only FINISHED runs are averaged; failed and unfinished "
               "runs are counted; algorithms are compared only within one (suite, task, model) group; intervals are "
               "95% Student-t over seeds. Click a column header to sort.")
    shown = board[[c for c in TABLE_COLUMNS if c in board.columns]]
    st.dataframe(shown, hide_index=True, key="leaderboard-table", column_config=column_config())
    st.download_button("Download the full leaderboard (CSV)", board.to_csv(index=False),
                       file_name="leaderboard.csv", mime="text/csv", key="lb-csv")
    for key, group in board.groupby(lb.GROUP, sort=True):
        lr_rows = by_lr[(by_lr[lb.GROUP] == pd.Series(key, index=lb.GROUP)).all(axis=1)]
        render_group(key, group, lr_rows)
