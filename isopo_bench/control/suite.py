"""The `control` suite: every method on the point mass, 3 seeds, 10 iterations, Adam lr 3e-3, 64 envs
(the calibration setting of docs/seed_methods.md#the-control-track), then its leaderboard (the project's, unchanged: the evaluation
return sits in its accuracy columns). About two minutes on one core.

Runs are identified by config hash; a run FINISHED in the store is not redone (the LLM suite's ledger).
Multi-epoch methods take `optim.epochs` steps per rollout batch: RPO and PPO-clip 5, the single-step
methods (BPTT, REINFORCE, ISOPO, npg_rank1) 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from isopo_bench.config import AlgorithmConfig, OptimConfig, TrackingConfig
from isopo_bench.control.config import ControlConfig, ControlRunConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ControlSuite:
    name: str
    version: int
    base: ControlRunConfig
    algorithms: tuple[str, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    epochs: dict = dataclasses.field(default_factory=dict)
    """Per-algorithm optim.epochs; others use the base's."""

    @property
    def label(self) -> str:
        return f"{self.name}@v{self.version}"

    def configs(self, uri: str = "", experiment: str = "") -> list[ControlRunConfig]:
        """Seed-major, as the LLM suites."""
        tracking = dataclasses.replace(self.base.tracking, suite=self.label, uri=uri,
                                       experiment=experiment or self.base.tracking.experiment)
        out = []
        for seed in self.seeds:
            for algo in self.algorithms:
                for lr in self.lrs:
                    optim = dataclasses.replace(self.base.optim, lr=lr, epochs=self.epochs.get(algo, self.base.optim.epochs))
                    out.append(dataclasses.replace(
                        self.base, seed=seed, algorithm=AlgorithmConfig(name=algo), optim=optim,
                        tracking=dataclasses.replace(tracking, run_name=f"{algo}-lr{lr:g}-s{seed}")))
        return out


CONTROL_ALGORITHMS_IN_SUITE = ("bptt", "rpo", "grpo", "reinforce", "isopo", "isopo-interacting", "npg_rank1")


def control_suite() -> ControlSuite:
    base = ControlRunConfig(
        control=ControlConfig(env="point-mass", num_envs=64),
        optim=OptimConfig(steps=10, lr=3e-3, weight_decay=0.0, grad_clip=0.0, microbatch_size=8),
        tracking=TrackingConfig(experiment="isopo-bench-control"),
        threads=1,
    )
    return ControlSuite(name="control", version=1, base=base, algorithms=CONTROL_ALGORITHMS_IN_SUITE,
                        lrs=(3e-3,), seeds=(0, 1, 2), epochs={"rpo": 5, "grpo": 5})


def run_control_suite(uri: str = "", experiment: str = "", suite: ControlSuite | None = None):
    """Run what the store does not hold FINISHED yet; returns (leaderboard DataFrame, per-run DataFrame)."""
    from isopo_bench.control.trainer import train_control
    from isopo_bench.leaderboard import leaderboard, load_runs
    from isopo_bench.suite import ledger, prepare_store
    from isopo_bench.tracking import resolve_uri

    suite = suite or control_suite()
    configs = suite.configs(uri, experiment)
    experiment = configs[0].tracking.experiment
    prepare_store(uri, experiment)
    done = ledger(uri, experiment, suite.label)
    for cfg in configs:
        if done.get(cfg.config_hash()) == "FINISHED":
            continue
        try:
            train_control(cfg)
        except Exception as exc:  # noqa: BLE001 - recorded as a FAILED run; the suite goes on
            log.warning("%s failed: %s", cfg.tracking.run_name, exc)
    runs = load_runs(resolve_uri(uri), experiment, suite.label)
    return leaderboard(runs), runs


def main(argv: list[str] | None = None) -> int:
    from isopo_bench.leaderboard import DISPLAY_COLUMNS, to_markdown

    p = argparse.ArgumentParser(prog="python -m isopo_bench.control.suite", description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", default="")
    p.add_argument("--experiment", default="")
    args = p.parse_args(argv)
    board, _ = run_control_suite(args.tracking_uri, args.experiment)
    print(to_markdown(board, DISPLAY_COLUMNS))  # noqa: T201 - a CLI report
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
