"""Diagnostics tab: what each update did to the policy (isopo_bench.diagnostics, docs/diagnostics.md).

Curves of the per-step KL, the update / natural-gradient cosine and the improvement per unit KL, one line
per arm (algorithm, learning rate, optimizer: dashboards._arms) with a min-max band over its seeds; and the
proximity/progress trade-off: final accuracy against the median per-step KL, one point per arm, one line
per (algorithm, optimizer) through its learning rates, error bars the 95% intervals over seeds.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from isopo_bench import metric_names as M
from isopo_bench.dashboards import _arms, _charts, _curves

CURVES = (M.DIAG_KL_TOK, M.DIAG_COS_UPDATE_NAT, M.DIAG_SURROGATE_PER_KL)
KL_AXIS = "median per-step token KL(pi_before || pi_after) (nats, log scale)"
ACC_AXIS = "final held-out accuracy (fraction correct)"


def line_name(algorithm: str, optimizer: str) -> str:
    return f"{algorithm} · {optimizer}"


def tradeoff_figure(arm_rows: pd.DataFrame, colors: dict[str, str]) -> go.Figure:
    """arm_rows: dashboards._arms.by_arm; colors per algorithm."""
    fig = go.Figure()
    rows = arm_rows.dropna(subset=[M.LB_DIAG_KL, M.LB_ACC_MEAN])
    for (algo, optimizer), g in rows.groupby([M.LB_ALGORITHM, M.LB_OPTIMIZER]):
        g = g.sort_values(M.LB_LR)
        y, x = g[M.LB_ACC_MEAN], g[M.LB_DIAG_KL]
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="markers+lines", name=line_name(algo, optimizer), marker={"color": colors.get(algo)},
            line={"dash": "dash" if optimizer != _arms.DEFAULT_OPTIMIZER else "solid"},
            text=[f"lr {lr:g}" for lr in g[M.LB_LR]],
            error_y={"type": "data", "symmetric": False, "array": (g[M.LB_ACC_CI_HI].fillna(y) - y).tolist(),
                     "arrayminus": (y - g[M.LB_ACC_CI_LO].fillna(y)).tolist()},
            error_x={"type": "data", "symmetric": False, "array": (g[M.LB_DIAG_KL_CI_HI].fillna(x) - x).tolist(),
                     "arrayminus": (x - g[M.LB_DIAG_KL_CI_LO].fillna(x)).tolist()},
        ))
    fig.update_layout(xaxis_title=KL_AXIS, yaxis_title=ACC_AXIS, xaxis_type="log",
                      legend_title="algorithm · optimizer", margin={"t": 30}, height=420)
    return fig


def render(uri: str, runs: pd.DataFrame) -> None:
    arm_rows = _arms.by_arm(runs)
    st.caption("Per-step diagnostics (docs/diagnostics.md): exact token KL between the policy before and after each "
               "optimizer step on its own minibatch, the cosine of the applied update with the damped natural "
               "gradient of the batch (rho = 1), and the surrogate improvement per unit KL.")
    if arm_rows[M.LB_DIAG_KL].notna().any():
        st.markdown("**Proximity against progress**: one point per (algorithm, learning rate, optimizer), one line "
                    "per (algorithm, optimizer) through its learning rates; bars: 95% intervals over seeds")
        st.plotly_chart(tradeoff_figure(arm_rows, _charts.palette_colors(runs[M.LB_ALGORITHM])), key="diag-tradeoff")
    else:
        st.info("No finished run with diagnostics yet (runs log `diag/...` metrics unless "
                "diagnostics.proximity_every=0).")
    chosen_runs = _curves.select_arms(runs, "diag_arms")
    st.caption("Curves: mean over the seeds of each arm, band lowest to highest seed; never averaged across "
               "learning rates or optimizers.")
    if chosen_runs.empty:
        st.info(f"Choose at least one arm in `{_curves.ARM_SELECTOR}`.")
        return
    colors = _charts.palette_colors(_arms.arm_table(runs)[_arms.ARM])
    for col, metric in zip(st.columns(len(CURVES)), CURVES):
        with col:
            band = _curves.metric_band(uri, chosen_runs, metric, "step")
            if band.empty:
                st.info(f"No selected run logged `{metric}`.")
                continue
            st.plotly_chart(_charts.curve_figure(band, metric, "step", colors), key=f"diag-{metric}")
