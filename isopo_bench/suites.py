"""Named, versioned benchmark suites: algorithms x learning rates x seeds on one shared base config.

A suite is data. Every run of a suite is a RunConfig that differs from the suite's base only in the
algorithm, the learning rate and the seed, and carries tracking.suite = "NAME@vVERSION" (part of the
config hash), so runs are comparable only within one suite version. Bump `version` whenever anything
in a suite definition changes what its runs compute.

Runs are ordered seed-major (all algorithms and learning rates of seed 0, then seed 1, ...), so an
interrupted suite already holds complete comparisons for its first seeds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from isopo_bench.config import (
    EvalConfig, ModelConfig, OptimConfig, RolloutConfig, RunConfig, TaskConfig, TrackingConfig, replace,
)
from isopo_bench.errors import UnknownNameError
from isopo_bench.tasks.arithmetic import ArithmeticSettings
from isopo_bench.plugin_settings import algorithm_presets
from isopo_bench.presets import algorithm_preset, run_preset
from isopo_bench.registry import Registry

FIVE_ALGORITHMS = ("reinforce", "grpo", "cispo", "isopo", "isopo-interacting")


@dataclass(frozen=True)
class Estimate:
    """Throughput assumptions behind a suite's compute estimate (stated, not measured)."""

    device: str
    """The machine the numbers assume."""
    params: float
    """Policy parameters N (used when the model's config is not available locally)."""
    prompt_tokens: float
    """Mean prompt length in tokens (chat template included)."""
    completion_tokens: float
    """Assumed mean completion length (max_new_tokens is the upper bound)."""
    generate_tokens_per_s: float
    """Rollout engine output tokens per second at the suite's batch size."""
    train_flops_per_s: float
    """Achieved training FLOP/s (6N per token, 8N with gradient checkpointing)."""


