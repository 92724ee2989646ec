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

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, metric_name: str):
        self._sync()
        start, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
        try:
            yield
        finally:
            self._sync()
            self.seconds[metric_name] += time.perf_counter() - start
            self.cpu_seconds[metric_name] += time.process_time() - cpu
            self.thread_seconds[metric_name] += time.thread_time() - thread

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
