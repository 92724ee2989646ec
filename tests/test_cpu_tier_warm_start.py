"""The CPU tier's warm start: SFT targets that answer directly for a hashed fraction of questions, the
suites that use it, and the shipped copy they find."""

from __future__ import annotations

from isopo_bench import warmstart
from isopo_bench.config import TaskConfig
from isopo_bench.model_identity import start_identity
from isopo_bench.plugins import TASKS
from isopo_bench.suite import warm_start_base
from isopo_bench.suites import get_suite
from isopo_bench.tasks.arithmetic import ArithmeticSettings


def _items(n: int):
    task = TASKS.get("arithmetic")(TaskConfig(name="arithmetic", settings=ArithmeticSettings(num_terms=3, max_operand=9)), 0)
    return task.train_items(0, n)


def test_direct_targets_are_the_answer_line_of_a_hashed_fraction_of_questions():
    items = _items(2000)
    targets = [warmstart.sft_target(item, 0.6) for item in items]
    direct = [t for t in targets if "\n" not in t.solution.strip()]
    for item, target in zip(items, targets):
        if target in direct:
            assert target.solution == f"#### {item.answer}" and target.question == item.question
        else:
            assert target.solution == item.solution  # the worked solution, untouched
    assert 0.56 < len(direct) / len(items) < 0.64  # the fraction, by a hash of the question
    # the choice is a function of the question, not of the position in the stream
    again = {t.question: t.solution for t in (warmstart.sft_target(item, 0.6) for item in reversed(items))}
    assert all(again[t.question] == t.solution for t in targets)
    assert all(warmstart.sft_target(item, 0.0) is item for item in items[:50])


def test_the_option_leaves_older_warm_start_keys_alone():
    default = warmstart.WarmStartConfig()
    assert warmstart.WarmStartConfig(direct_answer_fraction=0.0).key() == default.key()
    assert warmstart.WarmStartConfig(direct_answer_fraction=0.6).key() != default.key()


def test_quick_and_cpu_start_from_the_shipped_warm_start_with_its_recorded_hash():
    for name in ("quick", "cpu"):
        base, folder = warm_start_base(get_suite(name), train=False)
        assert folder is not None and folder.name == "ab846021c51e"
        assert folder.parent.name == "warm_starts"  # the package's copy: nothing trained, nothing cached
        assert base.model.init_from == str(folder)
        assert start_identity(str(folder)) == "content:9ac4527b7ea3d5bf"
