"""The leaderboard: MLflow runs -> one row per run -> aggregates per algorithm (and per learning rate).

Shared by `isopo-bench leaderboard`, the suite runner and the Streamlit dashboard, so it imports only
pandas, numpy, scipy, mlflow and the package's torch-free modules (never torch or the trainer).

Rules: comparisons happen only inside one (suite version, task, model, optimizer) cell; runs that failed
or did not finish are counted per cell and never averaged in; every aggregate row names the commits and
the config hashes it was computed from. Intervals are two-sided 95% Student-t intervals over seeds; the
seed-paired comparisons against the baseline, their bootstrap and MDE, and the learning-rate window are
isopo_bench.comparisons' (docs/statistics.md).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd

from isopo_bench import metric_names as M
from isopo_bench.start_check import START_COLUMNS, require_single_start, select_start_hash, start_columns
from isopo_bench.comparisons import (
    CELL, COMPARISON_DISPLAY_COLUMNS, COMPARISONS_TITLE, DEFAULT_OPTIMIZER, GROUP, ON_BOARD, ROBUSTNESS_COLUMNS,
    board_comparisons, comparisons, lr_robustness, readable, with_default_optimizer,
)
from isopo_bench.item_record import decode_correct
from isopo_bench.statistics import t_interval

REINFORCE = "reinforce"
RUN_COLUMNS = [
    M.LB_RUN_ID, M.LB_RUN_NAME, M.LB_STATUS, *GROUP, M.LB_ALGORITHM, M.LB_OPTIMIZER, M.LB_LR, M.LB_SEED, M.LB_STEPS,
    M.LB_PLANNED_STEPS, M.LB_FINAL_ACC, M.LB_BEST_ACC, M.LB_INITIAL_ACC, M.LB_PASS_AT_K, M.LB_MEAN_AT_K, M.LB_ELAPSED, M.LB_UPDATE_S,
    M.LB_STEP_S, M.LB_EVAL_CURVE, M.LB_COMMIT, M.LB_CONFIG_HASH, M.LB_MACHINE, M.LB_STATUS_DETAIL, M.LB_START_TIME,
    M.LB_UPDATE_CPU_S, M.LB_FLOOR, M.LB_ITEMS_CORRECT, M.LB_ITEMS_DIGEST, M.LB_ITEMS_STEP,
]
# Per-step diagnostics (isopo_bench.diagnostics): per run the median over steps; per (algorithm, lr) the
# mean over seeds (the KL with its 95% interval over seeds). NaN for runs logged without diagnostics.
DIAG_RUN = {M.LB_DIAG_KL: M.DIAG_KL_TOK, M.LB_DIAG_COS: M.DIAG_COS_UPDATE_NAT, M.LB_DIAG_GAIN_PER_KL: M.DIAG_SURROGATE_PER_KL}
RUN_COLUMNS += list(DIAG_RUN) + START_COLUMNS
DIAG_LR_COLUMNS = [M.LB_DIAG_KL, M.LB_DIAG_KL_CI_LO, M.LB_DIAG_KL_CI_HI, M.LB_DIAG_COS, M.LB_DIAG_GAIN_PER_KL]
COUNTS = [M.LB_N_FINISHED, M.LB_N_FAILED, M.LB_N_INCOMPLETE]
PROVENANCE = [M.LB_COMMITS, M.LB_CONFIG_HASHES, M.LB_MACHINE]
LR_KEY = [*GROUP, M.LB_ALGORITHM, M.LB_OPTIMIZER, M.LB_LR]
LR_COLUMNS = [
    *LR_KEY, *COUNTS, M.LB_SEEDS, M.LB_ACC_MEAN, M.LB_ACC_CI_LO, M.LB_ACC_CI_HI, M.LB_GAIN_MEAN,
    M.LB_BEST_ACC_MEAN, M.LB_BUDGET_S, M.LB_ACC_AT_BUDGET, M.LB_UPDATE_S, M.LB_STEP_S, *PROVENANCE,
    *DIAG_LR_COLUMNS,
]
DIFF_COLUMNS = [*CELL, M.LB_ALGORITHM, M.LB_BASELINE, M.LB_N_PAIRS, M.LB_DIFF_MEAN, M.LB_DIFF_CI_LO, M.LB_DIFF_CI_HI]
BOARD_COLUMNS = [
    *GROUP, M.LB_ALGORITHM, M.LB_OPTIMIZER, *COUNTS, M.LB_LRS_FINISHED, M.LB_ROBUST_MEAN, M.LB_ROBUST_WORST,
    M.LB_BEST_LR, *ROBUSTNESS_COLUMNS, M.LB_GAIN_MEAN, M.LB_SEEDS, M.LB_ACC_MEAN, M.LB_ACC_CI_LO, M.LB_ACC_CI_HI,
    M.LB_BEST_ACC_MEAN, M.LB_BUDGET_S, M.LB_ACC_AT_BUDGET, M.LB_THRESHOLD, M.LB_STEPS_TO_THRESHOLD, M.LB_THRESHOLD_REACHED, M.LB_UPDATE_S,
    M.LB_STEP_S, M.LB_OVERHEAD, M.LB_BASELINE, M.LB_N_PAIRS, M.LB_DIFF_MEAN, M.LB_DIFF_CI_LO, M.LB_DIFF_CI_HI,
    M.LB_PASS_AT_K, M.LB_MEAN_AT_K, *PROVENANCE, M.LB_FLOOR, M.LB_OVERHEAD_CLOCK, M.LB_OVERHEAD_NOISE,
    M.LB_OVERHEAD_RELIABLE, *ON_BOARD,
]
DISPLAY_COLUMNS = [
    M.LB_ALGORITHM, M.LB_OPTIMIZER, *COUNTS, M.LB_ROBUST_MEAN, M.LB_ROBUST_WORST, M.LB_BEST_LR, M.LB_BEST_LR_AT_EDGE,
    M.LB_LR_WINDOW, M.LB_ACC_MEAN, M.LB_ACC_CI_LO, M.LB_ACC_CI_HI, M.LB_ACC_AT_BUDGET, M.LB_BEST_ACC_MEAN,
    M.LB_PASS_AT_K, M.LB_MEAN_AT_K, M.LB_STEPS_TO_THRESHOLD, M.LB_UPDATE_S, M.LB_STEP_S, M.LB_OVERHEAD, M.LB_FLOOR,
    M.LB_OVERHEAD_RELIABLE, M.LB_SEED_DIFF, M.LB_MDE, M.LB_COMMITS,
]
"""The columns printed to the terminal (the seed-paired difference at each arm's best lr and its MDE; the
comparisons section gives the intervals and the verdict); the CSV and Markdown exports hold BOARD_COLUMNS."""
LR_DISPLAY_COLUMNS = [
    M.LB_ALGORITHM, M.LB_OPTIMIZER, M.LB_LR, *COUNTS, M.LB_SEEDS, M.LB_ACC_MEAN, M.LB_ACC_CI_LO, M.LB_ACC_CI_HI,
    M.LB_GAIN_MEAN, M.LB_BEST_ACC_MEAN, M.LB_ACC_AT_BUDGET, M.LB_UPDATE_S, M.LB_STEP_S, M.LB_DIAG_KL, M.LB_DIAG_COS,
    M.LB_DIAG_GAIN_PER_KL,
]

# ------------------------------------------------------------------------------------------------
def load_runs(tracking_uri: str, experiment: str | None = None, suite: str | None = None) -> pd.DataFrame:
    """One row per run (RUN_COLUMNS) of an experiment (all when None), optionally of one suite label.
    A config hash recorded twice (a run started again from scratch) keeps its FINISHED, else newest, record."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    ids = _experiment_ids(client, experiment)
    where = f"tags.{M.TAG_SUITE} = '{suite}'" if suite else ""
    rows = [_run_row(client, run) for run in _search(client, ids, where)]
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    df["_done"] = df[M.LB_STATUS] == "FINISHED"
    df = df.sort_values(["_done", M.LB_START_TIME]).drop(columns="_done")
    keyed = df[M.LB_CONFIG_HASH] != ""
    df = pd.concat([df[keyed].drop_duplicates(M.LB_CONFIG_HASH, keep="last"), df[~keyed]])
    return df.sort_values([*LR_KEY, M.LB_SEED]).reset_index(drop=True)


