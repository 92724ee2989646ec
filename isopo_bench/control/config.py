"""Configuration of the differentiable-control track, and the capability check that keeps pathwise
methods (BPTT, RPO) away from text tasks whose verifier reward has no derivative."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from isopo_bench.config import AlgorithmConfig, OptimConfig, TrackingConfig, experiment_hash
from isopo_bench.capabilities import check_pairing
from isopo_bench.diagnostics.settings import DiagnosticsConfig


@dataclass(frozen=True)
class ControlConfig:
    env: str = "point-mass"
    """Registered control task (isopo_bench.control.CONTROL_TASKS): `point-mass` or `pendulum`."""
    num_envs: int = 64
    """Trajectories per iteration (they play the role of sequences)."""
    horizon: int = 0
    """Steps per trajectory; 0 = the task's own (point mass 50, pendulum 100)."""
    hidden: int = 64
    """Width of the Gaussian MLP policy's two hidden layers."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the policy's actions."""
    entropy_coef: float = 1e-3
    """Entropy bonus coefficient (pathwise methods: bptt, rpo)."""
    kl_coef: float = 0.1
    """RPO: coefficient of KL(pi_old || pi_theta), applied from the second epoch."""
    band_low: float = 0.8
    """RPO: the band mask keeps steps with 1 - band_low <= rho_t <= 1 + band_high."""
    band_high: float = 1.0
    """RPO: upper side of the band mask (unverified in the paper; see docs/seed_methods.md#rpo-differentiable-control)."""
    eval_envs: int = 64
    """Trajectories of the final evaluation (sampled actions, a fixed evaluation seed)."""


@dataclass(frozen=True)
class ControlRunConfig:
    """One run of the control track: the shared algorithm, optimiser and tracking settings plus the task.
    `optim.steps` counts iterations (one rollout batch each); `optim.epochs` passes over each batch."""

    control: ControlConfig = field(default_factory=ControlConfig)
    """The control task and the policy."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """Algorithm name and settings (pathwise: bptt, rpo; score-function: the registered LLM algorithms)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=10, lr=3e-3, weight_decay=0.0, grad_clip=0.0))
    """Adam(W) settings; defaults follow docs/seed_methods.md#the-control-track (Adam lr 3e-3)."""
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="isopo-bench-control"))
    """MLflow settings."""
    diagnostics: DiagnosticsConfig = field(default_factory=lambda: DiagnosticsConfig(proximity_every=0, alignment_every=0))
    """Per-step diagnostics: the text track's only (a control policy has no token distribution); refused if on."""
    seed: int = 0
    """Seed of the policy init, the initial states and the action noise."""
    threads: int = 1
    """torch CPU threads; 0 = torch's default."""

    def to_dict(self) -> dict:
        """Every setting; a score-function algorithm's own settings made explicit."""
        from isopo_bench.plugin_settings import resolved
        from isopo_bench.plugins import ALGORITHMS

        algorithm = resolved(self.algorithm) if self.algorithm.name in ALGORITHMS else self.algorithm
        return dataclasses.asdict(dataclasses.replace(self, algorithm=algorithm))

    def config_hash(self) -> str:
        return experiment_hash(self.to_dict())


def check_gradient_signal(algorithm: str, task: str) -> None:
    """The shared capability check (isopo_bench.capabilities) on the control track's registries."""
    from isopo_bench.control.registry import algorithm_class, task_class

    algo_cls, task_cls = algorithm_class(algorithm), task_class(task)
    if algo_cls is None or task_cls is None:
        return  # unknown names are reported by the registry lookups, with the known names
    check_pairing(algo_cls, algorithm, task_cls, task, track="control")
