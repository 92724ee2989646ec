"""Plotly figures and the pandas reshaping behind them. No Streamlit here, so they can be tested alone."""

from __future__ import annotations

import pandas as pd
import plotly.colors
import plotly.graph_objects as go

from isopo_bench import metric_names as M
from isopo_bench.dashboards._arms import ARM

# Axis titles with units, so a chart reads without explanation. Unknown metrics fall back to their name.
LABELS = {
    M.REWARD_MEAN: "mean training reward (0-1)",
    M.REWARD_STD: "reward std within the batch",
    M.REWARD_SOLVED_GROUPS: "fraction of groups all correct",
    M.REWARD_ZERO_GROUPS: "fraction of groups all wrong",
    M.ADVANTAGE_ABS_MEAN: "mean |advantage|",
    M.EVAL_ACCURACY: "held-out accuracy (fraction correct, greedy)",
    M.EVAL_ACCURACY_FLEXIBLE: "held-out accuracy, flexible extraction (fraction)",
    M.EVAL_MEAN_LEN: "held-out completion length (tokens)",
    M.EVAL_PASS_AT_K: "held-out pass@k (sampled, unbiased estimator)",
    M.EVAL_MEAN_AT_K: "held-out mean@k (sampled accuracy)",
    M.ENTROPY: "policy entropy (nats per token)",
    M.GRAD_NORM: "gradient L2 norm (before clipping)",
    M.GRAD_CLIPPED: "fraction of optimizer steps clipped",
    M.LOSS: "loss",
    M.LR: "learning rate",
    M.ROLLOUT_MEAN_LEN: "mean completion length (tokens)",
    M.ROLLOUT_TOKENS: "completion tokens per step",
    M.ROLLOUT_TRUNCATED: "fraction of completions truncated",
    M.ROLLOUT_TOKENS_PER_S: "rollout throughput (tokens/s)",
    M.MISMATCH_MEAN_ABS: "mean |log p sampler - log p trainer| (nats)",
    M.MISMATCH_MAX_ABS: "max |log p sampler - log p trainer| (nats)",
    M.MISMATCH_RATIO_MEAN: "mean importance ratio trainer/sampler",
    M.MISMATCH_RATIO_MAX: "max importance ratio trainer/sampler",
    M.TIME_ELAPSED: "training wall-clock (s, evaluation excluded)",
    M.DIAG_KL_TOK: "token KL(pi_before || pi_after) per step (nats)",
    M.DIAG_COS_UPDATE_NAT: "cos(update, damped natural gradient), rho = 1",
    M.DIAG_SURROGATE_PER_KL: "surrogate improvement per unit KL",
}
STEP_LABEL = "training step"
RUN, ALGO = M.LB_RUN_ID, M.LB_ALGORITHM
PHASE_NAMES = {
    M.TIME_ROLLOUT: "rollout", M.TIME_REWARD: "reward", M.TIME_OLD_LOGP: "old-logprob forward",
    M.TIME_REF_LOGP: "reference forward", M.TIME_UPDATE: "update", M.TIME_SYNC: "weight sync", M.TIME_EVAL: "eval",
    M.TIME_DIAGNOSTICS: "diagnostics",
}


def label(metric: str) -> str:
    if metric in LABELS:
        return LABELS[metric]
    return f"{metric} (s)" if metric.startswith("time/") else metric


def _rgba(color: str, alpha: float) -> str:
    r, g, b = plotly.colors.hex_to_rgb(color) if color.startswith("#") else plotly.colors.unlabel_rgb(color)
    return f"rgba({int(r)},{int(g)},{int(b)},{alpha})"


def palette_colors(names) -> dict[str, str]:
    """One fixed color per name (algorithm or arm), so it looks the same in every chart of a page."""
    palette = plotly.colors.qualitative.Plotly
    return {name: palette[i % len(palette)] for i, name in enumerate(sorted(set(names)))}