def _experiment_ids(client, experiment: str | None) -> list[str]:
    if experiment is None:
        return [e.experiment_id for e in client.search_experiments()]
    exp = client.get_experiment_by_name(experiment)
    return [exp.experiment_id] if exp else []


def _search(client, ids: list[str], where: str):
    token = None
    while ids:
        page = client.search_runs(ids, where, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _history(client, run_id: str, metric: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))


def _run_row(client, run) -> dict:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    hist = {k: _history(client, run.info.run_id, k)
            for k in (M.TIME_UPDATE, M.TIME_STEP, M.TIME_ELAPSED, M.EVAL_ACCURACY, M.TIME_CPU_UPDATE, M.COST_FLOP_FLOOR,
                      *DIAG_RUN.values())}
    elapsed = dict(hist[M.TIME_ELAPSED]) | {0: 0.0}
    return {
        M.LB_RUN_ID: run.info.run_id, M.LB_RUN_NAME: run.info.run_name, M.LB_STATUS: run.info.status,
        M.LB_SUITE: tags.get(M.TAG_SUITE, ""), M.LB_TASK: tags.get(M.TAG_TASK, ""), M.LB_MODEL: tags.get(M.TAG_MODEL, ""),
        M.LB_ALGORITHM: tags.get(M.TAG_ALGORITHM, ""), M.LB_OPTIMIZER: tags.get(M.TAG_OPTIMIZER, DEFAULT_OPTIMIZER),
        M.LB_LR: float(tags.get(M.TAG_LR, "nan")),
        M.LB_SEED: int(tags.get(M.TAG_SEED, "-1")), M.LB_STEPS: max(elapsed),
        M.LB_PLANNED_STEPS: int(params.get("optim.steps", "0")),
        M.LB_FINAL_ACC: metrics.get(M.FINAL_ACCURACY, math.nan), M.LB_BEST_ACC: metrics.get(M.BEST_ACCURACY, math.nan),
        M.LB_INITIAL_ACC: metrics.get(M.INITIAL_ACCURACY, math.nan), M.LB_ELAPSED: max(elapsed.values()),
        # sampled evaluation (eval.samples > 0): the latest value logged = the final evaluation's; NaN when off
        M.LB_PASS_AT_K: metrics.get(M.EVAL_PASS_AT_K, math.nan), M.LB_MEAN_AT_K: metrics.get(M.EVAL_MEAN_AT_K, math.nan),
        M.LB_UPDATE_S: _median(hist[M.TIME_UPDATE]), M.LB_STEP_S: _median(hist[M.TIME_STEP]),
        M.LB_EVAL_CURVE: [(s, elapsed.get(s, math.nan), acc) for s, acc in hist[M.EVAL_ACCURACY]],
        M.LB_COMMIT: tags.get(M.TAG_COMMIT, ""), M.LB_CONFIG_HASH: tags.get(M.TAG_CONFIG_HASH, ""),
        M.LB_MACHINE: tags.get(M.TAG_MACHINE, ""), M.LB_STATUS_DETAIL: tags.get(M.TAG_STATUS_DETAIL, ""),
        M.LB_START_TIME: run.info.start_time,
        M.LB_UPDATE_CPU_S: _median(hist[M.TIME_CPU_UPDATE]), M.LB_FLOOR: _median(hist[M.COST_FLOP_FLOOR]),
        M.LB_ITEMS_CORRECT: np.asarray(decode_correct(tags.get(M.TAG_ITEMS_CORRECT, "")), dtype=np.uint8),
        M.LB_ITEMS_DIGEST: tags.get(M.TAG_ITEMS_DIGEST, ""), M.LB_ITEMS_STEP: int(tags.get(M.TAG_ITEMS_STEP, "-1")),
    } | {column: _median(hist[metric]) for column, metric in DIAG_RUN.items()} | start_columns(tags)


