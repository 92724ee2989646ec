"""Named configurations. A preset is data (a RunConfig), never a copy of code.

Algorithm presets set only the algorithm section and compose with any run preset:
`isopo-bench train --preset paper --algo-preset dapo`.
"""

from __future__ import annotations

from isopo_bench.config import (
    AlgorithmConfig, EvalConfig, IsopoConfig, ModelConfig, NpgConfig, OptimConfig, RolloutConfig, RunConfig, TaskConfig,
    VllmConfig, replace,
)
from isopo_bench.errors import UnknownNameError

# ALGORITHMS.md section 6 (the paper's GSM8K run) and the baselines of the author's later script.
ALGORITHM_PRESETS: dict[str, AlgorithmConfig] = {
    "reinforce": AlgorithmConfig(name="reinforce"),
    "grpo": AlgorithmConfig(name="grpo", clip_eps_low=0.2, clip_eps_high=0.2, dual_clip=3.0),
    "cispo": AlgorithmConfig(name="cispo", clip_eps_low=10.0, clip_eps_high=0.2),
    "dapo": AlgorithmConfig(name="grpo", clip_eps_low=0.2, clip_eps_high=0.28, loss_agg="token-mean"),
    "drgrpo": AlgorithmConfig(name="grpo", advantage="mean", loss_agg="seq-mean-token-sum-norm"),
    "gspo": AlgorithmConfig(name="gspo", gspo_clip_eps_low=3e-4, gspo_clip_eps_high=4e-4, loss_agg="seq-mean-token-mean"),
    "isopo": AlgorithmConfig(name="isopo", isopo=IsopoConfig(p=0.0, q=1.0, r=0.0)),
    "isopo-interacting": AlgorithmConfig(name="isopo-interacting", isopo=IsopoConfig(damping=1.0)),
    # Ablations of the non-interacting exponents (N^p O^q R^r; only two are independent without regularisation).
    "isopo-euclidean": AlgorithmConfig(name="isopo", isopo=IsopoConfig(p=1.0, q=0.0, r=0.0)),
    "isopo-q-1-r-2": AlgorithmConfig(name="isopo", isopo=IsopoConfig(p=0.0, q=-1.0, r=-2.0)),
    "isopo-reinforce-limit": AlgorithmConfig(name="isopo", isopo=IsopoConfig(p=0.0, q=0.0, r=0.0)),
    "isopo-faithful": AlgorithmConfig(name="isopo", isopo=IsopoConfig(mode="faithful")),
    "isopo-interacting-faithful": AlgorithmConfig(name="isopo-interacting", isopo=IsopoConfig(mode="faithful")),
    # The damped rank-1 natural gradient (SEED_METHODS.md): one sampled Fisher sequence per microbatch.
    "npg_rank1": AlgorithmConfig(name="npg_rank1", npg=NpgConfig(fisher="one", damping=1.0)),
    "npg_rank1_model": AlgorithmConfig(name="npg_rank1_model", npg=NpgConfig(fisher="one", damping=1.0)),
}


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
    """The paper's GSM8K run (ALGORITHMS.md section 6): Qwen3-0.6B, 128 x 8, 2 minibatches, microbatch 8."""
    return RunConfig(
        model=ModelConfig(name_or_path="Qwen/Qwen3-0.6B", dtype="bfloat16", gradient_checkpointing=True),
        task=TaskConfig(name="gsm8k", eval_items=1319, params=("reward_extraction=strict",)),
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


def algorithm_preset(name: str) -> AlgorithmConfig:
    if name not in ALGORITHM_PRESETS:
        raise UnknownNameError(f"unknown algorithm preset `{name}`. Known: {', '.join(sorted(ALGORITHM_PRESETS))}")
    return ALGORITHM_PRESETS[name]


def compose(run: str = "tiny-smoke", algorithm: str = "") -> RunConfig:
    cfg = run_preset(run)
    return replace(cfg, algorithm=algorithm_preset(algorithm)) if algorithm else cfg
