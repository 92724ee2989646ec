"""The pendulum stability experiment (`isopo-bench control-stability`): does RPO's band mask and KL keep
training from falling back? docs/seed_methods.md#the-control-track: "without KL and clipping 2 of 3 seeds fell back by more than
10 after reaching -170; with them 1 of 3, which recovered."

RPO on the pendulum swing-up with docs/seed_methods.md's settings (Adam lr 3e-3, 64 envs, T = 100, dt = 0.05,
5 epochs per batch), 3 seeds, two variants:
- `rpo`: as specified, band mask 0.8 / 1.0 on the importance ratio and KL to pi_old from the second epoch;
- `rpo-no-kl-no-band`: kl_coef = 0, and a band that admits every ratio (band_low = 1, band_high = inf),
  so w_t = rho_t unmasked. Existing knobs, so no config field (and no config hash) changes.

Each run evaluates after every iteration (the trainer's fixed evaluation states and noise, so the curve
moves only when the policy does) and logs it as control/eval_return; the runs carry the suite label
`pendulum-stability@v1`, so a rerun skips what the store holds FINISHED and reads the curves back.

Fall-back: after the curve first reaches `level`, its largest drop below its running best; it fell back
when that drop exceeds `threshold` (10), and recovered when it ends within `threshold` of its running
best. Two levels: the seed-method note's absolute (docs/seed_methods.md#the-control-track) -170, and a relative one, within `within` of the run's own
best (the absolute level depends on the evaluation set, which the note's prototype did not share).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass

from isopo_bench.config import AlgorithmConfig, OptimConfig, TrackingConfig
from isopo_bench.control.config import ControlConfig, ControlRunConfig

log = logging.getLogger(__name__)

SUITE_NAME, SUITE_VERSION = "pendulum-stability", 1
SPEC_LEVEL = -170.0
"""The seed-method note's level (docs/seed_methods.md): falls back count only after the return reached it."""
DEFAULT_ITERATIONS = 200
"""About 0.22 s of CPU per iteration (one core; evaluation included): 6 runs take about 5 minutes."""

STABILITY_VARIANTS: dict[str, dict] = {
    "rpo": {},
    "rpo-no-kl-no-band": {"kl_coef": 0.0, "band_low": 1.0, "band_high": math.inf},
}
"""Variant name -> ControlConfig changes from the defaults (which are RPO as specified)."""


def suite_label() -> str:
    return f"{SUITE_NAME}@v{SUITE_VERSION}"


def stability_configs(iterations: int = DEFAULT_ITERATIONS, seeds: tuple[int, ...] = (0, 1, 2), uri: str = "",
                      experiment: str = "isopo-bench-control") -> list[tuple[str, ControlRunConfig]]:
    """(variant, config) per run, seed-major as the suites."""
    out = []
    for seed in seeds:
        for variant, changes in STABILITY_VARIANTS.items():
            out.append((variant, ControlRunConfig(
                control=ControlConfig(env="pendulum", num_envs=64, **changes),
                algorithm=AlgorithmConfig(name="rpo"),
                optim=OptimConfig(steps=iterations, lr=3e-3, weight_decay=0.0, grad_clip=0.0, epochs=5, microbatch_size=8),
                tracking=TrackingConfig(uri=uri, experiment=experiment, suite=suite_label(), run_name=f"{variant}-s{seed}"),
                seed=seed, threads=1,
            )))
    return out


@dataclass(frozen=True)
class FallBack:
    level: float
    reached_at: int | None
    """First iteration whose return is >= level; None: never reached (nothing below is counted)."""
    largest_drop: float
    """Largest (running best - return) from reached_at on; 0 when the level was never reached."""
    fell_back_at: int | None
    """First iteration from reached_at on with a drop > threshold; None: it did not fall back."""
    recovered: bool | None
    """Whether the curve ends within threshold of its running best; None when it did not fall back."""


def detect_fall_back(curve: list[float], level: float, threshold: float = 10.0) -> FallBack:
    """Fall-back analysis of one evaluation-return curve (index = iteration)."""
    reached_at = next((i for i, value in enumerate(curve) if value >= level), None)
    if reached_at is None:
        return FallBack(level, None, 0.0, None, None)
    running_best, drops = -math.inf, []
    for value in curve:
        running_best = max(running_best, value)
        drops.append(running_best - value)
    after = drops[reached_at:]
    fell_back_at = next((reached_at + i for i, drop in enumerate(after) if drop > threshold), None)
    recovered = None if fell_back_at is None else drops[-1] <= threshold
    return FallBack(level, reached_at, max(after), fell_back_at, recovered)


