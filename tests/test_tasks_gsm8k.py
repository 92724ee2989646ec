"""GSM8K task: local JSONL and (mocked) hub loading, the paper's prompt, strict/flexible rewards, errors."""

import json
import os
import sys
import types
from pathlib import Path

import pytest

from isopo_bench.config import TaskConfig
from isopo_bench.errors import ConfigError, DataError
from isopo_bench.plugins import TASKS
from isopo_bench.tasks.gsm8k import Gsm8kSettings

SHARED = Path(os.environ.get("ISOPO_BENCH_GSM8K_DIR") or Path(__file__).resolve().parents[2] / "shared/data/gsm8k")
needs_data = pytest.mark.skipif(not (SHARED / "test.jsonl").exists(), reason="shared GSM8K files not present")
ROW = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"}


def make(data_dir, params=(), seed=0):
    fields = dict(p.split("=", 1) for p in params)
    cfg = TaskConfig(name="gsm8k", settings=Gsm8kSettings(**fields), data_dir=str(data_dir))
    TASKS.get("gsm8k").validate(cfg)
    return TASKS.get("gsm8k")(cfg, seed)


def write_split(folder: Path, train_lines, test_lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("\n".join(train_lines) + "\n")
    (folder / "test.jsonl").write_text("\n".join(test_lines) + "\n")
    return folder


@needs_data
def test_shared_files_load_and_every_gold_solution_scores_one():
    task = make(SHARED)
    assert (task.num_items("train"), task.num_items("test")) == (7473, 1319)
    first = task.item("test", 0)
    assert first.answer == "18"
    assert task.prompt(first).endswith(' Let\'s think step by step and output the final answer after "####".')
    assert task.prompt(first).startswith("Janet")
    for split in ("train", "test"):
        for i in range(task.num_items(split)):
            item = task.item(split, i)
            assert task.score(item, item.solution) == 1.0
            assert "<<" not in item.solution


@needs_data
def test_train_items_come_from_train_split_only():
    task = make(SHARED, seed=1)
    test_questions = {task.item("test", i).question for i in range(task.num_items("test"))}
    train = [item.question for step in range(20) for item in task.train_items(step, 16)]
    assert not set(train) & test_questions
    assert len(set(train)) == 320  # a seeded permutation: no repeats within the first epoch
    assert task.train_items(3, 16) == make(SHARED, seed=1).train_items(3, 16)
    assert task.train_items(3, 16) != make(SHARED, seed=2).train_items(3, 16)


def test_row_parsing_strips_calculator_annotations(tmp_path):
    task = make(write_split(tmp_path, [json.dumps(ROW)], [json.dumps(ROW)]))
    item = task.item("train", 0)
    assert (item.answer, item.solution) == ("7", "3+4=7\n#### 7")


def test_strict_and_flexible_rewards(tmp_path):
    folder = write_split(tmp_path, [json.dumps(ROW)], [json.dumps(ROW)])
    strict, flexible = make(folder), make(folder, ("reward_extraction=flexible",))
    item = strict.item("test", 0)
    assert strict.score(item, "3+4=7 so\n#### 7") == 1.0 and flexible.score(item, "3+4=7 so\n#### 7") == 1.0
    assert strict.score(item, "The answer is 7.") == 0.0 and flexible.score(item, "The answer is 7.") == 1.0
    assert strict.score(item, "#### 7 apples, total 8") == 1.0 and flexible.score(item, "#### 7 apples, total 8") == 0.0
    assert strict.score_details(item, "It is 7") == {"strict": 0.0, "flexible": 1.0}


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"question": "q"}), "string fields"),
        (json.dumps(["q", "a"]), "string fields"),
        (json.dumps({"question": "q", "answer": "no marker"}), "#### <number>"),
        (json.dumps({"question": "q", "answer": "#### seven"}), "#### <number>"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, bad_line, message):
    folder = write_split(tmp_path, [json.dumps(ROW), "", bad_line], [json.dumps(ROW)])
    with pytest.raises(DataError, match=message) as info:
        make(folder).item("train", 0)
    assert f"{folder / 'train.jsonl'}:3:" in str(info.value)


def test_env_var_and_missing_folder(tmp_path, monkeypatch):
    folder = write_split(tmp_path / "d", [json.dumps(ROW)], [json.dumps(ROW)])
    monkeypatch.setenv("ISOPO_BENCH_GSM8K_DIR", str(folder))
    assert make("").item("test", 0).answer == "7"
    with pytest.raises(ConfigError, match="task.data_dir"):
        make(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"task\.reward_extraction"):
        make(folder, ("reward_extraction=lenient",))


def test_hub_loading_uses_openai_gsm8k_main(monkeypatch):
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return [{"question": f"{split} q", "answer": "x\n#### 1,000"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.delenv("ISOPO_BENCH_GSM8K_DIR", raising=False)
    from isopo_bench.tasks import gsm8k

    gsm8k._load_hub.cache_clear()
    task = make("")
    assert task.item("test", 0).answer == "1000" and task.item("train", 0).question == "train q"
    assert calls == [("openai/gsm8k", "main", "test"), ("openai/gsm8k", "main", "train")]
    gsm8k._load_hub.cache_clear()
