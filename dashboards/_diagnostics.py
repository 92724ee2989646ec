"""Diagnostics tab: what each update did to the policy (isopo_bench.diagnostics, docs/diagnostics.md).

Curves of the per-step KL, the update / natural-gradient cosine and the improvement per unit KL, one line
per algorithm with a min-max band over seeds; and the proximity/progress trade-off: final accuracy against
the median per-step KL, one point per (algorithm, learning rate), error bars the 95% intervals over seeds.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from isopo_bench import leaderboard as lb
from isopo_bench import metric_names as M
from isopo_bench.dashboards import _charts, _curves

CURVES = (M.DIAG_KL_TOK, M.DIAG_COS_UPDATE_NAT, M.DIAG_SURROGATE_PER_KL)
KL_AXIS = "median per-step token KL(pi_before || pi_after) (nats, log scale)"
ACC_AXIS = "final held-out accuracy (fraction correct)"


def tradeoff_figure(by_lr: pd.DataFrame, colors: dict[str, str]) -> go.Figure:
    fig = go.Figure()
    rows = by_lr.dropna(subset=[M.LB_DIAG_KL, M.LB_ACC_MEAN])
    for algo, g in rows.groupby(M.LB_ALGORITHM):
        g = g.sort_values(M.LB_LR)
        y, x = g[M.LB_ACC_MEAN], g[M.LB_DIAG_KL]
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="markers+lines", name=algo, marker={"color": colors.get(algo)},
            text=[f"lr {lr:g}" for lr in g[M.LB_LR]],
            error_y={"type": "data", "symmetric": False, "array": (g[M.LB_ACC_CI_HI].fillna(y) - y).tolist(),
                     "arrayminus": (y - g[M.LB_ACC_CI_LO].fillna(y)).tolist()},
            error_x={"type": "data", "symmetric": False, "array": (g[M.LB_DIAG_KL_CI_HI].fillna(x) - x).tolist(),
                     "arrayminus": (x - g[M.LB_DIAG_KL_CI_LO].fillna(x)).tolist()},
        ))
    fig.update_layout(xaxis_title=KL_AXIS, yaxis_title=ACC_AXIS, xaxis_type="log", legend_title="algorithm",
                      margin={"t": 30}, height=420)
    return fig


def render(uri: str, runs: pd.DataFrame) -> None:
    colors = _charts.algorithm_colors(runs[M.LB_ALGORITHM])
    by_lr = lb.accuracy_vs_lr(runs)
    st.caption("Per-step diagnostics (docs/diagnostics.md): exact token KL between the policy before and after each "
               "optimizer step on its own minibatch, the cosine of the applied update with the damped natural "
               "gradient of the batch (rho = 1), and the surrogate improvement per unit KL.")
    if by_lr[M.LB_DIAG_KL].notna().any():
        st.markdown("**Proximity against progress**: one point per (algorithm, learning rate); bars: 95% intervals "
                    "over seeds")
        st.plotly_chart(tradeoff_figure(by_lr, colors), key="diag-tradeoff")
    else:
        st.info("No finished run with diagnostics yet (runs log `diag/...` metrics unless "
                "diagnostics.proximity_every=0).")
    columns = st.columns(len(CURVES))
    for col, metric in zip(columns, CURVES):
        with col:
            band = _curves.metric_band(uri, runs, metric, "step")
            if band.empty:
                st.info(f"No selected run logged `{metric}`.")
                continue
            st.plotly_chart(_charts.curve_figure(band, metric, "step", colors), key=f"diag-{metric}")
