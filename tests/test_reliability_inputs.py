"""Issue 13, items 4-6: every bad input is refused with an error naming the field (or file) and the fix,
before any model is loaded or any run is created: exit status 1, no traceback, nothing in the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import smoke_config
from isopo_bench import cli
from isopo_bench import metric_names as M
from isopo_bench.trainer import train

QUESTION = {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    rc = cli.main(argv)  # an exception other than the project's errors would propagate: the test fails
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    return rc, out.err


def train_argv(root: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "tiny-smoke", "--tracking.uri", f"sqlite:///{root}/mlflow.db",
            "--tracking.output-dir", str(root / "runs"), "--threads", "1", *extra]


def assert_nothing_created(root: Path) -> None:
    assert not (root / "mlflow.db").exists(), "the store was created"
    assert not (root / "runs").exists() or not any((root / "runs").iterdir()), "a run folder was left"


# (flags, the field the error must name)
BAD_FLAGS = [
    (["--optim.minibatches-per-step", "-1"], "optim.minibatches_per_step"),
    (["--optim.minibatches-per-step", "0"], "optim.minibatches_per_step"),
    (["--task.eval-items", "0"], "task.eval_items"),
    (["--optim.warmup-steps", "-3"], "optim.warmup_steps"),
    (["--threads", "-1"], "threads"),
    (["--model.tiny-heads", "0"], "model.tiny_heads"),
    (["--model.tiny-kv-heads", "3"], "model.tiny_kv_heads"),
    (["--optim.weight-decay", "-0.1"], "optim.weight_decay"),
    (["--optim.betas", "2", "2"], "optim.betas"),
    (["--optim.betas", "0.9", "1.0"], "optim.betas"),
    (["--optim.lr", "inf"], "optim.lr"),
    (["--optim.lr", "nan"], "optim.lr"),
    (["--rollout.generation-batch-size", "0"], "rollout.generation_batch_size"),
    (["--rollout.max-prompt-tokens", "0"], "rollout.max_prompt_tokens"),
    (["--model.dtype", "float16", "--model.device", "cpu"], "model.dtype"),
    (["--tracking.uri", "foo://bar"], "tracking.uri"),
    (["--tracking.uri", "sqlite://relative.db"], "tracking.uri"),
    (["--eval.every", "-1"], "eval.every"),
    (["--tracking.checkpoint-every", "-1"], "tracking.checkpoint_every"),
    (["--optim.grad-clip", "-1"], "optim.grad_clip"),
    (["--algorithm.kl-coef", "-0.5"], "algorithm.kl_coef"),
]


@pytest.mark.parametrize("flags,field", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flag_is_a_config_error_before_anything_runs(workdir, capsys, flags, field):
    rc, err = run_cli(capsys, train_argv(workdir, *flags))
    assert rc == 1 and f"config field `{field}`" in err and "Fix:" in err, err
    assert_nothing_created(workdir)


@pytest.mark.parametrize("flags", [["--dry-run"], []], ids=["dry-run", "train"])
def test_eval_every_error_names_eval_every(workdir, capsys, flags):
    rc, err = run_cli(capsys, train_argv(workdir, "--eval.every", "-1", *flags))
    assert rc == 1 and "`eval.every`" in err and "checkpoint_every" not in err


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_suite_workers_below_one_is_refused(workdir, capsys, workers):
    rc, err = run_cli(capsys, ["suite", "smoke", "--workers", workers, "--tracking-uri", f"sqlite:///{workdir}/mlflow.db",
                               "--output-dir", str(workdir / "runs")])
    assert rc == 1 and "--workers" in err and "Fix:" in err
    assert_nothing_created(workdir)


def test_suite_workers_below_one_is_refused_in_a_dry_run(workdir, capsys):
    rc, err = run_cli(capsys, ["suite", "smoke", "--workers", "0", "--dry-run"])
    assert rc == 1 and "--workers" in err


# ------------------------------------------------------------------------------------------------
# The MLflow store: unknown, unwritable, not a database, lost.
def test_unwritable_sqlite_folder_is_refused_at_once(workdir, capsys):
    """/proc refuses new files even to root, for whom os.access always says writable."""
    rc, err = run_cli(capsys, train_argv(workdir, "--tracking.uri", "sqlite:////proc/isopo-test/mlflow.db"))
    assert rc == 1 and "/proc" in err and "Fix:" in err
    rc, err = run_cli(capsys, train_argv(workdir, "--tracking.uri", "sqlite:////proc/mlflow.db"))
    assert rc == 1 and "not writable" in err and "/proc" in err
    assert_nothing_created(workdir)


@pytest.mark.parametrize("kind", ["directory", "not-sqlite"])
def test_store_path_that_is_not_a_database_is_refused(workdir, capsys, kind):
    db = workdir / "store.db"
    if kind == "directory":
        db.mkdir()
    else:
        db.write_text("this is not a database\n")
    rc, err = run_cli(capsys, train_argv(workdir, "--tracking.uri", f"sqlite:///{db}"))
    assert rc == 1 and str(db) in err and "Fix:" in err
    assert not (workdir / "runs").exists()


def test_resume_of_a_run_whose_store_was_lost_names_the_store(workdir, capsys):
    cfg = smoke_config(workdir, **{"optim.steps": 2, "eval.at_start": False, "task.eval_items": 2})
    train(cfg)
    db = Path(cfg.tracking.uri[len("sqlite:///"):])
    db.unlink()
    argv = ["train", "--preset", "tiny-smoke", "--optim.steps", "2", "--optim.lr", "1e-3", "--optim.microbatch-size", "4",
            "--eval.no-at-start", "--task.eval-items", "2", "--tracking.checkpoint-every", "2",
            "--tracking.uri", cfg.tracking.uri, "--tracking.output-dir", cfg.tracking.output_dir, "--resume"]
    assert cli.main(["train", *argv[1:], "--dry-run"]) == 0
    capsys.readouterr()
    rc, err = run_cli(capsys, argv)
    assert rc == 1 and str(db) in err and "does not exist" in err and "Fix:" in err
    assert not db.exists(), "the lost store must not be recreated empty"


# ------------------------------------------------------------------------------------------------
# Data files: read and checked before the MLflow run exists.
def gsm8k_dir(root: Path, train_text: str | bytes, test_text: str | bytes | None = None) -> Path:
    folder = root / "gsm8k"
    folder.mkdir(exist_ok=True)
    for name, content in (("train.jsonl", train_text), ("test.jsonl", test_text if test_text is not None else json.dumps(QUESTION) + "\n")):
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


GOOD = json.dumps(QUESTION) + "\n"
BAD_DATA = {
    "empty-train": ("", None, "train.jsonl", "no rows"),
    "binary-train": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, None, "train.jsonl", "not UTF-8"),
    "broken-json": (GOOD + '{"question": "x", \n', None, "train.jsonl:2", "invalid JSON"),
    "missing-answer": (GOOD + json.dumps({"question": "What?"}) + "\n", None, "train.jsonl:2", "`answer`"),
    "no-hashes": (GOOD + json.dumps({"question": "What?", "answer": "5"}) + "\n", None, "train.jsonl:2", "####"),
    "empty-test": (GOOD, "", "test.jsonl", "no rows"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_file_is_reported_before_the_run_exists(workdir, capsys, case):
    train_text, test_text, where, problem = BAD_DATA[case]
    folder = gsm8k_dir(workdir, train_text, test_text)
    rc, err = run_cli(capsys, train_argv(workdir, "--task.name", "gsm8k", "--task.data-dir", str(folder),
                                         "--task.eval-items", "1"))
    assert rc == 1 and where in err and problem in err, err
    assert_nothing_created(workdir)
    if case != "broken-json":
        return
    # after fixing the file a plain rerun (no --resume) starts: no FAILED record blocks it
    (folder / "train.jsonl").write_text(GOOD)
    (folder / "test.jsonl").write_text(GOOD)
    assert cli.main(train_argv(workdir, "--task.name", "gsm8k", "--task.data-dir", str(folder), "--task.eval-items", "1",
                               "--optim.steps", "1", "--eval.no-at-start")) == 0


def test_gsm8k_prompt_longer_than_max_prompt_tokens_is_refused_before_the_run(workdir, capsys):
    """The real GSM8K with the tiny (character) tokenizer at default settings: prompts of ~1000 tokens."""
    data = Path(os.environ["ISOPO_BENCH_GSM8K_DIR"])
    if not (data / "train.jsonl").exists():
        pytest.skip(f"no GSM8K at {data}")
    rc, err = run_cli(capsys, train_argv(workdir, "--task.name", "gsm8k", "--task.data-dir", str(data)))
    assert rc == 1 and "`rollout.max_prompt_tokens`" in err and "--rollout.max-prompt-tokens" in err
    assert_nothing_created(workdir)


def test_max_prompt_tokens_too_small_for_arithmetic_is_refused_before_the_run(workdir, capsys):
    rc, err = run_cli(capsys, train_argv(workdir, "--rollout.max-prompt-tokens", "5"))
    assert rc == 1 and "`rollout.max_prompt_tokens`" in err
    assert_nothing_created(workdir)


def offline_env(**extra) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    env.pop("ISOPO_BENCH_GSM8K_DIR", None)
    return env


def test_gsm8k_without_data_offline_is_a_clear_error(workdir):
    proc = subprocess.run([sys.executable, "-m", "isopo_bench.cli", *train_argv(workdir, "--task.name", "gsm8k")],
                          env=offline_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "`task.data_dir`" in proc.stderr and "Fix:" in proc.stderr
    assert_nothing_created(workdir)


def test_hub_model_offline_is_a_clear_error(workdir):
    proc = subprocess.run([sys.executable, "-m", "isopo_bench.cli",
                           *train_argv(workdir, "--model.name-or-path", "no-such-org/no-such-model")],
                          env=offline_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "`model.name_or_path`" in proc.stderr and "no-such-org/no-such-model" in proc.stderr
    assert_nothing_created(workdir)


def test_resume_after_a_failure_clears_the_stale_status_detail(workdir):
    cfg = smoke_config(workdir, **{"optim.steps": 2, "eval.at_start": False, "task.eval_items": 2})
    result = train(cfg)
    client = MlflowClient(cfg.tracking.uri)
    client.set_tag(result.run_id, M.TAG_STATUS_DETAIL, "DataError: train.jsonl:3: invalid JSON")
    client.set_terminated(result.run_id, "FAILED")
    assert train(cfg, resume=True).status == "FINISHED"
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and M.TAG_STATUS_DETAIL not in run.data.tags
