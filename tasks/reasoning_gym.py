"""Procedural tasks from reasoning-gym (open-thought/reasoning-gym), registered as "rg-<name>".

Registered: rg-chain_sum, rg-basic_arithmetic, rg-leg_counting, rg-gsm_symbolic. Each is scored by its
own `score_answer` from reasoning_gym (which may give partial credit, e.g. 0.01 for a wrong number on
gsm_symbolic), applied to the answer extracted from the completion:
- `answer_format=hash` (default, as GSM8K): the rest of the line after the last "####";
- `answer_format=tags`: the text inside the last <answer>...</answer>, reasoning_gym's own convention.
The extracted answer is capped at 1000 characters, so the reasoning_gym scorers see bounded input.

Difficulty: any field of the dataset's reasoning_gym config passes through `--task.dataset-params` (e.g.
`max_terms=3 max_digits=2` for chain_sum; sequences such as `operators=+-*` are written as characters).
basic_arithmetic excludes "/" by default and refuses it: reasoning_gym computes its answer with floor
division while the question shows "/", so the gold answer can disagree with the question.
Candidates whose gold answer does not score 1 under their own scorer are skipped.
countdown is not offered: generating an item takes ~50 ms (a search with sympy) and its scorer runs
sympy's parse_expr, which evaluates the model's text as Python.

Splits: reasoning_gym item j of a dataset is a function of (dataset seed, j). Candidate t of our item i is
dataset item (i * STRIDE + t) of a block-seeded dataset; the first candidate in the split's partition
(a 1/8 hash slice of question texts for test) is the item, so train and test questions never coincide.
Test items ignore the run seed so that every run is scored on the same questions.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Literal

from isopo_bench.config import TaskConfig
from isopo_bench.errors import ConfigError
from isopo_bench.plugins import TASKS
from isopo_bench.task_api import Split, Task, TaskItem

from ._params import FIELD, parse_params

NAMES = ("chain_sum", "basic_arithmetic", "leg_counting", "gsm_symbolic")
OVERRIDES = {"basic_arithmetic": {"operators": ("+", "-", "*")}}
SUFFIXES = {
    "hash": 'Think step by step and output the final answer after "####".',
    "tags": "Think step by step and give the final answer inside <answer></answer> tags.",
}
TEST_SLICE, STRIDE, BLOCK, MAX_ANSWER_CHARS = 8, 256, 4096, 1000


def _rg():
    try:
        import reasoning_gym
    except ImportError:
        raise ConfigError(
            "task.name", "reasoning-gym tasks need the `reasoning-gym` package",
            "pip install 'isopo-bench[tasks]' (or pip install reasoning-gym)",
        ) from None
    return reasoning_gym


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def extract_answer(completion: str, answer_format: str) -> str | None:
    """The answer part of a completion (see module docstring); None when the marker is missing."""
    if answer_format == "tags":
        start = completion.rfind("<answer>")
        end = completion.find("</answer>", start + 1)
        if start < 0 or end < 0:
            return None
        answer = completion[start + len("<answer>") : end]
    else:
        start = completion.rfind("####")
        if start < 0:
            return None
        answer = completion[start + 4 :].split("\n", 1)[0]
    return answer.strip()[:MAX_ANSWER_CHARS]


def _field_default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _convert_sequence(default, value):
    # Sequences of single characters (operators) are written "+-*"; anything else comma-separated.
    if isinstance(default, (tuple, list)) and isinstance(value, str):
        single = all(isinstance(x, str) and len(x) == 1 for x in default)
        return tuple(value) if single else tuple(v.strip() for v in value.split(","))
    return value


@dataclass(frozen=True)
class ReasoningGymSettings:
    answer_format: Literal["hash", "tags"] = "hash"
    """`hash`: the rest of the line after the last "####"; `tags`: inside the last <answer></answer>."""
    dataset_params: tuple[str, ...] = ()
    """Fields of the reasoning_gym dataset's own config as key=value (e.g. `max_terms=3`); checked against it."""


