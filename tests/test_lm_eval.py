"""lm-eval GSM8K through the shipped local-data task yaml, on the tiny model."""

import os
from pathlib import Path

import pytest
import yaml

from isopo_bench.config import ModelConfig
from isopo_bench.errors import ConfigError
from isopo_bench.lm_eval_gsm8k import TASK_YAML, evaluate_checkpoint, task_config
from isopo_bench.models import tiny_model_dir

DATA = Path(os.environ.get("ISOPO_BENCH_GSM8K_DIR") or Path(__file__).resolve().parents[2] / "shared/data/gsm8k")
needs_data = pytest.mark.skipif(not (DATA / "test.jsonl").exists(), reason="shared GSM8K files not present")


def test_shipped_yaml_is_lm_evals_gsm8k_with_local_data():
    lm_eval = pytest.importorskip("lm_eval")
    upstream = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k.yaml").read_text())
    ours = yaml.safe_load(TASK_YAML.read_text())
    data_keys = {"task", "tag", "dataset_path", "dataset_name", "dataset_kwargs"}
    assert {k: v for k, v in ours.items() if k not in data_keys} == {
        k: v for k, v in upstream.items() if k not in data_keys
    }
    assert ours["dataset_path"] == "json"


def test_task_config_fills_data_files_and_rejects_missing(tmp_path):
    (tmp_path / "train.jsonl").write_text("{}\n")
    (tmp_path / "test.jsonl").write_text("{}\n")
    files = task_config(tmp_path)["dataset_kwargs"]["data_files"]
    assert files == {"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl")}
    with pytest.raises(ConfigError, match="GSM8K files not found"):
        task_config(tmp_path / "missing")


@needs_data
def test_tiny_model_end_to_end_offline():
    pytest.importorskip("lm_eval")
    scores = evaluate_checkpoint(
        tiny_model_dir(ModelConfig(), 0), DATA, limit=3, num_fewshot=1, batch_size=3, max_gen_toks=8
    )
    assert scores["eval/lm_eval_gsm8k_questions"] == 3.0  # limit respected, local test split read
    # A random character-level model never writes "#### <number>".
    assert scores["eval/lm_eval_gsm8k_strict"] == 0.0
    assert 0.0 <= scores["eval/lm_eval_gsm8k_flexible"] <= 1.0


@needs_data
def test_scores_land_in_the_training_runs_mlflow_record(workdir):
    pytest.importorskip("lm_eval")
    from mlflow.tracking import MlflowClient

    from conftest import smoke_config
    from isopo_bench.lm_eval_gsm8k import main
    from isopo_bench.trainer import train

    cfg = smoke_config(workdir)
    result = train(cfg)
    assert main([str(result.run_dir / "final_model"), "--data-dir", str(DATA), "--limit", "2",
                 "--num-fewshot", "0", "--batch-size", "2", "--max-gen-toks", "4"]) == 0
    history = MlflowClient(cfg.tracking.uri).get_metric_history(result.run_id, "eval/lm_eval_gsm8k_questions")
    assert [(m.step, m.value) for m in history] == [(cfg.optim.steps, 2.0)]
    strict = MlflowClient(cfg.tracking.uri).get_metric_history(result.run_id, "eval/lm_eval_gsm8k_strict")
    assert [m.value for m in strict] == [0.0]


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        evaluate_checkpoint(tmp_path, DATA, limit=1)
