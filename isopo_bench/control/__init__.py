"""The differentiable-control track: batched pure-torch environments whose dynamics and rewards are
differentiable (point mass, pendulum swing-up), a Gaussian MLP policy, pathwise methods (BPTT, RPO) and the
project's score-function algorithms run on trajectories (trajectories play the role of sequences, steps
the role of tokens). See docs/seed_methods.md#the-control-track."""

from isopo_bench.control.registry import CONTROL_ALGORITHMS, CONTROL_TASKS

__all__ = ["CONTROL_ALGORITHMS", "CONTROL_TASKS"]
