"""Step-level bookkeeping of the layer-wise engine: EMA statistics keyed by (statistic, layer) and metric
means, both reducible across data-parallel ranks.

EMA semantics (ALGORITHMS.md 5.3): values are collected during an optimizer step; at the end of the step
m = mean of the collected values, EMA = m the first time, else decay * EMA + (1 - decay) * m, and the
collected values are cleared. Before a key's first update its current value is used. `cumulative=True` is
the ISOPO reference's replication option: collected values are never cleared, so m is the running mean of
everything collected so far. Collected values are kept as a (sum, count) pair, so memory stays bounded
even in cumulative mode, and nothing here forces a device sync before `end_step`.

Data parallelism: `end_step(reducer)` with the step's cross-rank SUM (StepContext.reducer) first replaces
each key's (sum, count) collected in this step by its sum over ranks, so every rank's EMA is the EMA of all
ranks' values (in cumulative mode only the step's new contributions are reduced): W ranks == 1 process
over the same microbatches. Every rank must have collected the same keys (every rank processes at least
one microbatch). The identity reducer (one process) skips the round trip, so one process is bit-exact.
"""

from __future__ import annotations

from typing import Callable

import torch

from isopo_bench.algorithm_api import no_reduction

Reducer = Callable[[torch.Tensor], torch.Tensor]


def _reduce_pairs(pairs: dict[str, tuple[float, float]], reducer: Reducer | None) -> dict[str, tuple[float, float]]:
    """{key: (sum, count)} summed over ranks in one (keys, 2) float64 tensor (keys in sorted order)."""
    if reducer is None or reducer is no_reduction or not pairs:
        return pairs
    keys = sorted(pairs)
    total = reducer(torch.tensor([list(pairs[k]) for k in keys], dtype=torch.float64).reshape(len(keys), 2))
    return {k: (s, c) for k, (s, c) in zip(keys, total.tolist())}


class EmaStats:
    def __init__(self, decay: float, cumulative: bool = False):
        self.decay = decay
        self.cumulative = cumulative
        self.ema: dict[str, torch.Tensor] = {}
        self._sum: dict[str, torch.Tensor] = {}
        self._count: dict[str, int] = {}
        self._reduced: tuple[dict, dict] = ({}, {})
        """(sum, count) already reduced in earlier steps (cumulative mode only)."""
        self._pending: dict[str, list[torch.Tensor]] = {}
        """Values collected in this step, not yet summed into `_sum`."""
        self._pending_many: dict[tuple[str, ...], list[torch.Tensor]] = {}
        """The same for keys collected together (`collect_many`): one (L,) tensor per microbatch."""

    def collect(self, key: str, values: torch.Tensor) -> None:
        """Record the values of statistic `key` seen in this microbatch (any shape; each element counts).
        Kept as they are until the step ends, then summed in one float64 reduction per key: a method calls
        this once per layer and microbatch, and three tiny tensor ops per call cost more than the layer's
        statistic on a small model."""
        self._pending.setdefault(key, []).append(_kept(values))
        self._count[key] = self._count.get(key, 0) + values.numel()

    def collect_many(self, keys: list[str], values_L: torch.Tensor) -> None:
        """`collect(keys[l], values_L[l])` for every l, kept as one tensor (small-layer batching)."""
        self._pending_many.setdefault(tuple(keys), []).append(_kept(values_L))
        for key in keys:
            self._count[key] = self._count.get(key, 0) + 1

    def value_many(self, keys: list[str], current_L: torch.Tensor) -> torch.Tensor:
        """`value(keys[l], current_L[l])` for every l, as one (L,) tensor."""
        emas = [self.ema.get(k) for k in keys]
        current_L = current_L.detach() if current_L.requires_grad else current_L
        if all(e is None for e in emas):
            return current_L
        like = dict(device=current_L.device, dtype=current_L.dtype)
        return torch.stack([current_L[k] if e is None else e.to(**like) for k, e in enumerate(emas)])

    def _fold_pending(self) -> None:
        for key, parts in self._pending.items():
            self._sum[key] = self._sum.get(key, 0.0) + _float64_sum(parts)
        self._pending.clear()
        for keys, parts in self._pending_many.items():
            totals = torch.stack(parts).to(torch.float64).sum(dim=0)
            for k, key in enumerate(keys):
                self._sum[key] = self._sum.get(key, 0.0) + totals[k]
        self._pending_many.clear()

    def value(self, key: str, current: torch.Tensor) -> torch.Tensor:
        """EMA of `key`, or `current` (the mean of this microbatch's values) before the first update."""
        ema = self.ema.get(key)
        if ema is None:
            current = current.detach() if current.requires_grad else current
            return current if current.dim() == 0 else current.mean()
        if ema.dtype == current.dtype and ema.device == current.device:
            return ema
        return ema.to(device=current.device, dtype=current.dtype)

    def end_step(self, reducer: Reducer | None = None) -> None:
        self._fold_pending()
        if reducer is not None and reducer is not no_reduction:
            self._reduce(reducer)
        for key, total in self._sum.items():
            mean = total / self._count[key]
            old = self.ema.get(key)
            self.ema[key] = mean if old is None else self.decay * old.to(mean.device) + (1 - self.decay) * mean
        if not self.cumulative:
            self._sum.clear()
            self._count.clear()
        self._reduced = (dict(self._sum), dict(self._count))

    def _reduce(self, reducer: Reducer) -> None:
        old_sum, old_count = self._reduced
        new = {k: (float(self._sum[k] - old_sum.get(k, 0.0)), self._count[k] - old_count.get(k, 0)) for k in self._sum}
        for k, (s, c) in _reduce_pairs(new, reducer).items():
            self._sum[k] = torch.tensor(old_sum.get(k, 0.0) + s, dtype=torch.float64)
            self._count[k] = old_count.get(k, 0) + round(c)

    def state_dict(self) -> dict:
        self._fold_pending()
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
        self._pending.clear()
        self._pending_many.clear()