def _median(points: list[tuple[int, float]]) -> float:
    return float(np.median([v for _, v in points])) if points else math.nan


def load_metric_history(tracking_uri: str, run_ids: list[str], metric: str) -> pd.DataFrame:
    """Long format: one row per (run_id, step) with the metric's value and its timestamp (ms)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    rows = [(rid, m.step, m.value, m.timestamp) for rid in run_ids for m in client.get_metric_history(rid, metric)]
    return pd.DataFrame(rows, columns=[M.LB_RUN_ID, "step", "value", "timestamp"]).sort_values([M.LB_RUN_ID, "step"])


# ------------------------------------------------------------------------------------------------
def _finished(df: pd.DataFrame) -> pd.DataFrame:
    return df[df[M.LB_STATUS] == "FINISHED"]


def _counts(df: pd.DataFrame) -> dict:
    status = df[M.LB_STATUS]
    failed = int((status == "FAILED").sum())
    finished = int((status == "FINISHED").sum())
    return {M.LB_N_FINISHED: finished, M.LB_N_FAILED: failed, M.LB_N_INCOMPLETE: len(df) - finished - failed}


def _joined(values) -> str:
    return ",".join(sorted({str(v) for v in values if str(v)}))


def _provenance(df: pd.DataFrame) -> dict:
    return {M.LB_COMMITS: _joined(df[M.LB_COMMIT]), M.LB_CONFIG_HASHES: _joined(df[M.LB_CONFIG_HASH]),
            M.LB_MACHINE: _joined(df[M.LB_MACHINE])}


def accuracy_at(curve: list[tuple[int, float, float]], budget_s: float) -> float:
    """Accuracy of the last evaluation reached within `budget_s` seconds of training."""
    within = [acc for _, t, acc in curve if t <= budget_s + 1e-9]
    return within[-1] if within else math.nan


def steps_to(curve: list[tuple[int, float, float]], threshold: float) -> float:
    """First evaluated step whose accuracy reaches the threshold; NaN when it never does."""
    return next((float(step) for step, _, acc in curve if acc >= threshold), math.nan)


def with_budget_accuracy(runs_df: pd.DataFrame) -> pd.DataFrame:
    """Adds LB_BUDGET_S and LB_ACC_AT_BUDGET to finished runs: the equal budget of a cell is the time
    the fastest algorithm needed to finish all its runs (min over algorithms of the max train time)."""
    out = with_default_optimizer(runs_df)
    out[M.LB_BUDGET_S], out[M.LB_ACC_AT_BUDGET] = math.nan, math.nan
    fin = _finished(out)
    for _, g in fin.groupby(CELL):
        budget = g.groupby(M.LB_ALGORITHM)[M.LB_ELAPSED].max().min()
        out.loc[g.index, M.LB_BUDGET_S] = budget
        out.loc[g.index, M.LB_ACC_AT_BUDGET] = [accuracy_at(c, budget) for c in g[M.LB_EVAL_CURVE]]
    return out


def accuracy_vs_lr(runs_df: pd.DataFrame) -> pd.DataFrame:
    """One row per (suite, task, model, algorithm, optimizer, lr): run counts, final accuracy mean and
    95% CI over seeds, mean gain (final - initial), best and equal-budget accuracy, median step times,
    provenance (LR_COLUMNS)."""
    df = with_budget_accuracy(runs_df)
    rows = []
    for key, g in df.groupby(LR_KEY, dropna=False):
        fin = _finished(g)
        mean, lo, hi = t_interval(fin[M.LB_FINAL_ACC])
        rows.append(dict(zip(LR_KEY, key)) | _counts(g) | {
            M.LB_SEEDS: ",".join(str(s) for s in sorted(fin[M.LB_SEED])),
            M.LB_ACC_MEAN: mean, M.LB_ACC_CI_LO: lo, M.LB_ACC_CI_HI: hi,
            M.LB_GAIN_MEAN: (fin[M.LB_FINAL_ACC] - fin[M.LB_INITIAL_ACC]).mean(),
            M.LB_BEST_ACC_MEAN: fin[M.LB_BEST_ACC].mean(), M.LB_BUDGET_S: fin[M.LB_BUDGET_S].max(),
            M.LB_ACC_AT_BUDGET: fin[M.LB_ACC_AT_BUDGET].mean(), M.LB_UPDATE_S: fin[M.LB_UPDATE_S].median(),
            M.LB_STEP_S: fin[M.LB_STEP_S].median(),
        } | _provenance(g) | _diag_columns(fin))
    return pd.DataFrame(rows, columns=LR_COLUMNS)


def _diag_columns(fin: pd.DataFrame) -> dict:
    """Mean over seeds of the runs' median diagnostics (seeds without them are left out)."""
    out = dict.fromkeys(DIAG_LR_COLUMNS, math.nan)
    if M.LB_DIAG_KL not in fin:
        return out
    kl = fin[M.LB_DIAG_KL].dropna()
    if len(kl):
        out[M.LB_DIAG_KL], out[M.LB_DIAG_KL_CI_LO], out[M.LB_DIAG_KL_CI_HI] = t_interval(kl)
    out[M.LB_DIAG_COS] = fin[M.LB_DIAG_COS].mean()
    out[M.LB_DIAG_GAIN_PER_KL] = fin[M.LB_DIAG_GAIN_PER_KL].mean()
    return out


