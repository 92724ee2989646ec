"""The end of a data-parallel run in bounded time: no rank waits for another, or for its own exit, forever.

A run's end (isopo_bench.trainer) is: every rank reaches `store_barrier("trained")`; rank 0 exports the model
and marks the MLflow run FINISHED; every rank reaches `store_barrier("recorded")`; the process group is
destroyed and the process exits. Each of these steps has the same deadline, `shutdown_timeout_s()`:
- the two barriers go through the process group's key-value store, not a collective. Under torchrun that
  store lives in the launcher's agent, which outlives every rank, so a rank that died or hangs shows up as
  a missing key (and an error naming it) after the deadline, instead of leaving the others inside a
  collective until the 30-minute group timeout; and no gloo/NCCL message is in flight when the group is
  destroyed right after;
- destroying the group and the interpreter's own exit (joining non-daemon threads, atexit handlers) run
  under `exit_watchdog`: past the deadline the process says what blocked, dumps every thread's stack to
  stderr and exits with code 1, so torchrun reports the rank instead of waiting for it.
"""

from __future__ import annotations

import datetime
import faulthandler
import math
import os
import sys
import threading
from typing import Callable

from isopo_bench.errors import IsopoBenchError

SHUTDOWN_TIMEOUT_ENV = "ISOPO_BENCH_SHUTDOWN_TIMEOUT_S"
DEFAULT_SHUTDOWN_TIMEOUT_S = 300.0
"""Rank 0 exports the model and closes its MLflow run between the two barriers: seconds for the models here,
minutes at most for large ones on a slow disk or a remote tracking server."""
WATCHDOG_BACKSTOP_S = 5.0
"""The C-level watchdog fires this long after the Python one, for a blocked call that holds the GIL."""


class ShutdownError(IsopoBenchError):
    """A rank did not reach a step of the end of a data-parallel run in time; the message names it."""


def shutdown_timeout_s() -> float:
    """The deadline of each step of a run's end, in seconds ($ISOPO_BENCH_SHUTDOWN_TIMEOUT_S, default 300)."""
    raw = os.environ.get(SHUTDOWN_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_SHUTDOWN_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise IsopoBenchError(f"{SHUTDOWN_TIMEOUT_ENV}={raw!r} is not a positive number of seconds. Fix: set it to "
                              f"e.g. {DEFAULT_SHUTDOWN_TIMEOUT_S:.0f}, or unset it for the default")
    return value


def store_barrier(store, stage: str, rank: int, world_size: int, timeout_s: float) -> None:
    """Return once all `world_size` ranks called this with the same `stage`, or raise ShutdownError naming the
    ranks still missing after `timeout_s` seconds. `store` is a torch.distributed Store shared by the ranks.

    Each rank counts its own calls in the store, so the k-th barrier of every rank meets the k-th barrier of
    the others: keys left by an earlier run in the same store never let a later one through."""
    generation = store.add(f"isopo/shutdown/calls/{rank}", 1)
    keys = [f"isopo/shutdown/{generation}/{stage}/{r}" for r in range(world_size)]
    store.set(keys[rank], "1")
    try:
        store.wait(keys, datetime.timedelta(seconds=timeout_s))
    except RuntimeError:  # DistStoreError: the deadline passed, or the store itself went away
        missing = _missing_ranks(store, keys)
        raise ShutdownError(
            f"rank {rank}: rank(s) {missing} did not reach the end-of-run step `{stage}` within {timeout_s:g} s "
            f"({'they died or hang: their own output says where' if missing else 'the store became unreachable'}). "
            f"Fix: look at those ranks' output; if rank 0's export legitimately takes longer, raise "
            f"{SHUTDOWN_TIMEOUT_ENV}") from None


def _missing_ranks(store, keys: list[str]) -> list[int]:
    try:
        return [r for r, key in enumerate(keys) if not store.check([key])]
    except RuntimeError:
        return []


def exit_watchdog(what: str, timeout_s: float) -> Callable[[], None]:
    """Arm a deadline for `what` and return the function that disarms it. Past the deadline the process
    writes `what` and the deadline to stderr, dumps every thread's stack there and exits with code 1.

    A daemon timer thread does this while the GIL is free (a blocked thread join, a gloo wait); faulthandler's
    C watchdog does it WATCHDOG_BACKSTOP_S later without the GIL, for a call that holds it. Never left armed
    by library code the caller outlives: the trainer arms it around destroying the group only, the CLI for
    the interpreter's exit."""

    def fire() -> None:
        sys.stderr.write(f"\nerror: {what} did not end within {timeout_s:g} s ({SHUTDOWN_TIMEOUT_ENV}); "
                         "the stacks of every thread follow, then this process exits with code 1\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(1)

    timer = threading.Timer(timeout_s, fire)
    timer.daemon = True
    timer.start()
    faulthandler.dump_traceback_later(timeout_s + WATCHDOG_BACKSTOP_S, exit=True)

    def disarm() -> None:
        timer.cancel()
        faulthandler.cancel_dump_traceback_later()
    return disarm
