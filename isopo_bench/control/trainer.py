"""The control track's training loop: rollout -> algorithm update(s) -> metrics (MLflow), per iteration;
an evaluation on a fixed set of initial states and noise (shared by every run) before and after.

MLflow conventions are the LLM trainer's (tags algorithm / task / model / seed / lr / config_hash / suite,
per-step metrics, final/ summaries, summary.json), so the leaderboard reads these runs unchanged: the
evaluation return is also logged under the leaderboard's eval/ and final/ accuracy names (higher is
better in both). Runs take seconds, so there are no checkpoints: a killed run is rerun from scratch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from isopo_bench import __version__
from isopo_bench import metric_names as M
from isopo_bench.control.config import ControlRunConfig, check_gradient_signal
from isopo_bench.control.envs import ControlTask
from isopo_bench.control.policy import GaussianMLP
from isopo_bench.control.registry import CONTROL_ALGORITHMS, CONTROL_TASKS, algorithm_class
from isopo_bench.control.rollout import generator_for, rollout, sample_start
from isopo_bench.control.score import ScoreFunctionAdapter
from isopo_bench.errors import ConfigError, NonFiniteError
from isopo_bench.optim import build_optimizer
from isopo_bench.plugin_settings import algorithm_setup
from isopo_bench.run_store import machine_description
from isopo_bench.tracking import RunTracker, check_reachable, flatten, git_commit, resolve_uri

log = logging.getLogger(__name__)
EVAL_SEED = -1
"""Evaluation initial states and noise come from generator_for(EVAL_SEED, 0): the same for every run."""


@dataclass
class IterationContext:
    cfg: ControlRunConfig
    task: ControlTask
    policy: GaussianMLP
    optimizer: torch.optim.Optimizer
    scheduler: object
    iteration: int = 0

    @property
    def horizon(self) -> int:
        return self.cfg.control.horizon or self.task.horizon

    def start(self):
        """This iteration's initial states and action noise (a pure function of seed and iteration)."""
        gen = generator_for(self.cfg.seed, self.iteration)
        return sample_start(self.task, self.cfg.control.num_envs, self.horizon, gen)

    def apply_step(self) -> dict[str, float]:
        """Clip, check, step; the gradient is already in .grad."""
        params = [p for p in self.policy.parameters() if p.grad is not None]
        clip = self.cfg.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        if not torch.isfinite(norm):
            raise NonFiniteError(f"non-finite gradient norm at iteration {self.iteration}")
        self.optimizer.step()
        self.scheduler.step()
        return {M.GRAD_NORM: float(norm)}


def validate_control_config(cfg: ControlRunConfig) -> None:
    c = cfg.control
    if c.env not in CONTROL_TASKS:
        raise ConfigError("control.env", f"unknown control task `{c.env}`", f"pick one of {', '.join(CONTROL_TASKS.names())}")
    if algorithm_class(cfg.algorithm.name) is None:
        raise ConfigError("algorithm.name", f"unknown algorithm `{cfg.algorithm.name}`", "see isopo_bench.control.registry")
    check_gradient_signal(cfg.algorithm.name, c.env)
    from isopo_bench.diagnostics.monitor import StepDiagnostics

    StepDiagnostics.validate(cfg.diagnostics, track="control")
    for name in ("num_envs", "hidden", "eval_envs"):
        if getattr(c, name) < 1:
            raise ConfigError(f"control.{name}", "must be >= 1", "use the defaults")
    if c.horizon < 0 or not 0 < c.band_low <= 1 or c.band_high <= 0:
        raise ConfigError("control.horizon/band_low/band_high", "out of range", "horizon >= 0, 0 < band_low <= 1, band_high > 0")
    if c.num_envs % cfg.optim.microbatch_size:
        raise ConfigError("optim.microbatch_size", f"must divide control.num_envs = {c.num_envs}", "e.g. 8 for 64 envs")
    if cfg.algorithm.name in CONTROL_ALGORITHMS:
        CONTROL_ALGORITHMS.get(cfg.algorithm.name).validate(cfg)
    else:  # a score-function plug-in: its own settings, the narrow setup it is built from
        algorithm_class(cfg.algorithm.name).validate(algorithm_setup(cfg.algorithm, seed=cfg.seed, track="control"))


def make_algorithm(cfg: ControlRunConfig):
    if cfg.algorithm.name in CONTROL_ALGORITHMS:
        return CONTROL_ALGORITHMS.get(cfg.algorithm.name)(cfg)
    return ScoreFunctionAdapter(cfg, algorithm_class(cfg.algorithm.name))