def paired_differences(runs_df: pd.DataFrame, baseline: str = REINFORCE, metric: str = M.LB_FINAL_ACC) -> pd.DataFrame:
    """The pooled comparison, per algorithm: mean and 95% CI of (algorithm - baseline) over finished runs
    paired by (seed, lr), over every lr both ran (the seed-paired comparisons at chosen lrs are
    isopo_bench.comparisons')."""
    rows = []
    for key, g in _finished(with_default_optimizer(runs_df)).groupby(CELL):
        base = g[g[M.LB_ALGORITHM] == baseline].set_index([M.LB_SEED, M.LB_LR])[metric]
        for algo, a in g[g[M.LB_ALGORITHM] != baseline].groupby(M.LB_ALGORITHM):
            pairs = a.set_index([M.LB_SEED, M.LB_LR])[metric].to_frame("x").join(base.rename("b"), how="inner")
            diff = (pairs["x"] - pairs["b"]).dropna()
            mean, lo, hi = t_interval(diff)
            rows.append(dict(zip(CELL, key)) | {M.LB_ALGORITHM: algo, M.LB_BASELINE: baseline, M.LB_N_PAIRS: len(diff),
                                                 M.LB_DIFF_MEAN: mean, M.LB_DIFF_CI_LO: lo, M.LB_DIFF_CI_HI: hi})
    return pd.DataFrame(rows, columns=DIFF_COLUMNS)


