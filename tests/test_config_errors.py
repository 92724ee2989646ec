"""Bad input fails early, names the field and the fix, and leaves nothing half-written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import smoke_config
from isopo_bench.config import replace
from isopo_bench.errors import ConfigError, IsopoBenchError
from isopo_bench.trainer import Trainer


@pytest.mark.parametrize(
    "change, field, hint",
    [
        ({"algorithm.name": "isopoo"}, "algorithm.name", "Did you mean"),
        ({"task.name": "gsm9k"}, "task.name", "gsm8k"),
        ({"algorithm.advantage": "zscore"}, "algorithm.advantage", "grpo"),
        ({"rollout.engine": "sglang"}, "rollout.engine", "hf"),
        ({"optim.lr": 0.0}, "optim.lr", "typical values"),
        ({"optim.microbatch_size": 5}, "optim.microbatch_size", "divisor"),
        ({"optim.minibatches_per_step": 3}, "optim.minibatches_per_step", "divisor"),
        ({"rollout.top_p": 1.5}, "rollout.top_p", "1.0"),
        ({"model.tiny_heads": 3}, "model.tiny_heads", "32 or 64"),
        ({"model.device": "tpu"}, "model.device", "auto"),
        ({"parallel.world_size": 0}, "parallel.world_size", "positive"),
        ({"parallel.world_size": 8}, "parallel.world_size", "prompts_per_step"),
        ({"parallel.world_size": 2, "optim.microbatch_size": 16}, "optim.microbatch_size", "at least 2"),
        ({"parallel.world_size": 2, "parallel.mode": "fsdp2"}, "parallel.mode", "--rollout.engine vllm"),
    ],
)
def test_invalid_config_names_field_and_fix(tmp_path, change, field, hint):
    cfg = replace(smoke_config(tmp_path), **change)
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    assert info.value.field == field
    assert f"config field `{field}`" in str(info.value) and hint in str(info.value) and "Fix:" in str(info.value)


def test_validation_happens_before_anything_is_written(workdir):
    cfg = replace(smoke_config(workdir), **{"algorithm.name": "nope"})
    with pytest.raises(ConfigError):
        Trainer(cfg)
    assert not (workdir / "runs").exists()


def test_unreachable_mlflow_server_fails_before_training(workdir):
    cfg = replace(smoke_config(workdir), **{"tracking.uri": "http://127.0.0.1:9"})
    with pytest.raises(IsopoBenchError, match="unreachable.*Fix"):
        Trainer(cfg)
    assert not (workdir / "runs").exists()


def test_missing_model_folder_is_a_clear_error(workdir):
    cfg = replace(smoke_config(workdir), **{"model.name_or_path": str(workdir / "no-such-model")})
    with pytest.raises(ConfigError, match="model.name_or_path.*not a model folder"):
        Trainer(cfg)


def test_cli_reports_errors_without_traceback(workdir):
    out = subprocess.run([sys.executable, "-m", "isopo_bench.cli", "train", "--algorithm.name", "grpoo"],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "config field `algorithm.name`" in out.stderr and "Traceback" not in out.stderr


def test_cli_help_documents_every_field():
    # The chosen plug-ins' own settings are flags of their sections, documented by their field docstrings.
    cmd = [sys.executable, "-m", "isopo_bench.cli", "train", "--algorithm.name", "isopo", "--task.name", "arithmetic", "--help"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0
    for flag, doc in (("--optim.lr", "Learning rate of the optimizer"), ("--optim.optimizer", "heavy-ball momentum"),
                      ("--algorithm.q", "Fisher norm"),
                      ("--task.max-operand", "Largest operand"),
                      ("--rollout.samples-per-prompt", "completions per prompt"), ("--tracking.uri", "MLflow")):
        assert flag in out.stdout and doc in out.stdout, flag
    # Another plug-in's settings are not flags here (each plug-in owns its own).
    assert "--algorithm.clip-eps-high" not in out.stdout and "--algorithm.isopo" not in out.stdout
