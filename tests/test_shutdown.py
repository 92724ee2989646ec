"""The end of a data-parallel run in bounded time (isopo_bench.shutdown).

- `store_barrier`: ranks that all arrive pass; a rank that never arrives is named in a ShutdownError once
  the deadline has passed (not before, not much after); the k-th barrier never passes on keys an earlier
  one left in the store;
- `exit_watchdog`: a process whose exit is blocked by a non-daemon thread exits with code 1 after the
  deadline, saying what blocked and dumping that thread's stack; a call holding the GIL is stopped by the
  C-level backstop; a disarmed watchdog does nothing;
- `shutdown_timeout_s`: the environment setting, and a clear error for a bad one.
The whole runs (one rank stalled at the end, one rank unable to exit) are in tests/test_trainer_distributed.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch.distributed as dist

from isopo_bench.errors import IsopoBenchError
from isopo_bench.shutdown import SHUTDOWN_TIMEOUT_ENV, ShutdownError, shutdown_timeout_s, store_barrier


def barrier_on_threads(store, ranks: list[int], world: int, stage: str, timeout_s: float) -> dict[int, object]:
    """Run `store_barrier` for each of `ranks` on its own thread; rank -> None (passed) or the exception."""
    outcome: dict[int, object] = {}

    def one(rank: int) -> None:
        try:
            store_barrier(store, stage, rank, world, timeout_s)
            outcome[rank] = None
        except ShutdownError as exc:
            outcome[rank] = exc

    threads = [threading.Thread(target=one, args=(r,)) for r in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s + 30)
    return outcome


def test_store_barrier_passes_when_every_rank_arrives():
    store = dist.HashStore()
    assert barrier_on_threads(store, [0, 1, 2], 3, "trained", timeout_s=20) == {0: None, 1: None, 2: None}


def test_store_barrier_names_the_missing_rank_after_the_deadline():
    store = dist.HashStore()
    start = time.monotonic()
    outcome = barrier_on_threads(store, [0, 2], 3, "trained", timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 10, elapsed
    for rank in (0, 2):
        message = str(outcome[rank])
        assert isinstance(outcome[rank], ShutdownError)
        assert f"rank {rank}: rank(s) [1] did not reach the end-of-run step `trained` within 1 s" in message
        assert SHUTDOWN_TIMEOUT_ENV in message


def test_a_later_barrier_does_not_pass_on_an_earlier_ones_keys():
    store = dist.HashStore()
    assert barrier_on_threads(store, [0, 1], 2, "recorded", timeout_s=20) == {0: None, 1: None}
    # The same stage again (a second run in the same store): rank 1's key of the first one must not count.
    outcome = barrier_on_threads(store, [0], 2, "recorded", timeout_s=0.5)
    assert isinstance(outcome[0], ShutdownError) and "rank(s) [1]" in str(outcome[0])


def run_python(code: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def test_exit_watchdog_ends_a_process_whose_exit_is_blocked_by_a_thread():
    proc, elapsed = run_python("""
        import threading
        from isopo_bench.shutdown import exit_watchdog

        def never_ending_thread():
            threading.Event().wait()

        threading.Thread(target=never_ending_thread).start()  # not a daemon: the interpreter's exit joins it
        exit_watchdog("the test's exit", 1.0)
    """)
    assert proc.returncode == 1, proc.stderr
    assert "error: the test's exit did not end within 1 s" in proc.stderr
    assert "in never_ending_thread" in proc.stderr  # the blocked thread's stack
    assert elapsed < 30


def test_exit_watchdog_backstop_stops_a_call_that_holds_the_gil():
    # Catastrophic backtracking: the regex engine runs for ages without releasing the GIL, so the Python
    # timer cannot run; faulthandler's C watchdog (here 0.5 s after it) ends the process.
    proc, elapsed = run_python("""
        import re
        import isopo_bench.shutdown as shutdown

        shutdown.WATCHDOG_BACKSTOP_S = 0.5
        shutdown.exit_watchdog("the regex", 1.0)
        re.match(r"(a+)+$", "a" * 60 + "b")
    """)
    assert proc.returncode == 1, proc.stderr
    assert "Timeout (0:00:01.500000)!" in proc.stderr
    assert "did not end within" not in proc.stderr  # the Python timer never ran
    assert elapsed < 30


def test_a_disarmed_exit_watchdog_does_nothing():
    proc, _ = run_python("""
        import time
        from isopo_bench.shutdown import exit_watchdog

        disarm = exit_watchdog("nothing", 0.5)
        disarm()
        time.sleep(2.5)  # past both deadlines
        print("still alive")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "still alive" and proc.stderr == ""


def test_shutdown_timeout_from_the_environment(monkeypatch):
    monkeypatch.delenv(SHUTDOWN_TIMEOUT_ENV, raising=False)
    assert shutdown_timeout_s() == 300.0
    monkeypatch.setenv(SHUTDOWN_TIMEOUT_ENV, "12.5")
    assert shutdown_timeout_s() == 12.5
    for bad in ("abc", "0", "-3", "inf", "nan"):
        monkeypatch.setenv(SHUTDOWN_TIMEOUT_ENV, bad)
        with pytest.raises(IsopoBenchError, match=f"{SHUTDOWN_TIMEOUT_ENV}='{bad}' is not a positive number of seconds"):
            shutdown_timeout_s()
