"""Suite workers pin themselves to distinct cores."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os

import pytest

from isopo_bench import suite_backends
from isopo_bench.suite_pinning import pool_slots


def where(_) -> tuple[int, tuple[int, ...]]:
    import time

    time.sleep(0.5)  # keep every worker busy, so the pool starts all of them
    return os.getpid(), tuple(sorted(os.sched_getaffinity(0)))


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_pool_workers_get_distinct_cores():
    context = multiprocessing.get_context("spawn")
    cores = tuple(sorted(os.sched_getaffinity(0)))
    workers = min(2, len(cores))
    slot, found = pool_slots(context, workers)
    assert found == cores
    with cf.ProcessPoolExecutor(workers, mp_context=context, initializer=suite_backends._init_pool_worker,
                                initargs=(slot, found)) as pool:
        seen = dict(pool.map(where, range(4 * workers)))
    assert len(seen) == workers
    assert all(len(c) == 1 for c in seen.values())  # each worker on one core
    assert len({c[0] for c in seen.values()}) == workers  # and on different ones
