"""A hand-written MLflow store for the dashboard tests: every value is a formula of (algorithm, lr,
optimizer, seed, step), so a test can compute what a chart must show without reading MLflow back.

It writes what `isopo-bench train` writes for the tags and metrics the dashboard reads (isopo_bench
.metric_names), including the tags of the optimizer axis, the readable model name and the start hash, in
seconds instead of the minutes real runs take. Runs may also start from a second starting point of the same
model (OTHER_START_HASH), whose accuracies are START_SHIFT higher.
"""

from __future__ import annotations

from pathlib import Path

from conftest import fresh_mlflow_uri
from isopo_bench import metric_names as M

SUITE, TASK = "synthetic@v1", "arithmetic"
MODEL = "/cache/isopo_bench/warmstart/0f3c9a1e"
"""A warm-start cache path, as the trainer records it."""
MODEL_DISPLAY = "tiny-qwen3-sft"
START_HASH = "start-7d41"
OTHER_START_HASH = "start-b2e9"
"""The same model from a second starting point (its warm start trained again on another machine)."""
START_SHIFT = {START_HASH: 0.0, OTHER_START_HASH: 0.1}
"""Added to every accuracy of a run from that starting point."""
DISPLAY = {START_HASH: MODEL_DISPLAY, OTHER_START_HASH: "tiny-qwen3-sft [b2e9]"}
"""The model_display tag of each starting point's runs."""
STEPS = 4
EVAL_STEPS = (0, 2, 4)
INITIAL = 0.2
"""Accuracy of every run before training (the warm start's)."""
STEP_S = 1.5
"""time/elapsed grows by this much per step."""
FINAL = {("reinforce", 1e-4, "adamw"): 0.30, ("reinforce", 1e-3, "adamw"): 0.50,
         ("grpo", 1e-4, "adamw"): 0.45, ("grpo", 1e-3, "adamw"): 0.25, ("reinforce", 1e-3, "sgd"): 0.22}
"""Final accuracy of seed 0 per (algorithm, lr, optimizer); seed s adds SEED_SHIFT * s."""
SEED_SHIFT = 0.02
TWO_BY_TWO = tuple(arm for arm in FINAL if arm[2] == "adamw")
"""2 algorithms x 2 learning rates, AdamW: reinforce is best at 1e-3, grpo at 1e-4."""


def final_accuracy(arm: tuple, seed: int, start: str = START_HASH) -> float:
    return FINAL[arm] + SEED_SHIFT * seed + START_SHIFT[start]


def eval_accuracy(arm: tuple, seed: int, step: int, start: str = START_HASH) -> float:
    """Linear from INITIAL at step 0 to the final accuracy at STEPS."""
    return INITIAL + (final_accuracy(arm, seed, start) - INITIAL) * step / STEPS


def reward(arm: tuple, seed: int, step: int, start: str = START_HASH) -> float:
    """A noisy-looking training reward: alternating +-0.1 around the eval line, seed-dependent."""
    return eval_accuracy(arm, seed, step, start) + (0.1 if (step + seed) % 2 else -0.1)


def kl(arm: tuple, seed: int, step: int) -> float:
    return arm[1] * 10 * (1 + 0.1 * seed) / step


def _metrics(arm: tuple, seed: int, start: str) -> list:
    from mlflow.entities import Metric

    out = [Metric(M.EVAL_ACCURACY, eval_accuracy(arm, seed, s, start), 0, s) for s in EVAL_STEPS]
    for step in range(1, STEPS + 1):
        out += [Metric(name, value, 0, step) for name, value in (
            (M.REWARD_MEAN, reward(arm, seed, step, start)), (M.TIME_ELAPSED, STEP_S * step), (M.TIME_UPDATE, 0.1),
            (M.TIME_STEP, 0.3), (M.TIME_ROLLOUT, 0.2), (M.ENTROPY, 1.0 - 0.1 * step),
            (M.DIAG_KL_TOK, kl(arm, seed, step)),
            (M.DIAG_COS_UPDATE_NAT, 0.5), (M.DIAG_SURROGATE_PER_KL, 2.0))]
    final = final_accuracy(arm, seed, start)
    return out + [Metric(M.FINAL_ACCURACY, final, 0, 0), Metric(M.INITIAL_ACCURACY, INITIAL, 0, 0),
                  Metric(M.BEST_ACCURACY, max(final, INITIAL), 0, 0)]


def make_synthetic_store(root: Path, arms=TWO_BY_TWO, seeds=(0, 1), other_start_arms=()) -> str:
    """One FINISHED run per (arm, seed) from START_HASH, and per (arm, seed) of other_start_arms from
    OTHER_START_HASH, all in one (suite, task, model) group; returns the store's URI."""
    from mlflow.tracking import MlflowClient

    uri = fresh_mlflow_uri(root)
    client = MlflowClient(uri)
    experiment = client.create_experiment("isopo-bench", artifact_location=(root / "mlruns").as_uri())
    runs = [(arm, seed, START_HASH) for arm in arms for seed in seeds]
    runs += [(arm, seed, OTHER_START_HASH) for arm in other_start_arms for seed in seeds]
    for (algorithm, lr, optimizer), seed, start in runs:
        tags = {M.TAG_SUITE: SUITE, M.TAG_TASK: TASK, M.TAG_MODEL: MODEL, M.TAG_MODEL_DISPLAY: DISPLAY[start],
                M.TAG_START_HASH: start, M.TAG_ALGORITHM: algorithm, M.TAG_LR: str(lr),
                M.TAG_OPTIMIZER: optimizer, M.TAG_SEED: str(seed), M.TAG_COMMIT: "abc1234",
                M.TAG_CONFIG_HASH: f"{algorithm}-{lr:g}-{optimizer}-{seed}-{start}"}
        run = client.create_run(experiment, tags=tags, run_name=f"{algorithm}-{lr:g}-{optimizer}-s{seed}")
        client.log_batch(run.info.run_id, metrics=_metrics((algorithm, lr, optimizer), seed, start))
        client.log_param(run.info.run_id, "optim.steps", str(STEPS))
        client.set_terminated(run.info.run_id, "FINISHED")
    return uri
