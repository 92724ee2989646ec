"""What the dashboard compares: arms. No Streamlit here, so every rule can be tested alone.

An arm is one (suite, task, model, algorithm, learning rate, optimizer). The runs of one arm differ only by
their seed, so they are the only runs ever averaged together: a curve or a point never mixes learning
rates, optimizers, tasks or models. Seed statistics of a value y_1..y_n over the n seeds of an arm:

    mean            m = (1/n) sum_i y_i
    seed range      [min_i y_i, max_i y_i]
    95% t-interval  m -+ t_{0.975, n-1} s / sqrt(n),   s^2 = sum_i (y_i - m)^2 / (n - 1)

(no interval from one seed: the band collapses onto the line). Smoothing acts on each run's own curve,
in step order, before the seeds are combined:

    EMA with weight beta in [0, 1)   s_1 = y_1,  s_k = beta s_{k-1} + (1 - beta) y_k
    rolling mean over w steps        s_k = mean(y_{max(1, k-w+1)} .. y_k)
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from isopo_bench import leaderboard as lb
from isopo_bench import metric_names as M
from isopo_bench.statistics import at_grid_edge, t_quantile

ARM_KEY = list(dict.fromkeys([*lb.GROUP, M.LB_ALGORITHM, M.LB_LR, M.LB_OPTIMIZER]))
"""(dict.fromkeys: the optimizer is named once should the leaderboard's group come to include it.)"""
ARM = "arm"
"""The column holding an arm's label in every frame built here."""
DEFAULT_OPTIMIZER = "adamw"
"""What runs logged before the optimizer tag existed used."""
BANDS = {"range": "lowest to highest seed", "t95": "95% Student-t interval over seeds"}
SMOOTHERS = ("none", "EMA", "rolling mean")


def with_optimizer(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with an optimizer column (missing or empty: DEFAULT_OPTIMIZER)."""
    column = runs[M.LB_OPTIMIZER] if M.LB_OPTIMIZER in runs else pd.Series("", index=runs.index, dtype=object)
    return runs.assign(**{M.LB_OPTIMIZER: column.fillna("").astype(str).replace("", DEFAULT_OPTIMIZER)})


def short_model_name(model: str) -> str:
    """The last folder of a local path (warm starts are cache paths); a hub id ("Qwen/Qwen3-0.6B") as is."""
    text = str(model).strip()
    looks_local = text.startswith(("/", "./", "../", "~")) or text.count("/") > 1
    if not looks_local:
        return text
    return PurePosixPath(text.rstrip("/")).name or text


def model_names(runs: pd.DataFrame) -> dict[str, str]:
    """model -> the name to show: its runs' model_display tag where one has it, else short_model_name.
    (load_runs fills a missing model_display with the model tag itself: that counts as none.)"""
    display = runs[M.LB_MODEL_DISPLAY] if M.LB_MODEL_DISPLAY in runs else pd.Series("", index=runs.index)
    names = {}
    for model, tags in display.fillna("").astype(str).groupby(runs[M.LB_MODEL].fillna("").astype(str)):
        given = sorted(t for t in set(tags) if t and t != model)
        names[model] = given[0] if given else short_model_name(model)
    return names


def arm_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per arm (ARM_KEY, then ARM: its label, and the number of runs), in key order. The label is
    "algorithm · lr · optimizer", preceded by suite/task/model when the runs span more than one group."""
    runs = with_optimizer(runs)
    table = runs.groupby(ARM_KEY, dropna=False).size().rename("runs").reset_index().sort_values(ARM_KEY)
    names = model_names(runs)
    several_groups = len(table.drop_duplicates(lb.GROUP)) > 1
    labels = []
    for row in table.itertuples(index=False):
        key = dict(zip(ARM_KEY, row))
        label = f"{key[M.LB_ALGORITHM]} · lr {key[M.LB_LR]:g} · {key[M.LB_OPTIMIZER]}"
        if several_groups:
            model = names.get(key[M.LB_MODEL], key[M.LB_MODEL])
            label = f"{key[M.LB_SUITE] or '-'}/{key[M.LB_TASK]}/{model} · {label}"
        labels.append(label)
    return table.assign(**{ARM: labels}).reset_index(drop=True)


def with_arm(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with their arm's label in column ARM (kept when already there: a subset keeps the labels
    of the selection it came from)."""
    if ARM in runs:
        return runs
    runs = with_optimizer(runs)
    return runs.merge(arm_table(runs)[[*ARM_KEY, ARM]], on=ARM_KEY, how="left")


def by_arm(runs: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard's per-lr table (lb.accuracy_vs_lr: one row per (group, algorithm, optimizer, lr), mean
    final accuracy and its 95% t-interval over seeds) with the ARM column added."""
    runs = with_optimizer(runs)
    return lb.accuracy_vs_lr(runs).merge(arm_table(runs)[[*ARM_KEY, ARM]], on=ARM_KEY, how="left")


def best_arms(runs: pd.DataFrame) -> list[str]:
    """Labels of each (group, algorithm, optimizer) at its best learning rate: the leaderboard's best_lr
    (highest mean final accuracy; lb.leaderboard keeps optimizers apart)."""
    arms, best = arm_table(runs), set()
    board = lb.leaderboard(with_optimizer(runs)).dropna(subset=[M.LB_BEST_LR])
    for row in board.to_dict("records"):
        match = (arms[ARM_KEY[:-2]] == pd.Series({c: row[c] for c in ARM_KEY[:-2]})).all(axis=1)
        match &= np.isclose(arms[M.LB_LR], row[M.LB_BEST_LR]) & (arms[M.LB_OPTIMIZER] == row[M.LB_OPTIMIZER])
        best |= set(arms.loc[match, ARM])
    return [label for label in arms[ARM] if label in best]


def edge_notes(arm_rows: pd.DataFrame) -> list[str]:
    """A sentence per (algorithm, optimizer) whose best learning rate (highest mean final accuracy over the
    learning rates with a finished run) is the smallest or the largest one tried: the optimum may lie
    outside the grid. The grid is every learning rate tried, failed ones included, as the leaderboard's
    best_lr_at_edge (isopo_bench.statistics.at_grid_edge): a larger rate that diverged brackets the best."""
    notes = []
    for (algorithm, optimizer), rows in arm_rows.groupby([M.LB_ALGORITHM, M.LB_OPTIMIZER], sort=True):
        valid = rows.dropna(subset=[M.LB_ACC_MEAN])
        if valid.empty:
            continue
        best, grid = valid.loc[valid[M.LB_ACC_MEAN].idxmax(), M.LB_LR], rows[M.LB_LR].tolist()
        name = f"{algorithm} ({optimizer})"
        if len(valid) == 1:
            notes.append(f"{name}: only one learning rate ({best:g}) has finished runs, so its best is unknown.")
        elif at_grid_edge(best, grid):
            side = ("smallest", "smaller") if best == min(grid) else ("largest", "larger")
            notes.append(f"{name}: the best learning rate {best:g} is the {side[0]} tried; a {side[1]} one may do better.")
    return notes


def smoothed(history: pd.DataFrame, method: str = "none", amount: float = 0.0) -> pd.DataFrame:
    """Each run's `value` smoothed along its own steps (module docstring): EMA with weight beta = amount,
    or a trailing rolling mean over w = int(amount) steps; "none" returns the values as they are."""
    if method not in SMOOTHERS:
        raise ValueError(f"unknown smoothing {method!r}. Fix: use one of {', '.join(SMOOTHERS)}")
    if method == "none":
        return history
    if method == "EMA" and not 0.0 <= amount < 1.0:
        raise ValueError(f"EMA weight {amount} is outside [0, 1). Fix: pass a weight such as 0.6")
    if method == "rolling mean" and int(amount) < 1:
        raise ValueError(f"rolling window {amount} is under one step. Fix: pass a window of at least 1")
    ordered = history.sort_values([M.LB_RUN_ID, "step"])
    if method == "EMA":
        # adjust=False is the recursion of the module docstring (pandas' default reweights the first terms)
        smooth = lambda v: v.ewm(alpha=1.0 - amount, adjust=False).mean()  # noqa: E731
    else:
        smooth = lambda v: v.rolling(int(amount), min_periods=1).mean()  # noqa: E731
    return ordered.assign(value=ordered.groupby(M.LB_RUN_ID)["value"].transform(smooth))


def seed_band(history: pd.DataFrame, x: str, band: str = "range") -> pd.DataFrame:
    """Per arm and step: mean over seeds, the band's low and high ends (BANDS), the number of seeds. With
    x = "elapsed" a step sits at the seeds' mean elapsed time (seeds do not share clock times)."""
    if band not in BANDS:
        raise ValueError(f"unknown band {band!r}. Fix: use one of {', '.join(BANDS)}")
    grouped = history.groupby([ARM, "step"])
    out = grouped["value"].agg(mean="mean", lo="min", hi="max", seeds="count", sd="std").reset_index()
    if band == "t95":
        half = [t_half_width(sd, n) for sd, n in zip(out["sd"], out["seeds"])]
        out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    if x == "elapsed":
        out["elapsed"] = grouped["elapsed"].mean().to_numpy()
    return out.drop(columns="sd").sort_values([ARM, x]).reset_index(drop=True)


def t_half_width(sd: float, n: int) -> float:
    """t_{0.975, n-1} sd / sqrt(n); 0 for a single seed (no interval: the band is the line)."""
    return 0.0 if n < 2 or math.isnan(sd) else t_quantile(0.975, n - 1) * sd / math.sqrt(n)