class MetricSums:
    """Means of per-layer diagnostics over one optimizer step, kept on device and reduced once when read;
    `pop(reducer)` makes them means over all ranks' values (so a W-rank run logs what the 1-process run logs).
    Python numbers are summed in Python (no tensor is made for a count or a flag)."""

    def __init__(self):
        self._parts: dict[str, list[torch.Tensor]] = {}
        self._numbers: dict[str, float] = {}
        self._count: dict[str, int] = {}
        self._ratios: dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]] = {}

    def add(self, key: str, values: torch.Tensor | float) -> None:
        if isinstance(values, (int, float)):
            self._numbers[key] = self._numbers.get(key, 0.0) + float(values)
            self._count[key] = self._count.get(key, 0) + 1
            return
        self._parts.setdefault(key, []).append(_kept(values))
        self._count[key] = self._count.get(key, 0) + values.numel()

    def add_norm_ratio(self, key: str, numerator: torch.Tensor, denominator: torch.Tensor, eps: float) -> None:
        """Add ||numerator|| / (||denominator|| + eps), norms over the last dimension, to the mean of `key`:
        one value, or one per leading index of `numerator` (e.g. (L, B) against (B,): one per layer).
        Computed when the step's metrics are read, for all such pairs at once, in float64."""
        self._ratios.setdefault(key, []).append((_kept(numerator), _kept(denominator), eps))
        self._count[key] = self._count.get(key, 0) + numerator.numel() // max(numerator.shape[-1], 1)

    def pop(self, reducer: Reducer | None = None) -> dict[str, float]:
        sums = {k: float(_float64_sum(parts)) for k, parts in self._parts.items()}
        for k, pairs in self._ratios.items():
            sums[k] = sums.get(k, 0.0) + float(_norm_ratio_sum(pairs))
        for k, v in self._numbers.items():
            sums[k] = sums.get(k, 0.0) + v
        pairs = _reduce_pairs({k: (v, float(self._count[k])) for k, v in sums.items()}, reducer)
        self._parts.clear()
        self._numbers.clear()
        self._ratios.clear()
        self._count.clear()
        return {key: s / c for key, (s, c) in pairs.items()}


def _kept(values: torch.Tensor) -> torch.Tensor:
    """`values` detached, copied when it is a view of a larger tensor (which keeping it would keep alive).
    (Inside a backward pass nothing requires grad, and then no detach op is dispatched.)"""
    if values.requires_grad:
        values = values.detach()
    base = values._base
    return values.clone() if base is not None and base.numel() > values.numel() else values


def _same_shape(parts: list[torch.Tensor]) -> bool:
    shape = parts[0].shape
    return all(p.shape == shape for p in parts)


def _float64_sum(parts: list[torch.Tensor]) -> torch.Tensor:
    """The float64 sum of every element of `parts` (tensors of any shapes on one device), in one reduction
    (stacked when the shapes agree, the usual case: one op instead of a reshape per part)."""
    if len(parts) == 1:
        joined = parts[0]
    elif _same_shape(parts):
        joined = torch.stack(parts)
    else:
        joined = torch.cat([p.reshape(-1) for p in parts])
    return joined.to(torch.float64).sum()


def _norm_ratio_sum(pairs: list[tuple[torch.Tensor, torch.Tensor, float]]) -> torch.Tensor:
    """sum over pairs (and num's leading indices) of ||num|| / (||den|| + eps), norms over the last
    dimension, in float64, batched where the shapes agree."""
    groups: dict[tuple, list] = {}
    for num, den, eps in pairs:
        groups.setdefault((num.shape, den.shape, eps), []).append((num, den))
    total = torch.zeros((), dtype=torch.float64, device=pairs[0][0].device)
    for (_, _, eps), items in groups.items():
        nums = torch.stack([n for n, _ in items]).to(torch.float64).norm(dim=-1)
        dens = torch.stack([d for _, d in items]).to(torch.float64).norm(dim=-1)
        dens = dens.view(dens.shape + (1,) * (nums.dim() - dens.dim()))
        total = total + (nums / (dens + eps)).sum()
    return total
