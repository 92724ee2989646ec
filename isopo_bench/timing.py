"""Wall-clock per training phase. On GPU the clock stops only after the device has finished the phase's
work, so every algorithm's phases are timed over the same boundaries."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch


class PhaseTimer:
    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._open: list[str] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, metric_name: str):
        """A phase opened inside another is excluded from it: its seconds count once, in its own name
        (the diagnostics run between optimizer steps, inside time/update, and are not part of it)."""
        self._sync()
        start = time.perf_counter()
        self._open.append(metric_name)
        try:
            yield
        finally:
            self._sync()
            elapsed = time.perf_counter() - start
            self._open.pop()
            self.seconds[metric_name] += elapsed
            if self._open:
                self.seconds[self._open[-1]] -= elapsed

    def pop(self) -> dict[str, float]:
        """The accumulated seconds per phase since the last pop."""
        out = dict(self.seconds)
        self.seconds.clear()
        return out
