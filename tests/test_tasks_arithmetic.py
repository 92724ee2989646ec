"""The arithmetic task: determinism, disjoint splits, correct worked solutions, strict scoring."""

import pytest

from isopo_bench.config import TaskConfig
from isopo_bench.errors import ConfigError
from isopo_bench.plugins import TASKS
from isopo_bench.tasks.arithmetic import ArithmeticSettings, question_is_test, solve


def make(params=(), seed=0):
    """`params` as key=value strings (the typed settings' fields) keep the cases readable."""
    settings = ArithmeticSettings(**{k: type(getattr(ArithmeticSettings(), k))(v) for k, v in (p.split("=", 1) for p in params)})
    return TASKS.get("arithmetic")(TaskConfig(name="arithmetic", settings=settings), seed)


def test_items_are_a_pure_function_of_seed_split_index():
    assert make(seed=3).item("train", 17) == make(seed=3).item("train", 17)
    assert make(seed=3).train_items(5, 8) == make(seed=3).train_items(5, 8)
    assert make(seed=3).train_items(0, 50) != make(seed=4).train_items(0, 50)
    # The test set does not depend on the run seed, so runs with different seeds are comparable.
    assert make(seed=3).eval_items(50) == make(seed=4).eval_items(50)


def test_train_and_test_questions_are_disjoint():
    task = make()
    train = {item.question for item in task.train_items(0, 4000)}
    test = {item.question for item in task.eval_items(500)}
    assert train.isdisjoint(test)
    assert all(question_is_test(q) for q in test) and not any(question_is_test(q) for q in train)
    assert len(test) == 500  # 2-digit, 3-term space is large: no repeats among 500 test items


def test_small_space_still_disjoint():
    task = make(("num_terms=2", "max_operand=19", "ops=+"))
    train = {item.question for item in task.train_items(0, 2000)}
    test = {item.question for item in task.eval_items(200)}
    assert train.isdisjoint(test) and test


def test_worked_solution_and_answer():
    assert solve([12, 45, 7], ["+", "-"]) == (["12+45=57", "57-7=50"], 50)
    assert solve([3, 4, 5], ["+", "*"]) == (["4*5=20", "3+20=23"], 23)
    assert solve([2, 3, 4, 1], ["*", "*", "-"]) == (["2*3=6", "6*4=24", "24-1=23"], 23)


@pytest.mark.parametrize("params", [(), ("ops=+-*", "num_terms=4"), ("num_terms=2", "max_operand=9", "min_operand=1")])
def test_gold_solutions_score_one_and_match_python_arithmetic(params):
    task = make(params)
    for item in task.train_items(0, 100) + task.eval_items(100):
        assert task.score(item, item.solution) == 1.0
        assert item.solution.endswith(f"#### {item.answer}")
        # The question is a Python expression with the usual precedence; eval is fine on our own text.
        assert int(item.answer) == eval(item.question)  # noqa: S307
        assert len(task.prompt(item)) < 30


def test_scoring_strict_versus_flexible():
    task = make()
    item = task.item("test", 0)
    right, wrong = item.answer, str(int(item.answer) + 1)
    assert task.score(item, f"#### {right}") == 1.0
    assert task.score(item, f"#### {wrong}") == 0.0
    assert task.score(item, right) == 0.0  # no marker: the strict reward is 0
    assert task.score_details(item, right) == {"strict": 0.0, "flexible": 1.0, "has_number": 1.0}
    assert task.score_details(item, "") == {"strict": 0.0, "flexible": 0.0, "has_number": 0.0}


def test_flexible_reward_option():
    task = make(("reward_extraction=flexible",))
    item = task.item("test", 0)
    assert task.score(item, f"The answer is {item.answer}.") == 1.0
    assert task.score(item, f"#### {item.answer} or maybe 1000") == 0.0


def test_prompt_and_instruction():
    item = make().item("test", 0)
    assert make().prompt(item) == f"{item.question}=?"
    assert make(("instruction=Answer after ####",)).prompt(item) == f"{item.question}=?\nAnswer after ####"


@pytest.mark.parametrize(
    "fields, field_name",
    [({"ops": "/"}, "task.ops"), ({"ops": ""}, "task.ops"), ({"num_terms": 1}, "task.num_terms"),
     ({"num_terms": 2, "max_operand": 5}, "task.max_operand"), ({"min_operand": 50, "max_operand": 9}, "task.max_operand"),
     ({"reward_extraction": "lenient"}, "task.reward_extraction")],
)
def test_invalid_settings_raise_config_error(fields, field_name):
    with pytest.raises(ConfigError, match=field_name.replace(".", r"\.")):
        TASKS.get("arithmetic").validate(TaskConfig(name="arithmetic", settings=ArithmeticSettings(**fields)))
