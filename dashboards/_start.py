"""Which starting point the dashboard shows: the sidebar's start-hash choice. No Streamlit here, so the rule
is tested alone (tests/test_dashboard_arms.py).

Every run carries the `start_hash` of the weights it started from (isopo_bench.start_point); the leaderboard
refuses a (suite, task, model) group holding more than one (isopo_bench.start_check). The dashboard keeps
one start hash exactly as `isopo-bench leaderboard --start-hash HASH` does, through start_check's own
select_start_hash; ALL ("") keeps every run, as the CLI does without the flag.

Default: when some group of the selection mixes start hashes, the hash of the most runs (ties: the hash
first in sort order), so the tabs show numbers rather than the refusal; otherwise ALL, since start hashes
that sit in different groups (two models) are never compared and hiding one would hide a model.
"""

from __future__ import annotations

import pandas as pd

from isopo_bench.start_check import UNKNOWN, start_conflicts, start_hashes

ALL = ""
"""The choice that keeps every run (select_start_hash's empty `wanted`)."""


def start_counts(runs: pd.DataFrame) -> list[tuple[str, int]]:
    """(start hash, run count) per start hash of the runs, most runs first, ties in hash order."""
    counts = start_hashes(runs).value_counts()
    return sorted(((str(h), int(n)) for h, n in counts.items()), key=lambda item: (-item[1], item[0]))


def mixes_starts(runs: pd.DataFrame) -> bool:
    """Whether some (suite, task, model) group holds more than one start hash (the leaderboard refuses it)."""
    return bool(start_conflicts(runs))


def default_start(runs: pd.DataFrame) -> str:
    """The module docstring's default: the majority hash when a group mixes start hashes, else ALL."""
    counts = start_counts(runs)
    return counts[0][0] if counts and mixes_starts(runs) else ALL


def start_label(start_hash: str, counts: dict[str, int]) -> str:
    """`content:9ac4527b7ea3d5bf (45 runs)`; ALL names how many runs and start points it keeps."""
    if start_hash == ALL:
        total = sum(counts.values())
        return f"all {len(counts)} start points ({total} runs)"
    n = counts.get(start_hash, 0)
    what = " (no start_hash tag)" if start_hash == UNKNOWN else ""
    return f"{start_hash}{what} ({n} run{'s' * (n != 1)})"
