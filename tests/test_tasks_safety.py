"""Every registered task's scorer on random and hostile completions: no crash, no hang, reward in [0, 1]."""

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isopo_bench.config import TaskConfig
from isopo_bench.errors import ConfigError
from isopo_bench.plugins import TASKS

TIME_LIMIT_S = 1.0
ROW = json.dumps({"question": "How many?", "answer": "2+2=<<2+2=4>>4\n#### 1,234"})
HOSTILE = [
    "",
    "#### " + "9" * 1_000_000,
    "9" * 1_000_000,
    "(" * 100_000 + "1" + ")" * 100_000,
    "#### " + "1," * 300_000,
    "-" * 500_000 + "1",
    "#### 1e999999999",
    "#### 9**9**9**9",
    "<answer>" * 50_000 + "</answer>",
    "#### \u0661\u0662\u0663\u0664",  # Arabic-Indic digits
    "#### \uff11\uff12",  # full-width digits
    "#### nan",
    "#### inf",
    "#### -0",
    "#### 1" + ".0" * 200_000,
    "__import__('os').system('echo pwned')",
    "\x00" * 1000 + "#### 4",
    "#" * 1_000_000,
    "1 " * 500_000,
]


def all_tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gsm8k")
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text(ROW + "\n")
    tasks = []
    for name in TASKS.names():
        cfg = TaskConfig(name=name, data_dir=str(folder) if name == "gsm8k" else "")
        try:
            TASKS.get(name).validate(cfg)
        except ConfigError:  # an optional package (reasoning-gym) is missing: check the others
            continue
        task = TASKS.get(name)(cfg, 0)
        tasks.append((task, task.item("test", 0)))
    assert "arithmetic" in [task.cfg.name for task, _ in tasks]
    return tasks


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return all_tasks(tmp_path_factory)


def check(tasks, completion):
    for task, item in tasks:
        start = time.perf_counter()
        values = [task.score(item, completion), *task.score_details(item, completion).values()]
        elapsed = time.perf_counter() - start
        assert elapsed < TIME_LIMIT_S, (task.cfg.name, elapsed)
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values), (task.cfg.name, values)


@pytest.mark.parametrize("completion", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_completions(tasks, completion):
    check(tasks, completion)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.text(max_size=60),
            st.sampled_from(["####", "#### ", "<answer>", "</answer>", "-", ",", ".", "$", "\n", "1,234", "0.50"]),
            st.integers(min_value=-(10**60), max_value=10**60).map(str),
            st.decimals(allow_nan=True, allow_infinity=True).map(str),
        ),
        max_size=30,
    ).map("".join)
)
def test_random_completions(tasks, completion):
    check(tasks, completion)


def test_gold_answers_score_one_on_every_task(tasks):
    for task, item in tasks:
        assert task.score(item, item.solution) == 1.0, task.cfg.name