def leaderboard(runs_df: pd.DataFrame, baseline: str = REINFORCE, threshold: float | None = None) -> pd.DataFrame:
    """One row per (suite, task, model, algorithm, optimizer) (BOARD_COLUMNS). Accuracy, CI, equal-budget
    accuracy and steps to threshold are at the algorithm's best learning rate (highest mean final
    accuracy); the threshold defaults to default_threshold of the cell. The seed-paired comparison
    columns (ON_BOARD) are the `own best lr each` comparison against the baseline."""
    require_single_start(runs_df, GROUP)  # runs from different starting weights are never compared (start_check)
    by_lr, runs = accuracy_vs_lr(runs_df), with_budget_accuracy(runs_df)
    diffs = paired_differences(runs_df, baseline).set_index([*CELL, M.LB_ALGORITHM])
    seed_paired = board_comparisons(runs_df, baseline)
    rows = []
    for key, cell in runs.groupby(CELL):
        lr_rows = by_lr[(by_lr[CELL] == pd.Series(key, index=CELL)).all(axis=1)]
        best = lr_rows.groupby(M.LB_ALGORITHM)[M.LB_ACC_MEAN].max().max()
        initial = _finished(cell)[M.LB_INITIAL_ACC].median()
        thr = threshold if threshold is not None else default_threshold(initial, best)
        # The update-time ratio is against the same baseline as the paired differences, in process CPU
        # time when every finished run logged it (what concurrent workers do not inflate), else wall time.
        clock = _update_clock(cell)
        ref = _finished(cell[cell[M.LB_ALGORITHM] == baseline])[clock].median()
        cell_rows = []
        for algo, g in cell.groupby(M.LB_ALGORITHM):
            row = _algorithm_row(g, lr_rows[lr_rows[M.LB_ALGORITHM] == algo], thr, ref, clock)
            diff = diffs.loc[(*key, algo)].to_dict() if (*key, algo) in diffs.index else {M.LB_N_PAIRS: 0}
            cell_rows.append(dict(zip(CELL, key)) | {M.LB_ALGORITHM: algo, M.LB_BASELINE: baseline} | row
                             | {c: diff.get(c, math.nan) for c in (M.LB_DIFF_MEAN, M.LB_DIFF_CI_LO, M.LB_DIFF_CI_HI)}
                             | {M.LB_N_PAIRS: int(diff[M.LB_N_PAIRS])} | seed_paired.get((*key, algo), {}))
        rows += with_noise_check(cell_rows, clock)
    board = pd.DataFrame(rows, columns=BOARD_COLUMNS)
    return board.sort_values([*CELL, M.LB_ACC_MEAN], ascending=[True] * len(CELL) + [False]).reset_index(drop=True)