def curve_figure(band: pd.DataFrame, metric: str, x: str, colors: dict[str, str] | None = None,
                 band_name: str = "seed range") -> go.Figure:
    """One line per arm (mean over its seeds) with a shaded band (its lo..hi columns) around it."""
    fig = go.Figure()
    colors = colors or palette_colors(band[ARM])
    for arm, rows in band.groupby(ARM, sort=True):
        color = colors[arm]
        xs = rows[x].tolist()
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=rows["hi"].tolist() + rows["lo"].tolist()[::-1], fill="toself",
                                 mode="lines", fillcolor=_rgba(color, 0.18), line={"width": 0}, hoverinfo="skip",
                                 legendgroup=arm, showlegend=False, name=f"{arm} {band_name}"))
        fig.add_trace(go.Scatter(x=xs, y=rows["mean"], mode="lines+markers", name=arm, legendgroup=arm,
                                 line={"color": color}, customdata=rows[["lo", "hi", "seeds"]],
                                 hovertemplate=f"%{{y:.4g}} ({band_name} %{{customdata[0]:.4g}} to "
                                               "%{customdata[1]:.4g}, %{customdata[2]} seeds)"))
    fig.update_layout(xaxis_title=STEP_LABEL if x == "step" else label(M.TIME_ELAPSED), yaxis_title=label(metric),
                      legend={"title": {"text": "algorithm · lr · optimizer"}, "orientation": "h", "y": 1.02,
                              "yanchor": "bottom", "x": 0}, margin={"t": 30}, height=440)
    return fig


def phase_table(histories: dict[str, pd.DataFrame], runs: pd.DataFrame) -> pd.DataFrame:
    """Seconds per training step of every phase, per algorithm: each run's phase total divided by its
    number of training steps (eval runs only at some steps, so a plain mean would overstate it), then
    averaged over the algorithm's runs."""
    steps = histories[M.TIME_STEP].groupby(RUN)["step"].nunique().rename("steps")
    per_run = []
    for metric, hist in histories.items():
        if metric == M.TIME_STEP or hist.empty:
            continue
        total = hist.groupby(RUN)["value"].sum().rename("total").to_frame().join(steps, how="inner")
        per_run.append(pd.DataFrame({RUN: total.index, "phase": PHASE_NAMES.get(metric, metric),
                                     "seconds": (total["total"] / total["steps"]).to_numpy()}))
    if not per_run:
        return pd.DataFrame(columns=[ALGO, "phase", "seconds"])
    table = pd.concat(per_run).merge(runs[[RUN, ALGO]], on=RUN)
    return table.groupby([ALGO, "phase"], sort=False)["seconds"].mean().reset_index()


def phase_figure(table: pd.DataFrame) -> go.Figure:
    order = [p for p in PHASE_NAMES.values() if p in set(table["phase"])]
    fig = go.Figure()
    for phase in order:
        rows = table[table["phase"] == phase]
        fig.add_trace(go.Bar(x=rows[ALGO], y=rows["seconds"], name=phase,
                             hovertemplate="%{x}: %{y:.3g} s/step"))
    fig.update_layout(barmode="stack", xaxis_title="algorithm", yaxis_title="wall-clock per training step (s)",
                      legend_title="phase", margin={"t": 30}, height=420)
    return fig


def bar_with_ci(table: pd.DataFrame, x: str, y: str, lo: str, hi: str, y_title: str) -> go.Figure:
    """Bars of a mean with asymmetric error bars from CI bounds."""
    fig = go.Figure(go.Bar(
        x=table[x].astype(str), y=table[y],
        error_y={"type": "data", "symmetric": False, "array": table[hi] - table[y], "arrayminus": table[y] - table[lo]},
        hovertemplate="%{x}: %{y:.4g}"))
    fig.update_layout(xaxis_title=x, yaxis_title=y_title, margin={"t": 30}, height=380)
    return fig
