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

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, metric_name: str):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[metric_name] += time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        """The accumulated seconds per phase since the last pop."""
        out = dict(self.seconds)
        self.seconds.clear()
        return out