class EvaluatedEachIteration:
    """A control algorithm whose per-iteration metrics also carry the evaluation return of the updated
    policy, so the trainer logs the whole curve. The trainer's per-iteration CPU time then includes one
    evaluation rollout (about a fifth of an RPO iteration on the pendulum): these runs measure stability,
    not speed."""

    def __init__(self, algorithm):
        self.algorithm = algorithm

    def iteration(self, ctx):
        from isopo_bench.control.trainer import eval_metrics, evaluate

        traj, metrics = self.algorithm.iteration(ctx)
        return traj, metrics | eval_metrics(evaluate(ctx))


def train_recording_eval_curve(cfg: ControlRunConfig) -> dict[str, float]:
    """train_control with the evaluation return logged after every iteration."""
    from isopo_bench.control.trainer import train_control

    return train_control(cfg, wrap_algorithm=EvaluatedEachIteration)


def finished_eval_curves(uri: str, experiment: str, label: str) -> dict[str, list[float]]:
    """config hash -> evaluation-return curve (index = iteration) of this suite's FINISHED runs."""
    from mlflow.tracking import MlflowClient

    from isopo_bench import metric_names as M
    from isopo_bench.tracking import resolve_uri

    client = MlflowClient(resolve_uri(uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], f"tags.{M.TAG_SUITE} = '{label}' and attributes.status = 'FINISHED'",
                              max_results=1000)
    curves = {}
    for run in runs:
        history = sorted(client.get_metric_history(run.info.run_id, M.CONTROL_EVAL_RETURN), key=lambda m: m.step)
        curves[run.data.tags.get(M.TAG_CONFIG_HASH, "")] = [m.value for m in history]
    return curves


def stability_row(variant: str, seed: int, curve: list[float], threshold: float, within: float) -> dict:
    best = max(curve)
    relative = detect_fall_back(curve, best - within, threshold)
    spec = detect_fall_back(curve, SPEC_LEVEL, threshold)
    spec_text = ("not reached" if spec.reached_at is None else
                 f"fell back at {spec.fell_back_at}" if spec.fell_back_at is not None else "held")
    return {
        "variant": variant, "seed": seed, "best return": round(best, 1), "iteration of best": curve.index(best),
        f"within {within:g} of best at": relative.reached_at, "largest fall-back": round(relative.largest_drop, 1),
        f"fell back (> {threshold:g}) at": relative.fell_back_at, "recovered?": relative.recovered,
        f"spec ({SPEC_LEVEL:g})": spec_text, "final return": round(curve[-1], 1),
    }


def markdown_table(rows: list[dict]) -> str:
    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    if not rows:
        return "(no finished runs)"
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row.values()) + " |" for row in rows])


def run_stability(uri: str = "", experiment: str = "isopo-bench-control", iterations: int = DEFAULT_ITERATIONS,
                  seeds: tuple[int, ...] = (0, 1, 2), threshold: float = 10.0, within: float = 10.0) -> list[dict]:
    """Train what the store does not hold FINISHED, then one table row per run (missing: a failed run)."""
    from isopo_bench.suite import ledger, prepare_store

    runs = stability_configs(iterations, seeds, uri, experiment)
    prepare_store(uri, experiment)
    done = ledger(uri, experiment, suite_label())
    for _, cfg in runs:
        if done.get(cfg.config_hash()) != "FINISHED":
            try:
                train_recording_eval_curve(cfg)
            except Exception as exc:  # noqa: BLE001 - recorded as a FAILED run; the experiment goes on
                log.warning("%s failed: %s", cfg.tracking.run_name, exc)
    curves = finished_eval_curves(uri, experiment, suite_label())
    return [stability_row(variant, cfg.seed, curves[cfg.config_hash()], threshold, within)
            for variant, cfg in runs if cfg.config_hash() in curves]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="isopo-bench control-stability", description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", default="", help="default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    p.add_argument("--experiment", default="isopo-bench-control")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, help="RPO iterations per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threshold", type=float, default=10.0, help="a drop below the running best larger than this is a fall-back")
    p.add_argument("--within", type=float, default=10.0, help="relative level: falls count once the run is this close to its best")
    args = p.parse_args(argv)
    start = time.perf_counter()
    rows = run_stability(args.tracking_uri, args.experiment, args.iterations, tuple(args.seeds), args.threshold, args.within)
    print(markdown_table(rows))  # noqa: T201 - a CLI report
    print(f"\n{len(rows)} runs, wall time {time.perf_counter() - start:.0f} s (runs already FINISHED were read back)")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
