"""Run details tab: one run's identity (tags incl. commit, config hash, the full model path and the
start_hash of the weights it started from), config, summary, sample completions with their rewards, and
the sampler-vs-trainer log-prob mismatch."""

from __future__ import annotations

import re

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from isopo_bench import metric_names as M
from isopo_bench.dashboards import _arms, _charts, _data

IDENTITY_TAGS = (M.TAG_ALGORITHM, M.TAG_TASK, M.TAG_MODEL_DISPLAY, M.TAG_MODEL, M.TAG_START_HASH, M.TAG_SEED,
                 M.TAG_LR, M.TAG_OPTIMIZER, M.TAG_SUITE, M.TAG_COMMIT, M.TAG_CONFIG_HASH, M.TAG_VERSION,
                 M.TAG_SCORER_VERSION, M.TAG_MACHINE)
"""The model tag is the full model path (or hub id); model_display its short name where the run logged one."""
MISMATCH = (M.MISMATCH_MEAN_ABS, M.MISMATCH_MAX_ABS, M.MISMATCH_RATIO_MEAN, M.MISMATCH_RATIO_MAX)


def run_label(row: pd.Series) -> str:
    return f"{row[_arms.ARM]} | seed {row[M.LB_SEED]} | {row[M.LB_STATUS]} | {row[M.LB_RUN_ID][:8]}"


def render_identity(record: dict) -> None:
    tags = record["tags"]
    cols = st.columns(4)
    cols[0].metric("status", record["status"])
    cols[1].metric("commit", tags.get(M.TAG_COMMIT, "not logged"))
    cols[2].metric("config hash", tags.get(M.TAG_CONFIG_HASH, "not logged"))
    final = record["metrics"].get(M.FINAL_ACCURACY)
    cols[3].metric("final held-out accuracy", "not yet" if final is None else f"{final:.3f}")
    if tags.get(M.TAG_STATUS_DETAIL):
        st.warning(f"Status detail: {tags[M.TAG_STATUS_DETAIL]}")
    shown = [{"tag": t, "value": tags.get(t, "not logged")} for t in IDENTITY_TAGS]
    st.table(pd.DataFrame(shown).set_index("tag"))


def render_config(uri: str, run_id: str, record: dict) -> None:
    config = _data.artifact_json(uri, run_id, "config.json")
    with st.expander("Resolved config (config.json)", expanded=False):
        if config is None:
            st.info("config.json was not logged; the flattened parameters follow.")
            st.json(record["params"])
        else:
            st.json(config)
    summary = _data.artifact_json(uri, run_id, "summary.json")
    with st.expander("Summary (summary.json)", expanded=False):
        if summary is None:
            st.info("No summary yet: it is written when the run finishes.")
        else:
            st.json(summary)


def step_label(path: str) -> str:
    """samples/eval_step_00020.json -> "step 20" (other names as they are)."""
    match = re.search(r"eval_step_(\d+)\.json$", path)
    return f"step {int(match.group(1))}" if match else path


def render_samples(uri: str, run_id: str) -> None:
    st.subheader("Sample completions at evaluation")
    files = sorted(p for p in _data.artifact_paths(uri, run_id, "samples") if p.endswith(".json"))
    if not files:
        st.info("This run has saved no sample completions yet (they are saved at each evaluation).")
        return
    chosen = st.selectbox("Evaluation step", files, index=len(files) - 1, key=f"samples-{run_id}",
                          format_func=step_label)
    rows = pd.DataFrame(_data.artifact_json(uri, run_id, chosen) or [])
    if rows.empty:
        st.info("The sample file is empty.")
        return
    if "reward" in rows:
        st.caption(f"The first {len(rows)} greedy completions of this evaluation; their mean reward is "
                   f"{rows['reward'].mean():.3f}")
    st.dataframe(rows, hide_index=True, key=f"samples-table-{run_id}",
                 column_config={"completion": st.column_config.TextColumn(width="large")})


def render_mismatch(uri: str, run_id: str) -> None:
    st.subheader("Sampler vs trainer log-prob mismatch")
    fig, found = go.Figure(), False
    for metric in MISMATCH:
        hist = _data.history(uri, (run_id,), metric)
        if not hist.empty:
            found = True
            hist = hist.sort_values("step")
            fig.add_trace(go.Scatter(x=hist["step"], y=hist["value"], mode="lines+markers", name=_charts.label(metric)))
    if not found:
        st.info("This run logged no mismatch metrics (rollout/logp_mismatch_*, rollout/is_ratio_*).")
        return
    fig.update_layout(xaxis_title=_charts.STEP_LABEL, yaxis_title="nats (|log p| differences) or ratio",
                      legend_title="metric", margin={"t": 30}, height=380)
    st.caption("Both policies score the same sampled tokens before the step's update; with the HF engine the "
               "sampler is the trainer, so values near 0 (differences) and 1 (ratios) are expected.")
    st.plotly_chart(fig, key=f"mismatch-{run_id}")


def render(uri: str, runs: pd.DataFrame) -> None:
    labels = {run_label(row): row[M.LB_RUN_ID] for _, row in _arms.with_arm(runs).iterrows()}
    run_id = labels[st.selectbox("Run", list(labels), key="detail-run")]
    record = _data.run_record(uri, run_id)
    st.caption(f"MLflow run {run_id} ({record['name']})")
    render_identity(record)
    render_config(uri, run_id, record)
    render_samples(uri, run_id)
    render_mismatch(uri, run_id)