@dataclass(frozen=True)
class OptimizerArm:
    """One optimizer of a suite with its own learning-rate grid (SGD's scale differs from AdamW's by orders
    of magnitude, so one grid cannot bracket both)."""

    optimizer: str
    """optim.optimizer: adamw | sgd."""
    lrs: tuple[float, ...]
    """Learning rates tried with this optimizer by every algorithm; each one's best must lie inside its grid."""
    extra_lrs: tuple[tuple[str, tuple[float, ...]], ...] = ()
    """(algorithm preset, lrs) added to the shared grid for that algorithm alone, where a measured best sat
    at the shared grid's edge (e.g. Dr.GRPO's normaliser makes its steps ~3x shorter at the same lr)."""

    def lrs_for(self, algorithm: str) -> tuple[float, ...]:
        """The grid `algorithm` runs under this optimizer: the shared one plus its own extensions."""
        extra = [lr for name, lrs in self.extra_lrs if name == algorithm for lr in lrs]
        return tuple(sorted({*self.lrs, *extra}))

    def describe(self) -> str:
        """`3 sgd learning rates (+1 reinforce, +1 drgrpo)` for the dry run's plan line."""
        extras = "".join(f", +{len(lrs)} {name}" for name, lrs in self.extra_lrs)
        return f"{len(self.lrs)} {self.optimizer} learning rates" + (f" ({extras[2:]})" if extras else "")


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    description: str
    base: RunConfig
    algorithms: tuple[str, ...]
    """Algorithm preset names: any preset a registered algorithm declares (built-in or an entry-point
    plug-in's; isopo_bench.plugin_settings.algorithm_presets)."""
    lrs: tuple[float, ...]
    """The learning-rate grid of the base config's optimizer (when `arms` is empty)."""
    seeds: tuple[int, ...]
    arms: tuple[OptimizerArm, ...] = ()
    """Optimizer axis: each arm runs every algorithm over its own lr grid; empty = one arm, the base
    config's optimizer with `lrs`."""
    warm_start: bool = False
    """Start every run from the cached SFT warm start of the base model (isopo_bench.warmstart)."""
    warm_start_settings: tuple[tuple[str, object], ...] = ()
    """WarmStartConfig fields that differ from the defaults for this suite's warm start."""
    budget: str = ""
    """The arithmetic behind steps, batch and evaluation cadence."""
    estimate: Estimate | None = None
    needs_gpu: bool = False
    """Planned for a GPU: the runner refuses to execute it without CUDA (the dry run still works)."""

    def __post_init__(self):
        for arm in self.optimizer_arms:
            unknown = sorted({name for name, _ in arm.extra_lrs} - set(self.algorithms))
            if unknown:
                raise ValueError(f"suite {self.name}: the {arm.optimizer} arm extends the lr grid of {unknown}, "
                                 f"which the suite does not run (its algorithms: {list(self.algorithms)})")

    @property
    def label(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def optimizer_arms(self) -> tuple[OptimizerArm, ...]:
        return self.arms or (OptimizerArm(self.base.optim.optimizer, self.lrs),)

    def configs(self, base: RunConfig | None = None) -> list[RunConfig]:
        """One config per (seed, optimizer, algorithm, lr), seed-major; `base` replaces the suite's base
        (e.g. with the warm-start folder or local tracking settings filled in)."""
        base = replace(base or self.base, **{"tracking.suite": self.label})
        named_optimizer = len(self.optimizer_arms) > 1 or self.optimizer_arms[0].optimizer != "adamw"
        out = []
        for seed in self.seeds:
            for arm in self.optimizer_arms:
                for algo in self.algorithms:
                    for lr in arm.lrs_for(algo):
                        run_name = f"{algo}-{arm.optimizer}-lr{lr:g}-s{seed}" if named_optimizer else f"{algo}-lr{lr:g}-s{seed}"
                        out.append(replace(base, algorithm=algorithm_preset(algo), seed=seed, **{
                            "optim.optimizer": arm.optimizer, "optim.lr": lr, "tracking.run_name": run_name,
                            "tracking.algorithm_label": algo}))
        return out


def _smoke() -> Suite:
    base = replace(
        run_preset("tiny-smoke"),
        optim=OptimConfig(steps=4, lr=1e-3, microbatch_size=4),
        eval=EvalConfig(every=2),
        tracking=TrackingConfig(checkpoint_every=2),
        threads=1,
    )
    return Suite(
        name="smoke", version=2, base=base, algorithms=("reinforce", "grpo"), lrs=(1e-3,), seeds=(0, 1),
        description="Tests and first contact: the random tiny model (no warm start), 2 algorithms x 2 seeds, 4 steps.",
        budget="4 steps of 4x4 samples, 16 eval items at steps 0, 2, 4: a few seconds per run.",
    )


CPU_TIER_WARM_START = (("direct_answer_fraction", 0.6),)
"""The CPU tier's warm start (shipped: isopo_bench/warm_starts/): SFT on 3-term single-digit arithmetic where
60% of the targets (by a hash of the question) are the bare answer line and 40% the worked solution."""
CPU_TIER_DESIGN = """\
Tier (quick@v3 and cpu@v1 share it): the ~0.6M-parameter tiny Qwen3 on 3-term single-digit arithmetic
(num_terms=3, max_operand=9, ops +-), warm-started by SFT in which 60% of the targets answer directly
("#### 11") and 40% show the working; SFT stops when sampled held-out accuracy reaches 0.25 (250 steps).
The warm start answers directly under greedy decoding, close but often off by one, and shows its work in
some samples. Why this tier (measured 2026-12-02, one seed each, REINFORCE, AdamW, 20-30 steps, greedy
accuracy on 512 held-out items): the v2 warm start (worked solutions only) gained 0.342 -> 0.35-0.39 at lr
1e-5..3e-5 and collapsed at 1e-4 and above (SGD: 1e-3 and 3e-3 gained as little, 3e-2 collapsed in 10
steps); a warm start stopped earlier (sampled 0.10, greedy 0.17) gained nothing in 20 steps; this one gained
0.375 -> 0.461 (step 10) -> 0.428 (step 20) at 3e-5, 0.492 at 1.2e-5, and fell at 1e-4: the most
headroom of the three.
The held-out partition has ~500 questions, so the 512 evaluation items hold ~340 distinct questions.
Two minibatches per step (as the paper's run): with one, GRPO and CISPO are on-policy with ratio 1 and
reproduce REINFORCE exactly. Completions are <= 24 characters: max_new_tokens = 32 only trims runaways.
Cost (v2 at 20 steps, evaluations at 0, 10, 20 of 512 items): ~32 core-s per run."""

QUICK_BUDGET = CPU_TIER_DESIGN + """
Budget: 15 minutes of wall clock on a quiet 2-core CPU (the warm start is shipped, not trained).
Grid: 5 algorithms x 3 AdamW learning rates (6e-6, 1.9e-5, 6e-5: half a decade apart, centred between
1.2e-5 and 3e-5, where cpu@v1's first two seeds put every algorithm's best among 5e-6, 1.2e-5, 3e-5 and 7.5e-5,
with 5e-6 and 7.5e-5 worse for all seven) x 3 seeds (the minimum for a t-interval) = 45 runs. Measured
2026-12-02 from a fresh store on the quiet 2-core machine: 13 min 23 s (27-30 s per REINFORCE run per worker),
and 11 min 15 s after the engine's cost work (the same accuracies); every algorithm's best lr was 1.9e-5, the
grid's middle."""


def cpu_tier_base(steps: int = 20) -> RunConfig:
    """The CPU tier's run shape shared by quick and cpu (the warm start is the suite's)."""
    return replace(
        run_preset("cpu-tier"),
        task=TaskConfig(name="arithmetic", settings=ArithmeticSettings(num_terms=3, max_operand=9), eval_items=512),
        rollout=RolloutConfig(prompts_per_step=8, samples_per_prompt=8, max_new_tokens=32, generation_batch_size=256),
        optim=OptimConfig(steps=steps, lr=3e-5, microbatch_size=8, minibatches_per_step=2),
        eval=EvalConfig(every=10, at_start=True),
        tracking=TrackingConfig(checkpoint_every=10),
        threads=1,
    )


def _quick() -> Suite:
    return Suite(
        name="quick", version=3, base=cpu_tier_base(), algorithms=FIVE_ALGORITHMS, lrs=(6e-6, 1.9e-5, 6e-5),
        seeds=(0, 1, 2), warm_start=True, warm_start_settings=CPU_TIER_WARM_START, budget=QUICK_BUDGET,
        description="The CPU tier in 15 minutes: warm-started tiny Qwen3 on 3-term single-digit arithmetic, 5 "
                    "algorithms x 3 learning rates x 3 seeds.",
    )


SEVEN_ALGORITHMS = (*FIVE_ALGORITHMS, "dapo", "drgrpo")
CPU_BUDGET = CPU_TIER_DESIGN + """
Budget: 90 minutes of wall clock on 2 cores, resumable (rerun the command to continue).
Grid: the five paper algorithms + GRPO's DAPO (clip-higher 0.28) and Dr.GRPO (token-sum / (B L_max)) settings
= 7 algorithms, x 2 optimizers with their own lr grids (AdamW 5e-6, 1.2e-5, 3e-5, 7.5e-5 as quick; SGD with
momentum 0.9: 6e-4, 1.5e-3, 4e-3, placed from the v2 tier, where SGD 1e-3 gained most, 3e-3 less and 3e-2
collapsed; plus 2.4e-4 for REINFORCE and 1e-2 for Dr.GRPO), x 3 seeds = 153 runs. Measured 2026-12-02 on the
2-core machine: 59 min 30 s for the first 147 with the test suite running beside it for 40 minutes (~49 s of
wall per run per worker), 116 s for the 6 extension runs on the quiet machine; 4 seeds (~80 minutes) did not
fit beside the rest of the work. Every best lr is inside its grid: on the shared SGD grid REINFORCE's was the
lowest and Dr.GRPO's the highest (its normaliser shortens its steps), hence their extra lrs, which both
scored lower (0.415 and 0.456 against 0.474 and 0.486).
Power: with 3 seeds the minimum detectable paired difference (80% power, two-sided 5%) is
(t_0.975,2 + t_0.8,2) / sqrt(3) = 3.10 x the seed-to-seed sd of the difference; the leaderboard prints it
for every comparison from the measured sd."""


def _cpu() -> Suite:
    return Suite(
        name="cpu", version=1, base=cpu_tier_base(), algorithms=SEVEN_ALGORITHMS, lrs=(),
        arms=(OptimizerArm("adamw", (5e-6, 1.2e-5, 3e-5, 7.5e-5)),
              OptimizerArm("sgd", (6e-4, 1.5e-3, 4e-3), extra_lrs=(("reinforce", (2.4e-4,)), ("drgrpo", (1e-2,))))),
        seeds=(0, 1, 2), warm_start=True, warm_start_settings=CPU_TIER_WARM_START, budget=CPU_BUDGET,
        description="The CPU tier with power: 7 algorithms x (AdamW: 4 learning rates; SGD with momentum: 3, "
                    "plus one more for REINFORCE and Dr.GRPO) x 3 seeds, on the quick suite's task and warm start.",
    )


def _smollm2_model() -> str:
    """The folder `isopo-bench convert-smollm2` writes (not converted here: defining a suite is free)."""
    from isopo_bench.models import cache_root
    from isopo_bench.smollm2 import FOLDER_NAME

    return str(cache_root() / "models" / FOLDER_NAME)


SMOLLM2_BUDGET = """\
Target: about 1 hour on 2 CPU cores (not measured; estimated from FLOPs). SmolLM2-135M: one step of
4 prompts x 4 samples, ~20 prompt + <= 24 new tokens = ~700 trained tokens x 6 x 135M = 0.6 TFLOP,
~10 s at ~60 GFLOP/s per core, plus ~5 s of sampling: ~15 s/step. 5 algorithms x 30 steps x 15 s =
38 core-minutes; + 2 evaluations of 128 items per run (~1 min each) = ~48 core-minutes; 2 workers: ~30-60 min."""


def _smollm2() -> Suite:
    base = RunConfig(
        model=ModelConfig(name_or_path=_smollm2_model()),
        task=TaskConfig(name="arithmetic", settings=ArithmeticSettings(num_terms=2, max_operand=20), eval_items=128),
        rollout=RolloutConfig(prompts_per_step=4, samples_per_prompt=4, max_new_tokens=24, generation_batch_size=16),
        optim=OptimConfig(steps=30, lr=1e-5, microbatch_size=4),
        eval=EvalConfig(every=0, at_start=True),
        tracking=TrackingConfig(checkpoint_every=5),
        threads=1,
    )
    return Suite(
        name="smollm2", version=2, base=base, algorithms=FIVE_ALGORITHMS, lrs=(1e-5,), seeds=(0,),
        description="SmolLM2-135M-Instruct on easy 2-term arithmetic: a real small LM on a CPU in about an hour "
                    "(run `isopo-bench convert-smollm2` once first).",
        budget=SMOLLM2_BUDGET,
    )


PAPER_ESTIMATE = Estimate(
    device="1x H100 80GB", params=0.6e9, prompt_tokens=130, completion_tokens=400,
    generate_tokens_per_s=10_000, train_flops_per_s=150e12,
)
PAPER_BUDGET = """\
The paper's GSM8K run (docs/algorithms.md#reference-setup): Qwen3-0.6B, 102 steps of 128 prompts x 8 samples,
2 minibatches, lr 2e-6, evaluation of all 1319 test items every 5 steps. One seed, one learning rate per
algorithm, as in the paper. Assumptions (stated, not measured): vLLM in eager mode colocated at 40% GPU
memory generates ~10k tokens/s on an H100; training with gradient checkpointing costs 8N FLOPs per token
at ~150 TFLOP/s (15% of bf16 peak); mean completion ~400 tokens (upper bound 2048)."""


def _paper() -> Suite:
    return Suite(
        name="paper", version=2, base=run_preset("paper"), algorithms=FIVE_ALGORITHMS, lrs=(2e-6,), seeds=(0,),
        description="The paper's GSM8K run on Qwen3-0.6B with vLLM (GPU), for the five algorithms.",
        budget=PAPER_BUDGET, estimate=PAPER_ESTIMATE, needs_gpu=True,
    )


# quick@v3 (2026-12-02): the CPU tier's warm start answers directly in 60% of its SFT targets (more headroom), a
# shipped warm start and an lr grid around the measured best. cpu@v1: the same tier with an optimizer axis.
# Version 2 of every suite (2026-12-01): plug-ins own their settings, so a config hash now covers only the
# chosen algorithm's and task's settings and names a model folder by its content hash; version-1 runs
# have other hashes and are not resumed into version-2 suites.
SUITES: Registry = Registry("suite", "isopo_bench.suites")
"""Suite factories by name; third-party packages add theirs through the `isopo_bench.suites` entry points."""
for _name, _factory in {"smoke": _smoke, "quick": _quick, "cpu": _cpu, "smollm2": _smollm2, "paper": _paper}.items():
    SUITES.register(_name)(_factory)


def get_suite(name: str, algorithms: tuple[str, ...] = ()) -> Suite:
    """A suite by name; `NAME@vN` is accepted and must match the current version. `algorithms` replaces
    the suite's algorithm presets (e.g. to add a plug-in's method beside the built-ins)."""
    base, _, version = name.partition("@v")
    suite = SUITES.get(base)()
    if algorithms:
        known = algorithm_presets()
        unknown = [a for a in algorithms if a not in known]
        if unknown:
            raise UnknownNameError(f"unknown algorithm preset(s) {', '.join(unknown)}. Known: {', '.join(sorted(known))}")
        suite = dataclasses.replace(suite, algorithms=tuple(algorithms))
    if version and version != str(suite.version):
        raise UnknownNameError(f"suite `{base}` is at version {suite.version}, not {version}; run `{suite.label}`")
    return suite


def evaluations_per_run(cfg: RunConfig) -> int:
    """Greedy evaluations a run performs (the trainer's schedule: start, every `every` steps, the last)."""
    steps, every = cfg.optim.steps, cfg.eval.every
    periodic = steps // every + (1 if steps % every else 0) if every > 0 else 1
    return periodic + int(cfg.eval.at_start)


def compute_estimate(cfg: RunConfig, est: Estimate, params: float | None, needs_old_logp: bool) -> dict[str, float]:
    """Tokens generated and trained per run and rough device-hours under the suite's stated assumptions."""
    r, o = cfg.rollout, cfg.optim
    n = params or est.params
    seqs = o.steps * r.prompts_per_step * r.samples_per_prompt
    eval_tokens = evaluations_per_run(cfg) * cfg.task.eval_items * est.completion_tokens
    trained = seqs * (est.prompt_tokens + est.completion_tokens) * o.epochs
    # forward + backward = 6N per token; gradient checkpointing reruns the forward (+2N); a pi_old or
    # reference forward costs 2N per token of the batch once per step.
    per_token = (8 if cfg.model.gradient_checkpointing else 6) * n
    extra_forwards = int(needs_old_logp) + int(cfg.algorithm.kl_coef > 0)
    extra = 2 * n * seqs * (est.prompt_tokens + est.completion_tokens) * extra_forwards
    generated = seqs * est.completion_tokens + eval_tokens
    hours = (generated / est.generate_tokens_per_s + (trained * per_token + extra) / est.train_flops_per_s) / 3600
    return {"sequences": seqs, "generated_tokens": generated, "generated_tokens_max": seqs * r.max_new_tokens
            + evaluations_per_run(cfg) * cfg.task.eval_items * (cfg.eval.max_new_tokens or r.max_new_tokens),
            "trained_tokens": trained, "train_flops": trained * per_token + extra, "device_hours": hours}


def param_count(c) -> float:
    """Parameters that cost FLOPs per token: attention, MLP and the LM head (the embedding lookup is free)."""
    head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    attn = 2 * c.hidden_size * head * c.num_attention_heads + 2 * c.hidden_size * head * kv
    return float(c.num_hidden_layers * (attn + 3 * c.hidden_size * c.intermediate_size) + c.vocab_size * c.hidden_size)


DISCORDANT_FRACTIONS = (0.1, 0.2, 0.3)
"""Plausible fractions of items exactly one of two compared models solves (at accuracy ~0.7, models that
erred independently would disagree on 2 x 0.7 x 0.3 = 0.42; models trained from one start disagree on fewer)."""


def power_lines(n_seeds: int, n_items: int) -> list[str]:
    """What a suite can resolve before any run exists: the item-noise MDE (statistics.item_noise_mde) for
    plausible discordant fractions, and the t-test's factor on the (unknown) seed sd."""
    from isopo_bench.statistics import item_noise_mde, t_quantile

    mdes = ", ".join(f"q = {q:.1f}: {item_noise_mde(n_items, q, n_seeds):.3f}" for q in DISCORDANT_FRACTIONS)
    lines = [f"power (80%, two-sided alpha 0.05), from evaluation-item noise alone: two algorithms paired on the same "
             f"{n_items} items per seed x {n_seeds} seed(s)",
             "  (items independent: sd of the mean difference <= sqrt(q / (seeds x items)), q = fraction of items exactly "
             "one of the two solves)",
             f"  minimum detectable difference in accuracy: {mdes}",
             "  (normal approximation; at accuracy ~0.7, independent errors would give q = 0.42)",
             "  seed-to-seed variance is NOT included: it adds to these, and is what a comparison over seeds must beat"]
    if n_seeds == 1:
        return lines + ["  with 1 seed it cannot be estimated: a single-seed difference above these may still be seed noise"]
    factor = (t_quantile(0.975, n_seeds - 1) + t_quantile(0.8, n_seeds - 1)) / n_seeds ** 0.5
    return lines + [f"  over {n_seeds} seeds the paired t-test detects (t_0.975 + t_0.8) / sqrt(n) = {factor:.2f} x the seed "
                    "sd of the paired difference (the leaderboard's mde_80, once runs exist)"]


def estimate_lines(suite: Suite, configs: list[RunConfig], params: float | None) -> list[str]:
    """The per-run plan and, for suites with stated throughput assumptions, tokens and device-hours."""
    from isopo_bench.plugins import ALGORITHMS

    cfg = configs[0]
    lines = [f"per run: {cfg.optim.steps} steps x {cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt} "
             f"sequences, {evaluations_per_run(cfg)} evaluations of {cfg.task.eval_items} items"]
    if suite.estimate is None:
        return lines
    total = 0.0
    for cfg in configs:
        e = compute_estimate(cfg, suite.estimate, params, ALGORITHMS.get(cfg.algorithm.name).needs_old_logp)
        total += e["device_hours"]
        lines.append(f"  {cfg.tracking.run_name:<32} generate {e['generated_tokens'] / 1e6:.1f}M tokens (at most "
                     f"{e['generated_tokens_max'] / 1e6:.0f}M), train {e['trained_tokens'] / 1e6:.1f}M tokens = "
                     f"{e['train_flops']:.2e} FLOPs, ~{e['device_hours']:.1f} h")
    lines.append(f"compute estimate: ~{total:.0f} GPU-hours on {suite.estimate.device} for {len(configs)} runs "
                 f"(assumes {suite.estimate.generate_tokens_per_s:,.0f} generated tokens/s and "
                 f"{suite.estimate.train_flops_per_s / 1e12:.0f} TFLOP/s training; ISOPO's update overhead over "
                 "REINFORCE is not included: measure it with `isopo-bench overhead`)")
    return lines
