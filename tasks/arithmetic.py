"""Synthetic arithmetic in GSM8K answer format: the CPU stand-in for GSM8K.

Question "12+45-7", prompt "12+45-7=?", worked solution "12+45=57\\n57-7=50\\n#### 50" (multiplications
first, then left to right). The reward is the paper's strict GSM8K reward: 1 when the number after the
last "####" equals the answer. Prompts are short because the tiny model is character-level.

Item i of a split is a pure function of (seed, split, i), drawn from a hash-seeded RNG. Train and test
are disjoint by construction: a question belongs to the test partition when a hash of its text falls in a
1/8 slice, test items are drawn (by rejection) from that slice and train items from the rest. Test items
ignore the run seed so that runs with different seeds are scored on the same questions.

Settings (ArithmeticSettings, `--task.<field>`): num_terms, min/max_operand, ops, instruction,
reward_extraction (flexible: the last number counts, for pretrained models that answer in prose, e.g.
SmolLM2-135M never writes "####").
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass
from typing import Literal

from isopo_bench.answers import extract_flexible, score_flexible, score_strict
from isopo_bench.config import TaskConfig
from isopo_bench.errors import ConfigError
from isopo_bench.plugins import TASKS
from isopo_bench.task_api import Split, Task, TaskItem

from ._params import check_range



@dataclass(frozen=True)
class ArithmeticSettings:
    num_terms: int = 3
    """Operands per question (2 to 20)."""
    max_operand: int = 99
    """Largest operand."""
    min_operand: int = 0
    """Smallest operand."""
    ops: str = "+-"
    """Operators drawn from (any non-empty subset of `+-*`)."""
    instruction: str = ""
    """Appended on a new line after the prompt when set."""
    reward_extraction: Literal["strict", "flexible"] = "strict"
    """`strict`: the number after the last "####"; `flexible`: the last number in the completion."""

TEST_SLICE = 8
MIN_QUESTIONS = 100  # fewer could leave the 1/8 test slice empty (P = (7/8)^100 ~ 2e-6 at 100)
MAX_TRIES = 10_000


def question_is_test(question: str) -> bool:
    digest = hashlib.sha256(question.encode()).digest()
    return int.from_bytes(digest[:4], "big") % TEST_SLICE == 0


def solve(operands: list[int], ops: list[str]) -> tuple[list[str], int]:
    """Worked steps and result: products first, then sums and differences left to right."""
    lines, values, pending = [], [operands[0]], []
    for op, x in zip(ops, operands[1:]):
        if op == "*":
            product = values[-1] * x
            lines.append(f"{values[-1]}*{x}={product}")
            values[-1] = product
        else:
            pending.append(op)
            values.append(x)
    acc = values[0]
    for op, x in zip(pending, values[1:]):
        new = acc + x if op == "+" else acc - x
        lines.append(f"{acc}{op}{x}={new}")
        acc = new
    return lines, acc


@TASKS.register("arithmetic")
class Arithmetic(Task):
    Settings = ArithmeticSettings
    scorer_version = "arithmetic-1"

    def __init__(self, cfg: TaskConfig, seed: int):
        super().__init__(cfg, seed)
        self.params = self.parse(cfg)

    @classmethod
    def parse(cls, cfg: TaskConfig) -> dict:
        p = dataclasses.asdict(cfg.settings if cfg.settings is not None else ArithmeticSettings())
        check_range("num_terms", p["num_terms"], 2, 20)
        check_range("min_operand", p["min_operand"], 0, 10**6)
        check_range("max_operand", p["max_operand"], p["min_operand"], 10**6)
        if not p["ops"] or set(p["ops"]) - set("+-*"):
            raise ConfigError("task.ops", f"{p['ops']!r} must be a non-empty subset of +-*", "e.g. --task.ops +- or +-*")
        if p["reward_extraction"] not in ("strict", "flexible"):
            raise ConfigError("task.reward_extraction", f"`{p['reward_extraction']}`", "use strict or flexible")
        span = p["max_operand"] - p["min_operand"] + 1
        if span ** p["num_terms"] * len(set(p["ops"])) ** (p["num_terms"] - 1) < MIN_QUESTIONS:
            raise ConfigError(
                "task.max_operand", f"fewer than {MIN_QUESTIONS} distinct questions", "raise max_operand or num_terms"
            )
        return p

    @classmethod
    def validate(cls, cfg: TaskConfig) -> None:
        cls.parse(cfg)

    def item(self, split: Split, index: int) -> TaskItem:
        # The test stream has its own seed-free RNG key; partition membership keeps the streams disjoint.
        key = f"arithmetic:test:{index}" if split == "test" else f"arithmetic:{self.seed}:train:{index}"
        rng = random.Random(key)
        for _ in range(MAX_TRIES):
            operands, ops = self._draw(rng)
            question = "".join(f"{a}{op}" for a, op in zip(operands, ops)) + str(operands[-1])
            if question_is_test(question) == (split == "test"):
                lines, result = solve(operands, ops)
                solution = "\n".join(lines + [f"#### {result}"])
                return TaskItem(question=question, answer=str(result), solution=solution)
        raise RuntimeError(f"no {split} question found after {MAX_TRIES} draws; widen the question space")

    def _draw(self, rng: random.Random) -> tuple[list[int], list[str]]:
        p = self.params
        operands = [rng.randint(p["min_operand"], p["max_operand"]) for _ in range(p["num_terms"])]
        ops = [rng.choice(p["ops"]) for _ in range(p["num_terms"] - 1)]
        return operands, ops

    def prompt(self, item: TaskItem) -> str:
        text = f"{item.question}=?"
        return f"{text}\n{self.params['instruction']}" if self.params["instruction"] else text

    def score(self, item: TaskItem, completion: str) -> float:
        if self.params["reward_extraction"] == "flexible":
            return score_flexible(completion, item.answer)
        return score_strict(completion, item.answer)

    def score_details(self, item: TaskItem, completion: str) -> dict[str, float]:
        return {
            "strict": score_strict(completion, item.answer),
            "flexible": score_flexible(completion, item.answer),
            "has_number": float(extract_flexible(completion) is not None),
        }
