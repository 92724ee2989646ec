"""ISOPO bookkeeping: EMA statistics keyed by (name, layer), metric sums, deterministic probe draws.

EMA semantics (ALGORITHMS.md 5.3): values are collected during an optimizer step; at the end of the step
m = mean of the collected values, EMA = m the first time, else decay * EMA + (1 - decay) * m, and the
collected values are cleared. Before a key's first update its current value is used. `cumulative=True` is
the reference's replication option: collected values are never cleared, so m is the running mean of
everything collected so far. Collected values are kept as a (sum, count) pair, so memory stays bounded
even in cumulative mode, and nothing here forces a device sync before `end_step`.

Data parallelism: with `reducer` set (isopo_bench.distributed sets it when world size > 1), `end_step`
first replaces each key's (sum, count) collected in this step by its SUM over ranks, so every rank's EMA is
the EMA of all ranks' values (in cumulative mode only the step's new contributions are reduced). Every rank
must have collected the same keys (every rank processes at least one microbatch). None: one process.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import torch


class EmaStats:
    def __init__(self, decay: float, cumulative: bool = False, reducer: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.decay = decay
        self.cumulative = cumulative
        self.reducer = reducer
        """Cross-rank SUM of a (keys, 2) float64 tensor of (sum, count) rows; None: single process."""
        self._reduced: tuple[dict, dict] = ({}, {})
        self.ema: dict[str, torch.Tensor] = {}
        self._sum: dict[str, torch.Tensor] = {}
        self._count: dict[str, int] = {}

    def collect(self, key: str, values: torch.Tensor) -> None:
        """Record the values of statistic `key` seen in this microbatch (any shape; each element counts)."""
        values = values.detach().to(torch.float64)
        self._sum[key] = self._sum.get(key, 0.0) + values.sum()
        self._count[key] = self._count.get(key, 0) + values.numel()

    def value(self, key: str, current: torch.Tensor) -> torch.Tensor:
        """EMA of `key`, or `current` (the mean of this microbatch's values) before the first update."""
        ema = self.ema.get(key)
        if ema is None:
            return current.detach().mean()
        return ema.to(device=current.device, dtype=current.dtype)

    def end_step(self) -> None:
        if self.reducer is not None:
            self._reduce()
        for key, total in self._sum.items():
            mean = total / self._count[key]
            old = self.ema.get(key)
            self.ema[key] = mean if old is None else self.decay * old.to(mean.device) + (1 - self.decay) * mean
        if not self.cumulative:
            self._sum.clear()
            self._count.clear()
        self._reduced = (dict(self._sum), dict(self._count))

    def _reduce(self) -> None:
        keys = sorted(self._sum)
        old_sum, old_count = self._reduced  # already reduced in earlier steps (cumulative mode only)
        local = torch.tensor(
            [[float(self._sum[k] - old_sum.get(k, 0.0)), self._count[k] - old_count.get(k, 0)] for k in keys],
            dtype=torch.float64,
        ).reshape(len(keys), 2)
        total = self.reducer(local)
        for k, (s, c) in zip(keys, total.tolist()):
            self._sum[k] = torch.tensor(old_sum.get(k, 0.0) + s, dtype=torch.float64)
            self._count[k] = old_count.get(k, 0) + round(c)

    def state_dict(self) -> dict:
        return {
            "ema": {k: float(v) for k, v in self.ema.items()},
            "sum": {k: float(v) for k, v in self._sum.items()},
            "count": dict(self._count),
        }

    def load_state_dict(self, state: dict) -> None:
        as_tensor = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        self.ema = {k: as_tensor(v) for k, v in state.get("ema", {}).items()}
        self._sum = {k: as_tensor(v) for k, v in state.get("sum", {}).items()}
        self._count = dict(state.get("count", {}))
        self._reduced = (dict(self._sum), dict(self._count))


class MetricSums:
    """Means of per-layer diagnostics over one optimizer step, summed on device and read once."""

    def __init__(self):
        self._sum: dict[str, torch.Tensor] = {}
        self._count: dict[str, int] = {}

    def add(self, key: str, values: torch.Tensor) -> None:
        values = values.detach().to(torch.float64)
        self._sum[key] = self._sum.get(key, 0.0) + values.sum()
        self._count[key] = self._count.get(key, 0) + values.numel()

    def pop(self) -> dict[str, float]:
        out = {key: float(total) / self._count[key] for key, total in self._sum.items()}
        self._sum.clear()
        self._count.clear()
        return out


def probe_generator(seed: int, step: int, microbatch: int, layer: int) -> torch.Generator:
    """A CPU generator that depends only on (run seed, optimizer step, microbatch, layer index), so probe
    draws repeat exactly across runs, devices, gradient checkpointing and the fast/faithful modes.
    layer = -1 is the set shared by all layers."""
    digest = hashlib.sha256(f"isopo-probes/{seed}/{step}/{microbatch}/{layer}".encode()).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


def draw_probes(real_flat_idx_N: torch.Tensor, num_probes: int, gen: torch.Generator) -> torch.Tensor:
    """S = min(num_probes, N) distinct real-token positions, uniformly (flat indices into the B*T grid)."""
    n = real_flat_idx_N.numel()
    pick = torch.randperm(n, generator=gen)[: min(num_probes, n)]
    return real_flat_idx_N[pick.to(real_flat_idx_N.device)]