def default_threshold(initial: float, best: float) -> float:
    """Half-way from the group's initial accuracy to the best algorithm's mean final accuracy, so that
    steps-to-threshold counts steps to half the best improvement (a fraction of the best final accuracy
    alone can lie below a warm start's initial accuracy); the best itself when nothing improved."""
    if math.isnan(initial) or not best > initial:
        return best
    return initial + 0.5 * (best - initial)


NULL_WORK = ("gspo", "cispo")
"""Algorithms that do no extra work per optimizer step over REINFORCE: their in-suite update-time ratio
measures the suite's timing noise."""
NOISE_TOLERANCE = 0.05


def _update_clock(group: pd.DataFrame) -> str:
    fin = _finished(group)
    if M.LB_UPDATE_CPU_S not in fin or not len(fin):
        return M.LB_UPDATE_S
    cpu = fin[M.LB_UPDATE_CPU_S]
    return M.LB_UPDATE_CPU_S if cpu.notna().all() and (cpu > 0).all() else M.LB_UPDATE_S


def with_noise_check(rows: list[dict], clock: str = M.LB_UPDATE_S) -> list[dict]:
    """Adds to every row of one group the noise floor of its update-time column: the ratio of a
    no-extra-work algorithm (NULL_WORK) must read 1.00 +- NOISE_TOLERANCE, else the column is flagged."""
    null = {r[M.LB_ALGORITHM]: r[M.LB_OVERHEAD] for r in rows
            if r[M.LB_ALGORITHM] in NULL_WORK and not math.isnan(r[M.LB_OVERHEAD])}
    clock_name = "process CPU" if clock == M.LB_UPDATE_CPU_S else "wall"
    if not null:
        noise, verdict = math.nan, f"unchecked: no finished {'/'.join(NULL_WORK)} run to measure the noise"
    else:
        noise = max(abs(v - 1.0) for v in null.values())
        reads = ", ".join(f"{a} {v:.2f}x" for a, v in sorted(null.items()))
        verdict = (f"yes: {reads} (within 1.00 +- {NOISE_TOLERANCE:.2f})" if noise <= NOISE_TOLERANCE else
                   f"NOT RELIABLE: {reads}, outside 1.00 +- {NOISE_TOLERANCE:.2f}; use `isopo-bench overhead`")
    return [r | {M.LB_OVERHEAD_CLOCK: clock_name, M.LB_OVERHEAD_NOISE: noise, M.LB_OVERHEAD_RELIABLE: verdict}
            for r in rows]


