"""One starting point per comparison: the leaderboard refuses to average runs that started from
different weights.

Within a (suite, task, model) group every run must carry one start_hash (isopo_bench.start_point): two
warm starts trained on two machines, or a cache trained again after a library upgrade, are different
models even under one name, and their accuracies are not comparable. Runs recorded before the tag existed
count as `unknown`. `require_single_start` raises with the hashes, their run counts and the fix;
`describe_start_conflicts` returns the same text without raising (the dashboard shows it);
`select_start_hash` keeps one starting point (`isopo-bench leaderboard --start-hash HASH`).

Imports pandas and metric_names only (the dashboard's dependencies).
"""

from __future__ import annotations

import pandas as pd

from isopo_bench import metric_names as M
from isopo_bench.errors import IsopoBenchError

UNKNOWN = "unknown"
GROUP = [M.LB_SUITE, M.LB_TASK, M.LB_MODEL]
START_COLUMNS = [M.LB_START_HASH, M.LB_MODEL_DISPLAY]


class MixedStartError(IsopoBenchError):
    """Runs of one comparison group started from different weights."""


def start_columns(tags: dict[str, str]) -> dict[str, str]:
    """The run row's start hash (UNKNOWN when not recorded) and display name (the model tag when not)."""
    return {M.LB_START_HASH: tags.get(M.TAG_START_HASH) or UNKNOWN,
            M.LB_MODEL_DISPLAY: tags.get(M.TAG_MODEL_DISPLAY) or tags.get(M.TAG_MODEL, "")}


def start_hashes(runs_df: pd.DataFrame) -> pd.Series:
    if M.LB_START_HASH not in runs_df:
        return pd.Series(UNKNOWN, index=runs_df.index)
    return runs_df[M.LB_START_HASH].fillna(UNKNOWN).replace("", UNKNOWN)


def start_conflicts(runs_df: pd.DataFrame, group: list[str] = GROUP) -> list[tuple[tuple, dict[str, int]]]:
    """[(group key, {start hash: run count})] for every group holding more than one start hash."""
    if runs_df.empty:
        return []
    hashes = start_hashes(runs_df)
    out = []
    for key, g in runs_df.assign(_start=hashes).groupby(group, dropna=False):
        counts = g["_start"].value_counts()
        if len(counts) > 1:
            out.append((key, {h: int(n) for h, n in sorted(counts.items())}))
    return out


def describe_start_conflicts(runs_df: pd.DataFrame, group: list[str] = GROUP) -> str:
    """The conflict in words (empty when every group has one starting point); never raises."""
    conflicts = start_conflicts(runs_df, group)
    if not conflicts:
        return ""
    lines = []
    for key, counts in conflicts:
        where = ", ".join(f"{column} {value or '(none)'}" for column, value in zip(group, key))
        found = ", ".join(f"{h} ({n} run{'s' * (n != 1)})" for h, n in counts.items())
        lines.append(f"{where}: {found}")
    return ("runs started from different weights cannot be compared; start hashes per group:\n  "
            + "\n  ".join(lines) + f"\nFix: keep one starting point with --start-hash HASH (`{UNKNOWN}` selects "
            "runs recorded without the tag), or re-run the other runs on the same warm start (a shipped one "
            "gives every machine the same weights: `isopo-bench warmstart --export`, isopo_bench/warm_starts/)")


def require_single_start(runs_df: pd.DataFrame, group: list[str] = GROUP) -> None:
    message = describe_start_conflicts(runs_df, group)
    if message:
        raise MixedStartError(message)


def select_start_hash(runs_df: pd.DataFrame, wanted: str) -> pd.DataFrame:
    """The runs whose start hash is `wanted`, given whole (`content:1a2b...`), as its leading hex digits
    (`1a2b3c4d`, the display's) or as `unknown`. An empty `wanted` keeps every run."""
    if not wanted:
        return runs_df
    hashes = start_hashes(runs_df)
    digits = hashes.str.split(":", n=1).str[-1]
    chosen = (hashes == wanted) | (digits.str.startswith(wanted) & (hashes != UNKNOWN))
    matched = sorted(set(hashes[chosen]))
    if not matched:
        known = ", ".join(sorted(set(hashes))) or "none"
        raise MixedStartError(f"no run has start hash {wanted!r} (recorded: {known}). Fix: pass one of these")
    if len(matched) > 1:
        raise MixedStartError(f"start hash prefix {wanted!r} matches {', '.join(matched)}. Fix: give more digits")
    return runs_df[chosen]