def evaluate(ctx: IterationContext) -> float:
    """Mean return of eval_envs sampled trajectories from fixed initial states and noise."""
    gen = generator_for(EVAL_SEED, 0)
    start = sample_start(ctx.task, ctx.cfg.control.eval_envs, ctx.horizon, gen)
    return float(rollout(ctx.task, ctx.policy, *start, differentiable=False).returns_N.mean())


def build(cfg: ControlRunConfig) -> IterationContext:
    torch.manual_seed(cfg.seed)
    task = CONTROL_TASKS.get(cfg.control.env)()
    policy = GaussianMLP(task.obs_dim, task.act_dim, cfg.control.hidden, cfg.control.init_log_std).train()
    optimizer, scheduler = build_optimizer(policy, cfg.optim)
    return IterationContext(cfg, task, policy, optimizer, scheduler)


def open_tracker(cfg: ControlRunConfig, task: ControlTask) -> RunTracker:
    uri = resolve_uri(cfg.tracking.uri)
    check_reachable(uri)
    name = cfg.tracking.run_name or f"{cfg.algorithm.name}-{cfg.control.env}-s{cfg.seed}"
    tracker = RunTracker(uri, cfg.tracking.experiment, name)
    tracker.log_params(flatten(cfg.to_dict()))
    tracker.set_tags({
        M.TAG_ALGORITHM: cfg.algorithm.name, M.TAG_TASK: cfg.control.env, M.TAG_SEED: cfg.seed,
        M.TAG_MODEL: f"gaussian-mlp-h{cfg.control.hidden}", M.TAG_LR: cfg.optim.lr, M.TAG_COMMIT: git_commit(),
        M.TAG_CONFIG_HASH: cfg.config_hash(), M.TAG_VERSION: __version__, M.TAG_SUITE: cfg.tracking.suite,
        M.TAG_SCORER_VERSION: f"{cfg.control.env}:{task.version}", M.TAG_MACHINE: machine_description(),
    })
    return tracker


def eval_metrics(value: float) -> dict[str, float]:
    return {M.CONTROL_EVAL_RETURN: value, M.EVAL_ACCURACY: value}


def train_control(cfg: ControlRunConfig, wrap_algorithm=None) -> dict[str, float]:
    """Train one run; returns the summary (final/... metrics). Failures are recorded as FAILED runs.
    `wrap_algorithm(algo)` may wrap the registered algorithm (control-stability evaluates every iteration)."""
    validate_control_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = build(cfg)
    algo = make_algorithm(cfg)
    if wrap_algorithm is not None:
        algo = wrap_algorithm(algo)
    tracker = open_tracker(cfg, ctx.task)
    try:
        summary = _loop(ctx, algo, tracker)
    except BaseException as exc:
        tracker.set_tags({M.TAG_STATUS_DETAIL: f"{type(exc).__name__}: {exc}"[:4000]})
        tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    tracker.log_dict(summary, "summary.json")
    tracker.finish("FINISHED")
    return summary


def _loop(ctx: IterationContext, algo, tracker: RunTracker) -> dict[str, float]:
    initial = evaluate(ctx)
    tracker.log_metrics(eval_metrics(initial) | {M.TIME_ELAPSED: 0.0}, 0)
    elapsed, best = 0.0, initial
    for it in range(1, ctx.cfg.optim.steps + 1):
        ctx.iteration = it
        start = time.process_time()  # CPU time: other jobs on a shared machine do not inflate it
        traj, metrics = algo.iteration(ctx)
        seconds = time.process_time() - start
        elapsed += seconds
        returns_N = traj.returns_N.detach()
        metrics |= {M.CONTROL_RETURN: float(returns_N.mean()), M.CONTROL_RETURN_STD: float(returns_N.std()),
                    M.TIME_UPDATE: seconds, M.TIME_STEP: seconds, M.TIME_ELAPSED: elapsed}
        if it == ctx.cfg.optim.steps:
            last = evaluate(ctx)
            best = max(best, last)
            metrics |= eval_metrics(last)
        tracker.log_metrics(metrics, it)
    summary = {M.CONTROL_FINAL_RETURN: last, M.CONTROL_INITIAL_RETURN: initial, M.FINAL_ACCURACY: last,
               M.BEST_ACCURACY: best, M.INITIAL_ACCURACY: initial}
    tracker.log_metrics(summary, ctx.cfg.optim.steps)
    return summary | {M.TIME_ELAPSED: elapsed}
