"""The per-step metrics the trainer logs besides phase times: the rollout's reward and length statistics,
and `UpdateMetrics`, which averages the update's per-microbatch values over its optimizer steps and merges
data-parallel ranks' shares as one process would have counted them."""

from __future__ import annotations

import torch

from isopo_bench import metric_names as M


class UpdateMetrics:
    """Averages per-microbatch metrics over an update: sums per optimizer step, then mean over steps."""

    def __init__(self):
        self._step_sums: dict[str, float] = {}
        self._per_step: dict[str, list[float]] = {}
        self._totals: dict[str, list[float]] = {}
        self._weighted: dict[str, list[float]] = {}

    def add_sum(self, name: str, value: float) -> None:
        self._step_sums[name] = self._step_sums.get(name, 0.0) + value

    def add_weighted(self, name: str, value_sum: float, weight: float) -> None:
        acc = self._weighted.setdefault(name, [0.0, 0.0])
        acc[0] += value_sum
        acc[1] += weight

    def add_mean(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self._totals.setdefault(name, []).append(float(value))

    def end_optimizer_step(self) -> None:
        for name, value in self._step_sums.items():
            self._per_step.setdefault(name, []).append(value)
        self._step_sums = {}

    @staticmethod
    def merge(ranks: list["UpdateMetrics"]) -> "UpdateMetrics":
        """Data-parallel ranks' sums as one process would have them: per-step sums (the loss) add up step
        by step; per-microbatch means pool every rank's microbatches; weighted means pool numerators and
        weights."""
        if len(ranks) == 1:
            return ranks[0]
        out = UpdateMetrics()
        for r in ranks:
            for name, values in r._per_step.items():
                acc = out._per_step.setdefault(name, [0.0] * len(values))
                out._per_step[name] = [a + v for a, v in zip(acc, values)]
            for name, values in r._totals.items():
                out._totals.setdefault(name, []).extend(values)
            for name, (value_sum, weight) in r._weighted.items():
                out.add_weighted(name, value_sum, weight)
        return out

    def result(self) -> dict[str, float]:
        out = {name: sum(v) / len(v) for name, v in (self._totals | self._per_step).items()}
        out |= {name: s / max(w, 1e-12) for name, (s, w) in self._weighted.items()}
        return out


def rollout_metrics(rollout, rewards_PG: torch.Tensor, advantages_B: torch.Tensor) -> dict[str, float]:
    lengths = [len(c) for c in rollout.completion_ids]
    solved = rewards_PG.min(dim=1).values >= 1.0
    failed = rewards_PG.max(dim=1).values <= 0.0
    return {
        M.REWARD_MEAN: float(rewards_PG.mean()),
        M.REWARD_STD: float(rewards_PG.std()) if rewards_PG.numel() > 1 else 0.0,
        M.REWARD_SOLVED_GROUPS: float(solved.float().mean()),
        M.REWARD_ZERO_GROUPS: float(failed.float().mean()),
        M.ADVANTAGE_ABS_MEAN: float(advantages_B.abs().mean()),
        M.ROLLOUT_TOKENS: float(sum(lengths)),
        M.ROLLOUT_MEAN_LEN: sum(lengths) / len(lengths),
        M.ROLLOUT_TRUNCATED: sum(r == "length" for r in rollout.finish_reasons) / len(lengths),
    }
