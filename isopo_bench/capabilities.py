"""Which algorithm can run on which task and track: read from the plug-ins' declarations only
(`Algorithm.gradient_signal`, `Algorithm.tracks`, `Task.gradient_signals`), so the core never needs to import
a track to refuse a pairing."""

from __future__ import annotations

from isopo_bench.errors import ConfigError


def check_pairing(algo_cls, algo_name: str, task_cls, task_name: str, track: str) -> None:
    """ConfigError when the algorithm does not run on `track`, or needs a gradient signal the task lacks
    (e.g. RPO differentiates the return through the dynamics; a text task's verifier has no derivative)."""
    tracks = tuple(getattr(algo_cls, "tracks", ("text", "control")))
    if track not in tracks:
        raise ConfigError("algorithm.name", f"`{algo_name}` does not run on the {track} track (it declares {', '.join(tracks)})",
                          "pick an algorithm that declares this track in its `tracks`")
    needs = getattr(algo_cls, "gradient_signal", "score-function")
    provides = tuple(getattr(task_cls, "gradient_signals", ("score-function",)))
    if needs not in provides:
        raise ConfigError(
            "algorithm.name",
            f"`{algo_name}` needs {needs} gradients, but task `{task_name}` provides only {', '.join(provides)}",
            f"pair `{algo_name}` with a task that provides {needs} gradients (the control track's point-mass or "
            "pendulum: `isopo-bench control-train`), or pick a score-function algorithm (reinforce, grpo, isopo, ...)",
        )