def _algorithm_row(g: pd.DataFrame, lr_rows: pd.DataFrame, threshold: float, baseline_update_s: float,
                   clock: str = M.LB_UPDATE_S) -> dict:
    fin = _finished(g)
    valid = lr_rows.dropna(subset=[M.LB_ACC_MEAN])
    row = _counts(g) | _provenance(g) | {
        M.LB_LRS_FINISHED: f"{len(valid)}/{len(lr_rows)}", M.LB_ROBUST_MEAN: valid[M.LB_ACC_MEAN].mean(),
        M.LB_ROBUST_WORST: valid[M.LB_ACC_MEAN].min(), M.LB_THRESHOLD: threshold,
        M.LB_UPDATE_S: fin[M.LB_UPDATE_S].median(), M.LB_STEP_S: fin[M.LB_STEP_S].median(),
        M.LB_OVERHEAD: fin[clock].median() / baseline_update_s,
        M.LB_FLOOR: fin[M.LB_FLOOR].median() if M.LB_FLOOR in fin else math.nan,
    }
    if valid.empty:
        return row
    best = valid.loc[valid[M.LB_ACC_MEAN].idxmax()]
    at_best = fin[fin[M.LB_LR] == best[M.LB_LR]]
    sampled = {c: at_best[c].mean() if c in at_best and at_best[c].notna().any() else math.nan
               for c in (M.LB_PASS_AT_K, M.LB_MEAN_AT_K)}  # mean over seeds at the best lr
    steps = [steps_to(c, threshold) for c in at_best[M.LB_EVAL_CURVE]]
    reached = [s for s in steps if not math.isnan(s)]
    return row | {c: best[c] for c in (M.LB_SEEDS, M.LB_ACC_MEAN, M.LB_ACC_CI_LO, M.LB_ACC_CI_HI, M.LB_GAIN_MEAN,
                                         M.LB_BEST_ACC_MEAN, M.LB_BUDGET_S, M.LB_ACC_AT_BUDGET)} | {
        M.LB_BEST_LR: best[M.LB_LR], M.LB_STEPS_TO_THRESHOLD: float(np.mean(reached)) if reached else math.nan,
        M.LB_THRESHOLD_REACHED: f"{len(reached)}/{len(steps)}",
    } | sampled | lr_robustness(lr_rows, best[M.LB_LR])


# ------------------------------------------------------------------------------------------------
def _cell(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3g}" if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.3f}"
    text = str(value).replace("|", "\\|")
    # Warm-start models are recorded by absolute path; the cache key at its end identifies them.
    return ".../" + "/".join(text.split("/")[-2:]) if text.startswith("/") and len(text) > 40 else text


def to_markdown(df: pd.DataFrame, columns: list[str] | None = None) -> str:
    """A GitHub Markdown table (no `tabulate` dependency); NaN shows as `-`."""
    df = df[[c for c in (columns or df.columns) if c in df.columns and c != M.LB_EVAL_CURVE]]
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="isopo-bench leaderboard", description="Aggregate runs from MLflow.")
    p.add_argument("--suite", default=None, help="one suite version, NAME@vN (default: every suite, kept apart)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: all)")
    p.add_argument("--tracking-uri", default="", help="default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    p.add_argument("--baseline", default=REINFORCE, help="algorithm the paired differences are taken against")
    p.add_argument("--threshold", type=float, default=None,
                   help="accuracy for steps-to-threshold (default: half-way from the initial to the best final)")
    p.add_argument("--start-hash", default="", help="keep the runs that started from these weights (a start_hash "
                   "tag, its leading hex digits, or `unknown`); needed when a group mixes starting points")
    p.add_argument("--csv", default="", help="write the full leaderboard as CSV")
    p.add_argument("--markdown", default="", help="write the leaderboard and the per-LR table as Markdown")
    args = p.parse_args(argv)
    import os

    # The default of isopo_bench.tracking.resolve_uri, spelled here to keep this module's imports minimal.
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    from isopo_bench.store_init import require_store

    uri = require_store(uri)  # a missing store is an error, never created empty
    runs = select_start_hash(load_runs(uri, args.experiment, args.suite), args.start_hash)
    board, by_lr = leaderboard(runs, args.baseline, args.threshold), accuracy_vs_lr(runs)
    table = comparisons(runs, args.baseline)
    for suite, part in board.groupby(M.LB_SUITE):
        print(f"\n## {suite or '(no suite)'}\n\n{to_markdown(readable(part), DISPLAY_COLUMNS)}")
    print("\n## accuracy by learning rate\n\n" + to_markdown(by_lr, [M.LB_SUITE, *LR_DISPLAY_COLUMNS]))
    print(f"\n{COMPARISONS_TITLE}\n\n" + to_markdown(table, [M.LB_SUITE, *COMPARISON_DISPLAY_COLUMNS]))
    if args.csv:
        board.to_csv(args.csv, index=False)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n\n".join(to_markdown(t) for t in (board, by_lr, table)) + "\n")
    return 0
