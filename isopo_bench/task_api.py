"""The task contract: deterministic items, a prompt builder and a pure CPU scorer.

Tasks never see models. Item i of a split is a pure function of (seed, split, i) for procedural tasks,
or of (split, i) for file-backed datasets. Training items never come from the evaluation split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from isopo_bench.config import TaskConfig

Split = Literal["train", "test"]


@dataclass(frozen=True)
class TaskItem:
    question: str
    """The problem statement (without the instruction suffix)."""
    answer: str
    """The gold answer in canonical form (e.g. "42")."""
    solution: str = ""
    """A worked solution ending in "#### <answer>" when available (used by SFT warm starts)."""
    meta: dict = field(default_factory=dict)


class Task:
    """Base class; subclasses register with `@TASKS.register("name")` and are built as `cls(task_config, seed)`."""

    gradient_signals: ClassVar[tuple[str, ...]] = ("score-function",)
    """What the task offers an algorithm: a verifier reward has no derivative, so text tasks support only
    score-function (log-prob) methods; differentiable-control tasks also offer `pathwise`."""
    scorer_version: ClassVar[str] = "0"
    """Bumped whenever scoring changes; logged with every run so scores are comparable only within a version."""

    def __init__(self, cfg: "TaskConfig", seed: int):
        self.cfg = cfg
        self.seed = seed

    @classmethod
    def validate(cls, cfg: "TaskConfig") -> None:
        """Raise ConfigError for invalid task settings (called before any model is loaded)."""

    def num_items(self, split: Split) -> int | None:
        """Dataset size, or None for procedural tasks (unbounded)."""
        return None

    def item(self, split: Split, index: int) -> TaskItem:
        raise NotImplementedError

    def prompt(self, item: TaskItem) -> str:
        """The user-facing prompt text (engines apply a chat template when the tokenizer has one)."""
        raise NotImplementedError

    def score(self, item: TaskItem, completion: str) -> float:
        """Reward in [0, 1]; pure, CPU-only, never evaluates model output."""
        raise NotImplementedError

    def score_details(self, item: TaskItem, completion: str) -> dict[str, float]:
        """Extra scores logged beside the reward (e.g. strict and flexible extraction)."""
        return {}

    def train_items(self, step: int, count: int) -> list[TaskItem]:
        """The `count` training items of `step`: a pure function of (seed, step)."""
        n = self.num_items("train")
        start = step * count
        if n is None:
            return [self.item("train", start + k) for k in range(count)]
        return [self.item("train", self._train_order(n)[(start + k) % n]) for k in range(count)]

    def eval_items(self, count: int) -> list[TaskItem]:
        n = self.num_items("test")
        count = count if n is None else min(count, n)
        return [self.item("test", k) for k in range(count)]

    def _train_order(self, n: int) -> list[int]:
        # A seeded permutation of the training split, computed once.
        order = getattr(self, "_order_cache", None)
        if order is None or len(order) != n:
            import random

            order = list(range(n))
            random.Random(self.seed).shuffle(order)
            self._order_cache = order
        return order
