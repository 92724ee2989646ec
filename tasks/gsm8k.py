"""GSM8K (Cobbe et al. 2021) with the ISOPO paper's prompt and reward.

Prompt: the question + " " + the suffix of verl's examples/data_preprocess/gsm8k.py, which the paper's run
(nilin/isopo run/run.sh) uses. Reward: verl's GSM8K rule, strict by default (the number after the last
"####"); `--task.reward-extraction flexible` scores the last number instead. Both are logged as details.

Data, first found wins: TaskConfig.data_dir, the env var ISOPO_BENCH_GSM8K_DIR (a folder holding
train.jsonl and test.jsonl, as in openai/grade-school-math), else the Hugging Face dataset "openai/gsm8k"
config "main" through `datasets` (imported only then). Training items come from the train split only, in
a seeded permutation; evaluation uses the first `eval_items` test rows in file order.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from isopo_bench.answers import normalize_number, score_flexible, score_strict
from isopo_bench.config import TaskConfig
from isopo_bench.errors import ConfigError, DataError
from isopo_bench.plugins import TASKS
from isopo_bench.task_api import Split, Task, TaskItem


INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
ENV_VAR = "ISOPO_BENCH_GSM8K_DIR"
HUB_ID, HUB_CONFIG = "openai/gsm8k", "main"


@dataclass(frozen=True)
class Gsm8kSettings:
    reward_extraction: Literal["strict", "flexible"] = "strict"
    """`strict`: the number after the last "####" (the paper's reward); `flexible`: the last number."""

_GOLD_RE = re.compile(r"####[ \t]{0,8}([^\n]{1,64})[ \t]*$")
# Calculator annotations "<<48/2=24>>" are a dataset artefact; the worked solution for SFT drops them.
_CALC_RE = re.compile(r"<<[^<>\n]{0,200}>>")


def data_dir(cfg: TaskConfig) -> Path | None:
    folder = cfg.data_dir or os.environ.get(ENV_VAR, "")
    return Path(folder).expanduser() if folder else None


def parse_row(obj: object, where: str) -> TaskItem:
    """One GSM8K record -> TaskItem; `where` ("file:line") names the row in errors."""
    if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or not isinstance(obj.get("answer"), str):
        raise DataError(f"{where}: expected an object with string fields `question` and `answer`")
    match = _GOLD_RE.search(obj["answer"].rstrip())
    gold = normalize_number(match.group(1)) if match else None
    if gold is None:
        raise DataError(f"{where}: the answer does not end in a line `#### <number>`")
    body = obj["answer"][: match.start()].rstrip()
    solution = _CALC_RE.sub("", body) + f"\n#### {gold}"
    return TaskItem(question=obj["question"].strip(), answer=gold, solution=solution.lstrip("\n"))


@functools.lru_cache(maxsize=8)
def _load_jsonl(path: str, mtime_ns: int) -> tuple[TaskItem, ...]:
    # mtime is part of the cache key so an edited file is re-read.
    items = []
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{line_no}: not UTF-8 text (a binary file?). Fix: point task.data_dir at "
                                "JSON-lines files, one {\"question\", \"answer\"} object per line") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from None
            items.append(parse_row(obj, f"{path}:{line_no}"))
    if not items:
        raise DataError(f"{path}: no rows. Fix: give a JSON-lines file with one {{\"question\", \"answer\"}} object "
                        "per line (task.data_dir)")
    return tuple(items)


@functools.lru_cache(maxsize=2)
def _load_hub(split: str) -> tuple[TaskItem, ...]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            "task.data_dir", "no GSM8K folder given and the `datasets` package is not installed",
            f"set task.data_dir or ${ENV_VAR} to a folder with train.jsonl/test.jsonl, or `pip install datasets`",
        ) from None
    try:
        rows = datasets.load_dataset(HUB_ID, HUB_CONFIG, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, hub down, no cache: datasets raises many kinds
        raise ConfigError(
            "task.data_dir", f"no GSM8K folder given and the hub dataset {HUB_ID} could not be loaded "
            f"({type(exc).__name__}: {str(exc)[:200]})",
            f"set task.data_dir or ${ENV_VAR} to a folder with train.jsonl/test.jsonl (offline machines), or go "
            "online once so the datasets cache holds it",
        ) from None
    return tuple(parse_row(dict(row), f"{HUB_ID}[{split}][{i}]") for i, row in enumerate(rows))


def load_split(cfg: TaskConfig, split: Split) -> tuple[TaskItem, ...]:
    folder = data_dir(cfg)
    if folder is None:
        return _load_hub(split)
    path = folder / f"{split}.jsonl"
    return _load_jsonl(str(path), path.stat().st_mtime_ns)


@TASKS.register("gsm8k")
class Gsm8k(Task):
    Settings = Gsm8kSettings
    scorer_version = "gsm8k-1"

    def __init__(self, cfg: TaskConfig, seed: int):
        super().__init__(cfg, seed)
        self.params = self.parse(cfg)
        self._splits: dict[str, tuple[TaskItem, ...]] = {}

    @classmethod
    def parse(cls, cfg: TaskConfig) -> dict:
        p = dataclasses.asdict(cfg.settings if cfg.settings is not None else Gsm8kSettings())
        if p["reward_extraction"] not in ("strict", "flexible"):
            raise ConfigError("task.reward_extraction", f"`{p['reward_extraction']}`", "use strict or flexible")
        return p

    @classmethod
    def validate(cls, cfg: TaskConfig) -> None:
        cls.parse(cfg)
        folder = data_dir(cfg)
        if folder is not None:
            missing = [name for name in ("train.jsonl", "test.jsonl") if not (folder / name).is_file()]
            if missing:
                raise ConfigError(
                    "task.data_dir", f"`{folder}` lacks {', '.join(missing)}",
                    "point it at a folder holding GSM8K train.jsonl and test.jsonl",
                )

    def split(self, split: Split) -> tuple[TaskItem, ...]:
        if split not in self._splits:
            self._splits[split] = load_split(self.cfg, split)
        return self._splits[split]

    def num_items(self, split: Split) -> int:
        return len(self.split(split))

    def item(self, split: Split, index: int) -> TaskItem:
        return self.split(split)[index]

    def prompt(self, item: TaskItem) -> str:
        return f"{item.question} {INSTRUCTION}"

    def score(self, item: TaskItem, completion: str) -> float:
        if self.params["reward_extraction"] == "flexible":
            return score_flexible(completion, item.answer)
        return score_strict(completion, item.answer)

    def score_details(self, item: TaskItem, completion: str) -> dict[str, float]:
        return {"strict": score_strict(completion, item.answer), "flexible": score_flexible(completion, item.answer)}
