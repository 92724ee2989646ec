"""The leaderboard's inferential columns: seed-paired comparisons against a baseline, and the width of
each algorithm's good learning-rate window (the math: isopo_bench.statistics, docs/statistics.md).

Comparisons happen inside one cell = (suite, task, model, optimizer). For every algorithm other than
the baseline there are two rows, each naming its learning rates:
  `own best lr each`:  the algorithm at its best lr against the baseline at the baseline's best lr;
  `baseline's best lr`: both at the baseline's best lr (the algorithm's run there, when it has one).
Best = the highest mean final accuracy over finished seeds (the board's best_lr). Choosing the best lr
on the same runs that are then compared favours whichever arm has more lrs to choose from: the
`baseline's best lr` row does not choose for the algorithm.

Runs are paired by seed (same seed = same first rollout batch and the same evaluation items). Per
comparison: the mean difference with its t-interval over seeds, the sd over seeds and the MDE at 80%
power from it, and the two-stage paired bootstrap over seeds x evaluation items, computed only when
both runs of every paired seed recorded their final evaluation item by item and evaluated the same
items (equal eval_items_digest); different items are refused, never paired.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from isopo_bench import metric_names as M
from isopo_bench.errors import IsopoBenchError
from isopo_bench.statistics import at_grid_edge, lr_window, mde, paired_bootstrap, t_interval

GROUP = [M.LB_SUITE, M.LB_TASK, M.LB_MODEL]
CELL = [*GROUP, M.LB_OPTIMIZER]
"""Runs are compared only inside one cell; the optimizer is part of it (an SGD run never pairs with AdamW)."""
DEFAULT_OPTIMIZER = "adamw"
OWN_BEST, AT_BASELINE_LR = "own best lr each", "baseline's best lr"
RESAMPLES, BOOTSTRAP_SEED = 2000, 0
COMPARISON_COLUMNS = [
    *CELL, M.LB_ALGORITHM, M.LB_BASELINE, M.LB_LR_CHOICE, M.LB_LR, M.LB_BASELINE_LR, M.LB_N_SEEDS_PAIRED,
    M.LB_SEED_DIFF, M.LB_SEED_DIFF_T_LO, M.LB_SEED_DIFF_T_HI, M.LB_BOOT_LO, M.LB_BOOT_HI, M.LB_N_ITEMS,
    M.LB_SEED_DIFF_SD, M.LB_MDE, M.LB_VERDICT, M.LB_BOOT_NOTE,
]
COMPARISON_DISPLAY_COLUMNS = [
    M.LB_ALGORITHM, M.LB_BASELINE, M.LB_OPTIMIZER, M.LB_LR_CHOICE, M.LB_LR, M.LB_BASELINE_LR, M.LB_N_SEEDS_PAIRED,
    M.LB_SEED_DIFF, M.LB_SEED_DIFF_T_LO, M.LB_SEED_DIFF_T_HI, M.LB_BOOT_LO, M.LB_BOOT_HI, M.LB_N_ITEMS, M.LB_MDE,
    M.LB_VERDICT, M.LB_BOOT_NOTE,
]
ON_BOARD = [M.LB_N_SEEDS_PAIRED, M.LB_SEED_DIFF, M.LB_SEED_DIFF_T_LO, M.LB_SEED_DIFF_T_HI, M.LB_BOOT_LO,
            M.LB_BOOT_HI, M.LB_MDE, M.LB_VERDICT]
"""The `own best lr each` comparison's columns the board carries per algorithm."""
ROBUSTNESS_COLUMNS = [M.LB_LR_WINDOW, M.LB_LR_WINDOW_LOWER, M.LB_BEST_LR_AT_EDGE]
COMPARISONS_TITLE = ("## comparisons with the baseline, paired by seed (t: 95% t-interval over seeds; boot: 95% "
                     "bootstrap over seeds x items; mde_80: 80% power, two-sided 0.05)")


class ItemMismatchError(IsopoBenchError, ValueError):
    """Two runs of one seed evaluated different items: their per-item results cannot be paired."""


