"""Greedy held-out evaluation: the same prompts every time, scored by the task's scorer."""

from __future__ import annotations

from dataclasses import dataclass

from isopo_bench import metric_names as M
from isopo_bench.models import encode_prompt
from isopo_bench.rollout.api import SamplingSettings


@dataclass
class EvalResult:
    metrics: dict[str, float]
    samples: list[dict]


def evaluate(engine, task, tokenizer, items, max_new_tokens: int, num_samples: int) -> EvalResult:
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
    samples = [
        {"prompt": p, "completion": t, "answer": item.answer, "reward": r}
        for p, t, item, r in list(zip(prompts, texts, items, rewards))[:num_samples]
    ]
    return EvalResult(metrics, samples)
