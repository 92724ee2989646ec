"""Local suite workers pinned to distinct cores (os.sched_setaffinity), one torch thread each, so that the
update-time column of a suite compares methods rather than the scheduler's placement of concurrent runs.

`pool_slots` gives the pool a shared counter and the cores this process may use; each worker takes the next
slot and pins itself to cores[slot % len(cores)]. With more workers than cores, workers share cores (a
warning says so; the leaderboard's noise check then usually flags the column). Not on Linux: no pinning.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
PIN_ENV = "ISOPO_PIN_WORKERS"
"""Set to 0 to leave suite workers unpinned."""


def available_cores() -> tuple[int, ...]:
    if not hasattr(os, "sched_getaffinity") or os.environ.get(PIN_ENV, "1") == "0":
        return ()
    return tuple(sorted(os.sched_getaffinity(0)))


def pool_slots(context, workers: int):
    """(shared slot counter, cores) for the pool initializer; (None, ()) when pinning is off."""
    cores = available_cores()
    if not cores:
        return None, ()
    if workers > len(cores):
        log.warning("%d suite workers on %d cores: workers share cores, in-suite timings are noisier", workers,
                    len(cores))
    return context.Value("i", 0), cores


def pin_worker(slot, cores: tuple[int, ...]) -> int:
    """Pin this process to the next free core; returns it."""
    with slot.get_lock():
        index = slot.value
        slot.value += 1
    core = cores[index % len(cores)]
    os.sched_setaffinity(0, {core})
    os.environ["ISOPO_WORKER_CORE"] = str(core)
    return core
