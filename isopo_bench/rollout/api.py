"""The rollout-engine contract shared by the HF and vLLM engines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 1
    """Completions per prompt (G)."""
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    max_new_tokens: int = 32
    seed: int = 0
    """Seed of this generate call (the trainer derives it from (run seed, step))."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Rollout:
    """Completions for P prompts x n samples, flattened prompt-major (row p * n + k)."""

    prompt_ids: list[list[int]]
    """Prompt token ids per row (repeated for the n samples of a prompt)."""
    completion_ids: list[list[int]]
    """Generated token ids per row, including the EOS that stopped it (if any), no padding."""
    sampler_logps: list[list[float]]
    """The engine's log-prob of each generated token under its sampling distribution at temperature 1
    (unscaled logits), aligned with completion_ids."""
    finish_reasons: list[str]
    """`stop` (EOS) or `length` (hit max_new_tokens)."""

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)


class RolloutEngine(Protocol):
    """Engines are built as `cls(run_config, model_source, tokenizer, policy_model)` and registered in
    isopo_bench.plugins.ENGINES (vLLM lazily)."""

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSettings) -> Rollout:
        """Sample `sampling.n` completions for each prompt."""

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine generate with `model`'s current weights (no-op when it shares them)."""

    def close(self) -> None:
        """Release memory held by the engine."""
