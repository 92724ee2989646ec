"""The control track's registries (same Registry class as the project's): control tasks, which do not fit
the text-task contract (no prompts, no scorer), and the pathwise algorithms, which cannot run on text tasks.
Score-function algorithms are the project's ALGORITHMS entries, run on trajectories by an adapter."""

from __future__ import annotations

from isopo_bench.registry import Registry

CONTROL_TASKS: Registry = Registry("control task", "isopo_bench.control_tasks", "isopo_bench.control.envs")
CONTROL_ALGORITHMS: Registry = Registry("pathwise algorithm", "isopo_bench.control_algorithms", "isopo_bench.control.pathwise")


def algorithm_class(name: str):
    """The class registered under `name` in CONTROL_ALGORITHMS or ALGORITHMS; None when neither has it."""
    from isopo_bench.plugins import ALGORITHMS

    for registry in (CONTROL_ALGORITHMS, ALGORITHMS):
        if name in registry:
            return registry.get(name)
    return None


def task_class(name: str):
    """The class registered under `name` in CONTROL_TASKS or TASKS; None when neither has it."""
    from isopo_bench.plugins import TASKS

    for registry in (CONTROL_TASKS, TASKS):
        if name in registry:
            return registry.get(name)
    return None


def known_algorithms() -> list[str]:
    from isopo_bench.plugins import ALGORITHMS

    return sorted(set(CONTROL_ALGORITHMS.names()) | set(ALGORITHMS.names()))



class TrackAlgorithms:
    """Registry view of every algorithm the control track knows: its pathwise ones, then the project's."""

    def get(self, name: str):
        from isopo_bench.plugins import ALGORITHMS

        return CONTROL_ALGORITHMS.get(name) if name in CONTROL_ALGORITHMS else ALGORITHMS.get(name)

    def names(self) -> list[str]:
        return known_algorithms()

    def __contains__(self, name: str) -> bool:
        return algorithm_class(name) is not None


TRACK_ALGORITHMS = TrackAlgorithms()
