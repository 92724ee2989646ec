"""reasoning-gym adapter: registration, gold answers score 1, disjoint splits, params, extraction."""

import pytest

from isopo_bench.config import TaskConfig
from isopo_bench.errors import ConfigError
from isopo_bench.plugins import TASKS
from isopo_bench.tasks.reasoning_gym import ReasoningGymSettings

pytest.importorskip("reasoning_gym")
from isopo_bench.tasks.reasoning_gym import NAMES, extract_answer  # noqa: E402

CONFIGS = [
    ("rg-chain_sum", ()),
    ("rg-chain_sum", ("max_terms=3", "max_digits=2", "answer_format=tags")),
    ("rg-basic_arithmetic", ()),
    ("rg-basic_arithmetic", ("operators=+-", "max_terms=3", "allow_parentheses=false")),
    ("rg-leg_counting", ("max_animals=4", "max_instances=5")),
    ("rg-gsm_symbolic", ()),
]


def make(name, params=(), seed=0):
    """`params`: key=value strings; answer_format is the task's own setting, the rest pass to reasoning_gym."""
    fmt = [p.split("=", 1)[1] for p in params if p.startswith("answer_format=")]
    rest = tuple(p for p in params if not p.startswith("answer_format="))
    settings = ReasoningGymSettings(dataset_params=rest, **({"answer_format": fmt[0]} if fmt else {}))
    cfg = TaskConfig(name=name, settings=settings)
    TASKS.get(name).validate(cfg)
    return TASKS.get(name)(cfg, seed)


def test_at_least_four_tasks_registered():
    assert {f"rg-{n}" for n in NAMES} <= set(TASKS.names()) and len(NAMES) >= 4


@pytest.mark.parametrize("name, params", CONFIGS)
def test_gold_answers_score_one_and_splits_are_disjoint(name, params):
    task = make(name, params)
    train, test = task.train_items(0, 200), task.eval_items(100)
    for item in train + test:
        assert task.score(item, f"Let me think.\n{item.solution}") == 1.0
    assert not {i.question for i in train} & {i.question for i in test}
    wrong = test[0].solution.replace(test[0].answer, test[0].answer + "7")
    assert task.score(test[0], wrong) < 1.0  # reasoning_gym may give partial credit, never full
    assert task.score(test[0], test[0].answer) == 0.0  # the bare answer lacks the marker


def test_items_are_deterministic_and_test_set_ignores_run_seed():
    a, b = make("rg-chain_sum", seed=1), make("rg-chain_sum", seed=2)
    assert a.train_items(3, 8) == make("rg-chain_sum", seed=1).train_items(3, 8)
    assert a.train_items(0, 32) != b.train_items(0, 32)
    assert a.eval_items(32) == b.eval_items(32)


def test_difficulty_params_reach_reasoning_gym():
    task = make("rg-chain_sum", ("min_terms=2", "max_terms=2", "min_digits=1", "max_digits=1"))
    for item in task.eval_items(50):
        assert item.meta["entry"]["metadata"]["num_terms"] == 2
        assert abs(int(item.answer)) <= 18
    ops = "".join(make("rg-basic_arithmetic", ("operators=+",)).prompt(i) for i in make("rg-basic_arithmetic").eval_items(1))
    assert "####" in ops


def test_basic_arithmetic_never_divides():
    task = make("rg-basic_arithmetic")
    assert not any("/" in item.question for item in task.train_items(0, 300))
    with pytest.raises(ConfigError, match="floor-division"):
        make("rg-basic_arithmetic", ("operators=+-*/",))


@pytest.mark.parametrize(
    "params, match", [(("answer_format=xml",),  "answer_format"), (("nope=1",), "no setting"), (("min_terms=0",), "invalid")]
)
def test_invalid_params(params, match):
    with pytest.raises(ConfigError, match=match):
        make("rg-chain_sum", params)


@pytest.mark.parametrize(
    "completion, fmt, expected",
    [
        ("x\n#### 12\nmore", "hash", "12"),
        ("#### 1\n####  -3 ", "hash", "-3"),
        ("no marker", "hash", None),
        ("<answer>1</answer> then <answer> 42 </answer>", "tags", "42"),
        ("<answer>42", "tags", None),
        ("#### " + "9" * 5000, "hash", "9" * 1000),
    ],
)
def test_extract_answer(completion, fmt, expected):
    assert extract_answer(completion, fmt) == expected