def with_default_optimizer(runs_df: pd.DataFrame) -> pd.DataFrame:
    """Runs recorded before the optimizer tag existed (or tables built without the column) read `adamw`."""
    out = runs_df.copy()
    column = out[M.LB_OPTIMIZER] if M.LB_OPTIMIZER in out else pd.Series("", index=out.index)
    out[M.LB_OPTIMIZER] = column.fillna("").replace("", DEFAULT_OPTIMIZER)
    return out


def best_lr(runs: pd.DataFrame) -> float:
    """The lr with the highest mean final accuracy over finished runs (ties: the smallest lr)."""
    means = runs.groupby(M.LB_LR)[M.LB_FINAL_ACC].mean().dropna()
    return float(means.idxmax()) if len(means) else math.nan


# ------------------------------------------------------------------------------------------------
def comparisons(runs_df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Every algorithm against `baseline` in every cell, at both lr choices (COMPARISON_COLUMNS)."""
    runs = with_default_optimizer(runs_df)
    finished = runs[runs[M.LB_STATUS] == "FINISHED"]
    rows = []
    for key, cell in finished.groupby(CELL):
        base = cell[cell[M.LB_ALGORITHM] == baseline]
        if base.empty:
            continue
        base_lr = best_lr(base)
        base_runs = base[base[M.LB_LR] == base_lr]
        for algo, own in cell[cell[M.LB_ALGORITHM] != baseline].groupby(M.LB_ALGORITHM):
            for choice, lr in ((OWN_BEST, best_lr(own)), (AT_BASELINE_LR, base_lr)):
                rows.append(dict(zip(CELL, key)) | {
                    M.LB_ALGORITHM: algo, M.LB_BASELINE: baseline, M.LB_LR_CHOICE: choice, M.LB_LR: lr,
                    M.LB_BASELINE_LR: base_lr} | compare(own[own[M.LB_LR] == lr], base_runs))
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def board_comparisons(runs_df: pd.DataFrame, baseline: str) -> dict[tuple, dict]:
    """(*CELL, algorithm) -> the ON_BOARD columns of its `own best lr each` comparison."""
    table = comparisons(runs_df, baseline)
    own = table[table[M.LB_LR_CHOICE] == OWN_BEST]
    return {tuple(r[[*CELL, M.LB_ALGORITHM]]): r[ON_BOARD].to_dict() for _, r in own.iterrows()}


def _by_seed(runs: pd.DataFrame) -> pd.DataFrame:
    # One run per seed is expected at one lr; should a seed repeat, the last row is the one compared.
    return runs.drop_duplicates(M.LB_SEED, keep="last").set_index(M.LB_SEED)


def compare(algo_runs: pd.DataFrame, base_runs: pd.DataFrame) -> dict:
    """The statistics of one comparison: finished runs of each arm at one lr, paired by seed."""
    x, b = _by_seed(algo_runs), _by_seed(base_runs)
    seeds = sorted(set(x.index) & set(b.index))
    d = np.array([x.at[s, M.LB_FINAL_ACC] - b.at[s, M.LB_FINAL_ACC] for s in seeds], dtype=float)
    mean, lo, hi = t_interval(d)
    sd = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
    boot_lo = boot_hi = math.nan
    n_items, note = 0, ""
    try:
        diffs = item_differences(x, b, seeds)
        if diffs:
            boot = paired_bootstrap(diffs, RESAMPLES, BOOTSTRAP_SEED)
            boot_lo, boot_hi, n_items = boot.low, boot.high, len(diffs[0])
        else:
            note = "no paired seeds" if not seeds else "no per-item record of the final evaluation"
    except ItemMismatchError as exc:
        note = f"refused: {exc}"
    minimum = mde(sd, len(d))
    return {M.LB_N_SEEDS_PAIRED: len(d), M.LB_SEED_DIFF: mean, M.LB_SEED_DIFF_T_LO: lo, M.LB_SEED_DIFF_T_HI: hi,
            M.LB_BOOT_LO: boot_lo, M.LB_BOOT_HI: boot_hi, M.LB_N_ITEMS: n_items, M.LB_SEED_DIFF_SD: sd,
            M.LB_MDE: minimum, M.LB_VERDICT: verdict(len(d), lo, hi, boot_lo, boot_hi, minimum),
            M.LB_BOOT_NOTE: note}


def _recorded(run: pd.Series) -> bool:
    """The run holds a per-item record, taken at its final evaluation (the one final_accuracy reads)."""
    items = run.get(M.LB_ITEMS_CORRECT)
    return (items is not None and len(items) > 0 and bool(run.get(M.LB_ITEMS_DIGEST))
            and run.get(M.LB_ITEMS_STEP) == run.get(M.LB_STEPS))


def item_differences(x: pd.DataFrame, b: pd.DataFrame, seeds: list) -> list[np.ndarray]:
    """Per paired seed, x_i - b_i over its evaluation items (both indexed by seed); [] when any run lacks
    a record. Raises ItemMismatchError when the two runs of a seed evaluated different items."""
    if not seeds or not all(_recorded(x.loc[s]) and _recorded(b.loc[s]) for s in seeds):
        return []
    out = []
    for s in seeds:
        xd, bd = x.at[s, M.LB_ITEMS_DIGEST], b.at[s, M.LB_ITEMS_DIGEST]
        xi, bi = np.asarray(x.at[s, M.LB_ITEMS_CORRECT], float), np.asarray(b.at[s, M.LB_ITEMS_CORRECT], float)
        if xd != bd or len(xi) != len(bi):
            raise ItemMismatchError(
                f"seed {s} evaluated different items in the two runs (eval_items_digest {xd}, {len(xi)} items vs "
                f"{bd}, {len(bi)} items); run both with the same task settings, task.eval_items and data")
        out.append(xi - bi)
    return out


def verdict(n: int, lo: float, hi: float, boot_lo: float, boot_hi: float, minimum: float) -> str:
    """In words: the t-interval over seeds decides; the bootstrap's agreement is stated beside it. One
    seed has no t-interval: the bootstrap over its items speaks for item noise only."""
    boot_known = not math.isnan(boot_lo)
    boot_excludes = boot_known and (boot_lo > 0 or boot_hi < 0)
    if n == 0:
        return "no paired seeds"
    if n == 1:
        if not boot_known:
            return "1 seed, no per-item record: nothing to test"
        found = "difference detected" if boot_excludes else "no difference detected"
        return f"{found} from item noise only (1 seed: seed variance not included)"
    if lo == hi == 0:
        return "no difference: identical final accuracy on every paired seed"
    if lo > 0 or hi < 0:
        return "difference detected" + ("" if not boot_known else
                                        "; bootstrap agrees" if boot_excludes else "; bootstrap CI includes 0")
    return (f"no difference detected; could have detected >= {minimum:.3f}"
            + ("; bootstrap CI excludes 0" if boot_excludes else ""))


# ------------------------------------------------------------------------------------------------
def lr_robustness(lr_rows: pd.DataFrame, board_best_lr: float) -> dict:
    """ROBUSTNESS_COLUMNS of one algorithm from its per-lr rows (every lr tried, failed ones included)."""
    window = lr_window(lr_rows[M.LB_LR].tolist(), lr_rows[M.LB_GAIN_MEAN].tolist())
    return {M.LB_LR_WINDOW: window.width_decades, M.LB_LR_WINDOW_LOWER: window.lower_bound,
            M.LB_BEST_LR_AT_EDGE: at_grid_edge(board_best_lr, lr_rows[M.LB_LR].tolist())}


def readable(board: pd.DataFrame) -> pd.DataFrame:
    """The board for the terminal: a window width that is a lower bound reads `>=0.95`."""
    out = board.copy()
    if len(out):
        width = out[M.LB_LR_WINDOW].map(lambda w: "-" if pd.isna(w) else f"{w:.2f}")
        lower = out[M.LB_LR_WINDOW_LOWER].fillna(False).astype(bool)
        out[M.LB_LR_WINDOW] = width.where(~lower | (width == "-"), ">=" + width)
    return out
