"""Named configurations. A preset is data (a RunConfig), never a copy of code.

Algorithm presets set only the algorithm section and compose with any run preset:
`isopo-bench train --preset paper --algo-preset dapo`.
"""

from __future__ import annotations

from isopo_bench.config import EvalConfig, ModelConfig, OptimConfig, RolloutConfig, RunConfig, TaskConfig, VllmConfig, replace
from isopo_bench.errors import UnknownNameError
from isopo_bench.plugin_settings import algorithm_preset, algorithm_presets

# Algorithm presets are declared by the plug-ins themselves (`Algorithm.presets`, collected across the
# registry: isopo_bench.plugin_settings.algorithm_presets); only run presets are core data.


def _tiny_smoke() -> RunConfig:
    """Seconds on a CPU: the random tiny model, a handful of steps (tests and first contact)."""
    return RunConfig(
        rollout=RolloutConfig(prompts_per_step=4, samples_per_prompt=4, max_new_tokens=16),
        optim=OptimConfig(steps=4, lr=1e-4, microbatch_size=4),
        eval=EvalConfig(every=2),
        task=TaskConfig(name="arithmetic", eval_items=16),
    )


def _cpu_tier() -> RunConfig:
    """The CPU tier: tiny Qwen3 on 2-term/3-term arithmetic, 8 prompts x 8 samples, lr 1e-4."""
    return RunConfig(
        rollout=RolloutConfig(prompts_per_step=8, samples_per_prompt=8, max_new_tokens=40),
        optim=OptimConfig(steps=100, lr=1e-4, microbatch_size=8),
        eval=EvalConfig(every=20),
        task=TaskConfig(name="arithmetic", eval_items=512),
        threads=1,
    )


def _paper() -> RunConfig:
    """The paper's GSM8K run (docs/algorithms.md#reference-setup): Qwen3-0.6B, 128 x 8, 2 minibatches, microbatch 8."""
    return RunConfig(
        model=ModelConfig(name_or_path="Qwen/Qwen3-0.6B", dtype="bfloat16", gradient_checkpointing=True),
        task=TaskConfig(name="gsm8k", eval_items=1319),  # strict "#### <number>" reward: the task default
        rollout=RolloutConfig(
            engine="vllm", prompts_per_step=128, samples_per_prompt=8, temperature=1.0, max_new_tokens=2048,
            max_prompt_tokens=512, vllm=VllmConfig(gpu_memory_utilization=0.4, max_model_len=2560),
        ),
        optim=OptimConfig(steps=102, lr=2e-6, weight_decay=0.01, grad_clip=1.0, minibatches_per_step=2, microbatch_size=8),
        eval=EvalConfig(every=5),
    )


RUN_PRESETS = {"tiny-smoke": _tiny_smoke, "cpu-tier": _cpu_tier, "paper": _paper}


def run_preset(name: str) -> RunConfig:
    if name not in RUN_PRESETS:
        raise UnknownNameError(f"unknown preset `{name}`. Known presets: {', '.join(sorted(RUN_PRESETS))}")
    return RUN_PRESETS[name]()


def compose(run: str = "tiny-smoke", algorithm: str = "") -> RunConfig:
    cfg = run_preset(run)
    return replace(cfg, algorithm=algorithm_preset(algorithm)) if algorithm else cfg
