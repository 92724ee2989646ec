"""Held-out evaluation: the same prompts every time, scored by the task's scorer.

Greedy accuracy always; with `samples` = n > 0 also n sampled completions per item (at the rollout's
temperature and top-p, a fixed seed per evaluation), reported as
    mean@n  = mean over items of c_i / n                        (c_i: correct samples of item i)
    pass@k  = mean over items of 1 - C(n - c_i, k) / C(n, k)    (the unbiased estimator, Chen et al. 2021,
                                                                 arXiv 2107.03374; k <= n)
Rewards count as correct when >= 0.5 (tasks score 0/1; a partial-credit task is thresholded). Every
evaluation also returns the greedy correctness of each item in order (`items_correct`): the trainer records
it per run (isopo_bench.item_record), so the leaderboard can resample evaluation items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from isopo_bench import metric_names as M
from isopo_bench.models import encode_prompt
from isopo_bench.rollout.api import SamplingSettings


@dataclass
class EvalResult:
    metrics: dict[str, float]
    samples: list[dict]
    items_correct: list[int]
    """Greedy correctness (1: reward >= 0.5) of every item, in the order of `items`."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i), numerically stable for large n.
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def sampled_metrics(correct_counts: list[int], n: int, k: int) -> dict[str, float]:
    """mean@n and pass@k over items from each item's number of correct samples."""
    items = max(len(correct_counts), 1)
    return {
        M.EVAL_MEAN_AT_K: sum(c / n for c in correct_counts) / items,
        M.EVAL_PASS_AT_K: sum(pass_at_k(n, c, k) for c in correct_counts) / items,
    }


def evaluate(engine, task, tokenizer, items, max_new_tokens: int, num_samples: int, samples: int = 0,
             pass_k: int = 1, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> EvalResult:
    prompts = [task.prompt(item) for item in items]
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    rollout = engine.generate(prompt_ids, SamplingSettings(n=1, temperature=0.0, max_new_tokens=max_new_tokens))
    texts = tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
    rewards = [task.score(item, text) for item, text in zip(items, texts)]
    details = [task.score_details(item, text) for item, text in zip(items, texts)]
    n = max(len(items), 1)
    metrics = {
        M.EVAL_ACCURACY: sum(rewards) / n,
        M.EVAL_MEAN_LEN: sum(len(c) for c in rollout.completion_ids) / n,
    }
    if details and "flexible" in details[0]:
        metrics[M.EVAL_ACCURACY_FLEXIBLE] = sum(d["flexible"] for d in details) / n
    if samples > 0:
        sampled = engine.generate(prompt_ids, SamplingSettings(n=samples, temperature=temperature, top_p=top_p,
                                                               max_new_tokens=max_new_tokens, seed=seed))
        sampled_texts = tokenizer.batch_decode(sampled.completion_ids, skip_special_tokens=True)
        correct = [0] * len(items)
        for row, text in enumerate(sampled_texts):  # prompt-major: rows i*n .. i*n + n-1 belong to item i
            correct[row // samples] += int(task.score(items[row // samples], text) >= 0.5)
        metrics |= sampled_metrics(correct, samples, pass_k)
    logged = [
        {"prompt": p, "completion": t, "answer": item.answer, "reward": r}
        for p, t, item, r in list(zip(prompts, texts, items, rewards))[:num_samples]
    ]
    return EvalResult(metrics, logged, [int(r >= 0.5) for r in rewards])
