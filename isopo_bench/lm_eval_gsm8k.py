"""lm-evaluation-harness GSM8K on a checkpoint folder, offline.

The task is lm-eval's own gsm8k.yaml (v3.0: 5-shot, strict-match and flexible-extract) shipped as
isopo_bench/lm_eval_tasks/gsm8k_local.yaml, reading train.jsonl/test.jsonl from a local folder through the
`json` dataset builder, so scores are comparable with published lm-eval GSM8K numbers while nothing is
downloaded. The checkpoint is evaluated through lm-eval's HF backend (`pip install "lm-eval[hf]"`; the
`math` extra is not needed). This is independent of the training-time evaluation, which uses the
paper's zero-shot prompt and reward (tasks/gsm8k.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from isopo_bench.errors import ConfigError

TASK_YAML = Path(__file__).parent / "lm_eval_tasks" / "gsm8k_local.yaml"
TASK_NAME = "gsm8k_local"
# lm-eval result key -> our metric name (namespaced like every other eval metric).
METRICS = {
    "exact_match,strict-match": "eval/lm_eval_gsm8k_strict",
    "exact_match,flexible-extract": "eval/lm_eval_gsm8k_flexible",
    "exact_match_stderr,strict-match": "eval/lm_eval_gsm8k_strict_stderr",
    "exact_match_stderr,flexible-extract": "eval/lm_eval_gsm8k_flexible_stderr",
}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def task_config(data_dir: str | Path) -> dict:
    """The shipped task yaml with the data files of `data_dir` filled in."""
    import yaml

    folder = Path(data_dir or os.environ.get("ISOPO_BENCH_GSM8K_DIR", "")).expanduser()
    files = {split: folder / f"{split}.jsonl" for split in ("train", "test")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if not str(data_dir or os.environ.get("ISOPO_BENCH_GSM8K_DIR", "")) or missing:
        raise ConfigError(
            "data_dir", f"GSM8K files not found ({', '.join(missing) or 'no folder given'})",
            "pass a folder with train.jsonl and test.jsonl or set ISOPO_BENCH_GSM8K_DIR",
        )
    config = yaml.safe_load(TASK_YAML.read_text())
    config["dataset_kwargs"]["data_files"] = {split: str(path) for split, path in files.items()}
    return config


def evaluate_checkpoint(
    model_dir: str | Path,
    data_dir: str | Path = "",
    limit: int | None = None,
    num_fewshot: int = 5,
    batch_size: int = 8,
    max_gen_toks: int = 256,
    apply_chat_template: bool = False,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict[str, float]:
    """GSM8K exact match (strict and flexible, with stderr) of a save_pretrained folder."""
    if not (Path(model_dir) / "config.json").is_file():
        raise ConfigError("model_dir", f"`{model_dir}` is not a model folder (no config.json)", "give a checkpoint folder")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("eval", "lm-evaluation-harness is not installed", 'pip install "lm-eval[hf]"') from None
    os.environ.update(OFFLINE_ENV)  # the model and data are local: any download attempt is a bug
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(model_dir), "dtype": dtype},
        tasks=[task_config(data_dir)],
        # Without defaults lm-eval does not index its thousands of bundled task yamls (~75 s on 2 cores).
        task_manager=TaskManager(include_defaults=False),
        num_fewshot=num_fewshot,
        limit=limit,
        batch_size=batch_size,
        device=device,
        gen_kwargs={"max_gen_toks": max_gen_toks},
        apply_chat_template=apply_chat_template,
        log_samples=False,
    )
    scores = results["results"][TASK_NAME]
    out = {ours: float(scores[key]) for key, ours in METRICS.items() if isinstance(scores.get(key), (int, float))}
    out["eval/lm_eval_gsm8k_questions"] = float(results["n-samples"][TASK_NAME]["effective"])
    return out


def log_to_training_run(model_dir: str | Path, scores: dict[str, float]) -> str | None:
    """Record the scores in the MLflow run that produced `model_dir` (a run folder's `final_model` or the
    run folder itself), at that run's last step. Returns the run id, or None for a model outside a run."""
    from mlflow.tracking import MlflowClient

    folder = Path(model_dir).resolve()
    run_dir = next((d for d in (folder, folder.parent) if (d / "run_info.json").is_file()), None)
    if run_dir is None:
        return None
    info = json.loads((run_dir / "run_info.json").read_text())
    summary = run_dir / "summary.json"
    step = int(json.loads(summary.read_text()).get("steps", 0)) if summary.is_file() else 0
    client = MlflowClient(info["tracking_uri"])
    for name, value in scores.items():
        client.log_metric(info["run_id"], name, value, step=step)
    return info["run_id"]


def main(argv: list[str] | None = None) -> int:
    """`isopo-bench eval MODEL_DIR [--data-dir D] [--limit N] ...`: print the scores as JSON and record them
    in the MLflow run the checkpoint came from."""
    import argparse

    parser = argparse.ArgumentParser(prog="isopo-bench eval", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", help="checkpoint folder (save_pretrained)")
    parser.add_argument("--data-dir", default="", help="folder with GSM8K train.jsonl/test.jsonl (default $ISOPO_BENCH_GSM8K_DIR)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N test questions")
    parser.add_argument("--num-fewshot", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-gen-toks", type=int, default=256)
    parser.add_argument("--apply-chat-template", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    scores = evaluate_checkpoint(
        args.model_dir, args.data_dir, args.limit, args.num_fewshot, args.batch_size, args.max_gen_toks,
        args.apply_chat_template, args.device,
    )
    print(json.dumps(scores, indent=1))
    run_id = log_to_training_run(args.model_dir, scores)
    print(f"logged to MLflow run {run_id}" if run_id else "not inside a run folder: scores not logged to MLflow")
    return 0