class ReasoningGymTask(Task):
    Settings = ReasoningGymSettings
    rg_name: str = ""
    scorer_version = "rg-1"

    def __init__(self, cfg: TaskConfig, seed: int):
        super().__init__(cfg, seed)
        self.rg_kwargs, self.answer_format = self.parse(cfg)
        self._train_seed = _stable_int(f"rg:{self.rg_name}:train:{seed}")
        self._test_seed = _stable_int(f"rg:{self.rg_name}:test")
        self._datasets: dict[tuple[str, int], object] = {}
        self._test_items: dict[int, TaskItem] = {}  # evaluation re-reads the same items every time
        self._scorer = None

    @classmethod
    def parse(cls, cfg: TaskConfig) -> tuple[dict, str]:
        _, config_cls = _rg().factory.DATASETS[cls.rg_name]
        defaults = {f.name: _field_default(f) for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size")}
        defaults |= OVERRIDES.get(cls.rg_name, {})
        as_text = {k: ("".join(v) if isinstance(v, (tuple, list)) else v) for k, v in defaults.items()}
        settings = cfg.settings if cfg.settings is not None else ReasoningGymSettings()
        p = parse_params(settings.dataset_params, cfg.name, as_text)
        answer_format = settings.answer_format
        if answer_format not in SUFFIXES:
            raise ConfigError("task.answer_format", f"`{answer_format}`", "use hash or tags")
        kwargs = {k: _convert_sequence(defaults[k], v) for k, v in p.items()}
        if cls.rg_name == "basic_arithmetic" and "/" in kwargs["operators"]:
            raise ConfigError(FIELD, "basic_arithmetic with `/` has floor-division answers", "use operators=+-*")
        try:
            config_cls(**kwargs, seed=0, size=BLOCK).validate()
        except AssertionError as exc:
            raise ConfigError(FIELD, f"invalid {cls.rg_name} settings ({exc})", "see reasoning_gym's config") from None
        return kwargs, answer_format

    @classmethod
    def validate(cls, cfg: TaskConfig) -> None:
        cls.parse(cfg)

    def _dataset(self, split: Split, block: int):
        key = (split, block)
        if key not in self._datasets:
            # Training walks through blocks in order: keep only a few (gsm_symbolic's hold 4096 indices).
            if len(self._datasets) >= 8:
                self._datasets.pop(next(iter(self._datasets)))
            base = self._test_seed if split == "test" else self._train_seed
            seed = _stable_int(f"{base}:{block}") % 2**31
            self._datasets[key] = _rg().create_dataset(self.rg_name, **self.rg_kwargs, seed=seed, size=BLOCK)
        return self._datasets[key]

    def _candidate(self, split: Split, raw: int) -> dict:
        return self._dataset(split, raw // BLOCK)[raw % BLOCK]

    def item(self, split: Split, index: int) -> TaskItem:
        if split == "test":
            if index not in self._test_items:
                self._test_items[index] = self._draw(split, index)
            return self._test_items[index]
        return self._draw(split, index)

    def _draw(self, split: Split, index: int) -> TaskItem:
        for t in range(STRIDE):
            entry = self._candidate(split, index * STRIDE + t)
            is_test = _stable_int(entry["question"]) % TEST_SLICE == 0
            # Items whose gold answer fails their own scorer (e.g. gsm_symbolic's rare negative answers,
            # which its regex reads without the sign) could never be solved: skip them.
            if is_test == (split == "test") and self._score_answer(str(entry["answer"]), entry) == 1.0:
                answer = str(entry["answer"])
                return TaskItem(entry["question"], answer, solution=self._solution(answer), meta={"entry": entry})
        raise RuntimeError(f"no {split} item among {STRIDE} candidates; the question space is too small")

    def _solution(self, answer: str) -> str:
        return f"<answer>{answer}</answer>" if self.answer_format == "tags" else f"#### {answer}"

    def prompt(self, item: TaskItem) -> str:
        return f"{item.question.rstrip()}\n{SUFFIXES[self.answer_format]}"

    def score(self, item: TaskItem, completion: str) -> float:
        answer = extract_answer(completion, self.answer_format)
        if answer is None:
            return 0.0
        return self._score_answer(answer, item.meta["entry"])

    def _score_answer(self, answer: str, entry: dict) -> float:
        # score_answer reads the entry only, never the dataset's seed: one instance serves every split.
        if self._scorer is None:
            self._scorer = _rg().create_dataset(self.rg_name, **self.rg_kwargs, seed=0, size=1)
        return min(1.0, max(0.0, float(self._scorer.score_answer(answer, entry))))

    def score_details(self, item: TaskItem, completion: str) -> dict[str, float]:
        return {"has_answer": float(extract_answer(completion, self.answer_format) is not None)}


def _register(name: str) -> type[ReasoningGymTask]:
    cls = type(f"RG_{name}", (ReasoningGymTask,), {"rg_name": name, "__module__": __name__})
    return TASKS.register(f"rg-{name}")(cls)


for _name in NAMES:
    _register(_name)
