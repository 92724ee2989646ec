"""`isopo-bench control-train`: one run of the differentiable-control track, every ControlRunConfig field a
flag (tyro, as `isopo-bench train` for the text track)."""

from __future__ import annotations

import argparse
import json


def train_main(argv: list[str]) -> int:
    from isopo_bench import metric_names as M
    from isopo_bench.cli_config import parse_config
    from isopo_bench.control.config import ControlRunConfig
    from isopo_bench.control.registry import TRACK_ALGORITHMS, algorithm_class, known_algorithms
    from isopo_bench.control.trainer import train_control, validate_control_config
    from isopo_bench.errors import ConfigError

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dry-run", action="store_true")
    known, rest = pre.parse_known_args(argv)
    description = ("One control-track run (point-mass or pendulum; pathwise bptt / rpo or any score-function "
                   "algorithm), logged to MLflow. Extra flag: --dry-run (validate and print the config). "
                   "optim.steps counts iterations, optim.epochs passes over each rollout batch (RPO: 5).")
    cfg = parse_config(ControlRunConfig, ControlRunConfig(), rest, registries={"algorithm": TRACK_ALGORITHMS},
                       prog="isopo-bench control-train", description=description)
    # Validated before anything is tracked: an unknown env / algorithm or an impossible pairing is a
    # ConfigError, which the `isopo-bench` entry point prints without a traceback. The trainer's own
    # unknown-algorithm message does not list the names, so they are listed here first.
    if algorithm_class(cfg.algorithm.name) is None:
        raise ConfigError("algorithm.name", f"unknown algorithm `{cfg.algorithm.name}`",
                          f"pick one of {', '.join(known_algorithms())}")
    validate_control_config(cfg)
    if known.dry_run:
        print(json.dumps(cfg.to_dict(), indent=1))  # noqa: T201 - a CLI report
        print(f"config hash {cfg.config_hash()}: valid")  # noqa: T201
        return 0
    summary = train_control(cfg)
    print(f"{cfg.algorithm.name} on {cfg.control.env}, seed {cfg.seed}: {cfg.optim.steps} iterations, evaluation "  # noqa: T201
          f"return {summary[M.CONTROL_INITIAL_RETURN]:.3f} -> {summary[M.CONTROL_FINAL_RETURN]:.3f} "
          f"({summary[M.TIME_ELAPSED]:.1f} s CPU)")
    return 0
