"""Wall-clock and CPU time per training phase. On GPU the clock stops only after the device has finished the
phase's work, so every algorithm's phases are timed over the same boundaries. CPU time (this process's,
and the calling thread's) is what concurrent suite workers on a shared machine do not inflate; on CPU
with one torch thread it is the figure to compare (the overhead benchmark times the same way)."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch


class PhaseTimer:
    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)
        """Process CPU seconds per phase (time.process_time)."""
        self.thread_seconds: dict[str, float] = defaultdict(float)
        """CPU seconds of the calling thread per phase (time.thread_time)."""
        self._open: list[str] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, metric_name: str):
        """A phase opened inside another is excluded from it: its seconds count once, in its own name
        (the diagnostics run between optimizer steps, inside time/update, and are not part of it)."""
        self._sync()
        start, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
        self._open.append(metric_name)
        try:
            yield
        finally:
            self._sync()
            elapsed = time.perf_counter() - start
            elapsed_cpu, elapsed_thread = time.process_time() - cpu, time.thread_time() - thread
            self._open.pop()
            self.seconds[metric_name] += elapsed
            self.cpu_seconds[metric_name] += elapsed_cpu
            self.thread_seconds[metric_name] += elapsed_thread
            if self._open:  # a phase opened inside another does not count in the outer one
                outer = self._open[-1]
                self.seconds[outer] -= elapsed
                self.cpu_seconds[outer] -= elapsed_cpu
                self.thread_seconds[outer] -= elapsed_thread

    def pop(self) -> dict[str, float]:
        """The accumulated seconds per phase since the last pop."""
        out = dict(self.seconds)
        self.seconds.clear()
        return out

    def pop_cpu(self, skip: tuple[str, ...] = ()) -> dict[str, float]:
        """Process and thread CPU seconds per phase since the last pop_cpu, as metrics
        `time_cpu/<phase>` and `time_thread/<phase>` (`time/update` -> `time_cpu/update`); phases in
        `skip` are dropped."""
        out = {cpu_metric(k): v for k, v in self.cpu_seconds.items() if k not in skip}
        out |= {thread_metric(k): v for k, v in self.thread_seconds.items() if k not in skip}
        self.cpu_seconds.clear()
        self.thread_seconds.clear()
        return out


def cpu_metric(phase_metric: str) -> str:
    """`time/update` -> `time_cpu/update` (process CPU seconds of that phase)."""
    return "time_cpu/" + phase_metric.split("/", 1)[-1]


def thread_metric(phase_metric: str) -> str:
    """`time/update` -> `time_thread/update` (the main thread's CPU seconds of that phase)."""
    return "time_thread/" + phase_metric.split("/", 1)[-1]
