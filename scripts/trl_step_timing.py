"""GRPO's step time in isopo-bench against the real TRL GRPOTrainer on the same work (issue 16, item 4).

Three arms in one process, one torch thread, their rollout batches interleaved (trl, recompute, sampler,
trl, recompute, ...) so that load drifts hit all three:

- `trl`: TRL's GRPOTrainer, HF generation (no vLLM), driven by its own `Trainer.train()` loop;
- `recompute`: isopo-bench GRPO, pi_old from a no-grad forward (`algorithm.old_logp_source=recompute`),
  which is what TRL does when one generation feeds several optimizer steps;
- `sampler`: isopo-bench GRPO, pi_old from the sampler's per-token log-probs (verl's bypass mode; TRL has
  no counterpart with HF generation).

The same work per step (one step = one rollout batch): the cpu-tier GRPO run (`compose("cpu-tier", "grpo")`:
tiny random Qwen3, arithmetic prompts, P x G = 8 x 8 rollouts of at most 40 tokens at temperature 1,
float32) with two optimizer steps per rollout batch. isopo-bench: `optim.minibatches_per_step = 2`
(minibatches of P G / 2 sequences in microbatches of 8; the cpu-tier preset itself takes one step, where
GRPO is on policy and TRL skips its pi_old forward). TRL: `per_device_train_batch_size` = the microbatch,
`gradient_accumulation_steps` = microbatches per minibatch, `steps_per_generation` = 2 x that,
`num_iterations = 1`. Both sides load the same weights (one cached folder), see the same prompts in the
same order (TRL's dataset unshuffled, rows = isopo-bench's train items by step), score with the task's own
scorer, and use docs/conventions.md's `grpo` row (`loss_type="dapo"`, epsilon 0.2 / 0.2, delta 3), AdamW
(torch's, not fused) at the same lr, betas, weight decay and grad clip, a constant schedule. Not the same,
by design of each library: TRL shuffles the generation batch before splitting it into optimizer steps;
isopo-bench's HF engine also returns the sampler's log-probs (logits kept, a log-softmax over B x T x V).

Timed per step, whole (generation + scoring + pi_old + both optimizer steps): wall seconds and the stepping
thread's CPU seconds (time.thread_time). isopo-bench: `Trainer._train_step` plus the MLflow write the
normal loop makes after it (a temporary sqlite store); per-step diagnostics off (TRL has none), no
evaluation, no checkpoint. TRL: the slice of its `train()` loop between two pauses, run in a worker thread
that a callback pauses after each rollout batch's last optimizer step; semaphores let one thread run at a
time, so nothing overlaps. Split per step: generate (TRL `_generate_single_turn`, isopo-bench
`time/rollout`), pi_old (the no-grad log-prob forward), update (isopo-bench `time/update`; TRL: everything
outside `_generate_and_score_completions`: dataloader, forwards, backwards, optimizer), other (the rest:
rewards, batch building, advantages, MLflow); inside update, fwd_bwd (TRL `compute_loss` +
`accelerator.backward`, isopo-bench the update minus its `_clip_and_step`) and optimizer (clip + AdamW).

    .venv/bin/python scripts/trl_step_timing.py [--steps 12] [--warmup 2] [--out DIR]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: one intra-op thread in every thread

import argparse
import functools
import json
import statistics
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from time import perf_counter, thread_time

import torch

from isopo_bench import metric_names as M
from isopo_bench.config import RunConfig, TrackingConfig, replace
from isopo_bench.models import load_policy
from isopo_bench.presets import compose
from isopo_bench.timing import thread_metric

ARMS = ("trl", "recompute", "sampler")
PHASES = ("generate", "pi_old", "update", "other")
"""Disjoint parts of a step (`other` = the step minus the first three)."""
PARTS = ("fwd_bwd", "optimizer", "mlflow")
"""Parts inside those: the update's loss forwards + backwards and its clip + optimizer steps; the MLflow write
(isopo-bench only) inside `other`."""


@dataclass(frozen=True)
class Shape:
    prompts: int = 8
    samples: int = 8
    max_new_tokens: int = 40
    microbatch: int = 8
    optimizer_steps: int = 2
    """Optimizer steps per rollout batch (>= 2: with one, GRPO is on policy and TRL skips pi_old)."""


@dataclass
class StepRecord:
    arm: str
    step: int
    wall: float
    cpu: float
    phases: dict[str, tuple[float, float]]
    """Phase -> (wall s, thread CPU s); `update` and `generate` as named in the module docstring."""
    pi_old_forwards: int
    prompt_rows: list[list[int]] = field(repr=False)
    """Prompt token ids of every generated sequence, in generation order."""
    completion_lengths: list[int] = field(repr=False)


def isopo_config(shape: Shape, steps: int, out: str, source: str) -> RunConfig:
    P, G = shape.prompts, shape.samples
    if shape.optimizer_steps < 2:
        raise ValueError(f"optimizer_steps={shape.optimizer_steps}: with one step per rollout batch GRPO is on policy "
                         "and TRL skips its pi_old forward; use >= 2")
    if P % shape.optimizer_steps or (P * G // shape.optimizer_steps) % shape.microbatch:
        raise ValueError(f"{P} prompts x {G} samples do not split into {shape.optimizer_steps} minibatches of whole "
                         f"groups in microbatches of {shape.microbatch}; change --prompts or --microbatch")
    cfg = compose("cpu-tier", "grpo")
    return replace(cfg, **{
        "rollout.prompts_per_step": P, "rollout.samples_per_prompt": G, "rollout.max_new_tokens": shape.max_new_tokens,
        "rollout.generation_batch_size": P * G, "optim.microbatch_size": shape.microbatch,
        "optim.minibatches_per_step": shape.optimizer_steps, "optim.steps": steps, "algorithm.old_logp_source": source,
        "diagnostics.proximity_every": 0, "diagnostics.alignment_every": 0,
        "tracking": TrackingConfig(uri=f"sqlite:///{out}/mlflow.db", output_dir=f"{out}/runs", experiment="trl-step-timing"),
    })


def trl_args(cfg: RunConfig, out: str):
    """The GRPOConfig doing isopo-bench's `cfg` work: docs/conventions.md's grpo row, the same batch geometry."""
    from trl import GRPOConfig

    o, r, a = cfg.optim, cfg.rollout, cfg.algorithm
    if a.loss_agg != "token-mean" or a.kl_coef != 0:
        raise ValueError(f"loss_agg={a.loss_agg}, kl_coef={a.kl_coef}: only the grpo preset (token-mean, no KL) is mapped "
                         "to TRL here (docs/conventions.md)")
    per_step = r.prompts_per_step * r.samples_per_prompt // o.minibatches_per_step
    accumulation = per_step // o.microbatch_size
    return GRPOConfig(
        output_dir=f"{out}/trl", report_to=[], use_cpu=True, bf16=False, seed=cfg.seed, disable_tqdm=True,
        per_device_train_batch_size=o.microbatch_size, gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation * o.minibatches_per_step, num_iterations=1, num_generations=r.samples_per_prompt,
        max_completion_length=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=0,
        learning_rate=o.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=o.weight_decay,
        adam_beta1=o.betas[0], adam_beta2=o.betas[1], max_grad_norm=o.grad_clip, optim="adamw_torch",
        beta=0.0, loss_type="dapo", epsilon=a.settings.clip_eps_low, epsilon_high=a.settings.clip_eps_high,
        delta=a.settings.dual_clip, scale_rewards="group", max_steps=o.steps * o.minibatches_per_step,
        logging_steps=10**9, save_strategy="no", eval_strategy="no", shuffle_dataset=False, dataloader_num_workers=0,
    )


class PhaseClock:
    """Wall and thread-CPU seconds and calls per phase, accumulated in the thread that runs them."""

    def __init__(self):
        self.totals: dict[str, list[float]] = {}

    def wrap(self, owner, method: str, phase: str, when=lambda: True) -> None:
        inner = getattr(owner, method)

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            if not when():
                return inner(*args, **kwargs)
            wall, cpu = perf_counter(), thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                t = self.totals.setdefault(phase, [0.0, 0.0, 0])
                t[0] += perf_counter() - wall
                t[1] += thread_time() - cpu
                t[2] += 1

        setattr(owner, method, timed)  # an instance attribute: the library's own calls on `self` go through it

    def pop(self) -> dict[str, list[float]]:
        out, self.totals = self.totals, {}
        return out


class IsopoArm:
    """isopo-bench's Trainer stepped one rollout batch at a time, as its own loop does (without eval/checkpoint)."""

    def __init__(self, name: str, cfg: RunConfig):
        from isopo_bench.trainer import Trainer

        self.name, self.trainer, self.step_index = name, Trainer(cfg), 0
        self.trainer.algorithm.attach(self.trainer.model)
        self.clock = PhaseClock()
        self.clock.wrap(self.trainer, "_forward_logp", "pi_old")  # counts the pi_old forwards
        self.clock.wrap(self.trainer, "_clip_and_step", "optimizer")  # clip, AdamW, the finite-state check
        self.rollouts = []
        generate = self.trainer.engine.generate

        def recording(prompt_ids, sampling):
            rollout = generate(prompt_ids, sampling)
            self.rollouts.append(rollout)
            return rollout

        self.trainer.engine.generate = recording

    def step(self) -> StepRecord:
        self.step_index += 1
        wall, cpu = perf_counter(), thread_time()
        metrics = self.trainer._train_step(self.step_index)
        mlflow_wall, mlflow_cpu = perf_counter(), thread_time()
        self.trainer.store.tracker.log_metrics(metrics, self.step_index)  # what Trainer.run does after each step
        end_wall, end_cpu = perf_counter(), thread_time()
        phases = {name: (metrics[key], metrics[thread_metric(key)])
                  for name, key in (("generate", M.TIME_ROLLOUT), ("pi_old", M.TIME_OLD_LOGP), ("update", M.TIME_UPDATE))}
        phases["mlflow"] = (end_wall - mlflow_wall, end_cpu - mlflow_cpu)
        clock = self.clock.pop()
        optimizer = clock.get("optimizer", [0.0, 0.0])
        phases["optimizer"] = (optimizer[0], optimizer[1])
        phases["fwd_bwd"] = (phases["update"][0] - optimizer[0], phases["update"][1] - optimizer[1])
        rollout = self.rollouts.pop()
        wall, cpu = end_wall - wall, end_cpu - cpu
        return StepRecord(self.name, self.step_index, wall, cpu, with_other(phases, wall, cpu),
                          int(clock.get("pi_old", [0, 0, 0])[2]), rollout.prompt_ids, [len(c) for c in rollout.completion_ids])

    def close(self) -> None:
        self.trainer.engine.close()


def with_other(phases: dict, wall: float, cpu: float) -> dict[str, tuple[float, float]]:
    """`other` = the step minus generate, pi_old and update (the phases are disjoint parts of the step)."""
    named = [phases.get(p, (0.0, 0.0)) for p in PHASES[:-1]]
    return phases | {"other": (wall - sum(w for w, _ in named), cpu - sum(c for _, c in named))}


def task_reward(task, items):
    """TRL reward function: the task's own scorer on the item a dataset row points at."""

    def task_score(completions, item, **_):
        return [task.score(items[i], c[-1]["content"]) for c, i in zip(completions, item, strict=True)]

    return task_score


def trl_dataset(task, steps: int, prompts: int):
    """Rows in isopo-bench's step order (train_items(step - 1, P)); TRL reads them unshuffled."""
    from datasets import Dataset

    items = [item for step in range(steps + 1) for item in task.train_items(step, prompts)]
    rows = {"prompt": [[{"role": "user", "content": task.prompt(item)}] for item in items], "item": list(range(len(items)))}
    return items, Dataset.from_dict(rows)


class TRLArm:
    """TRL's own `train()` in a worker thread, paused by a callback after each rollout batch's last optimizer step."""

    def __init__(self, reference: IsopoArm, out: str):
        from transformers import TrainerCallback
        from trl import GRPOTrainer

        t = reference.trainer
        cfg, self.name, self.step_index = t.cfg, "trl", 0
        model = load_policy(cfg.model, t.source, t.device)  # the same cached folder: the same weights
        items, dataset = trl_dataset(t.task, cfg.optim.steps, cfg.rollout.prompts_per_step)
        self.trainer = GRPOTrainer(model=model, reward_funcs=task_reward(t.task, items), args=trl_args(cfg, out),
                                   train_dataset=dataset, processing_class=t.tokenizer)
        self.clock, self.generations = PhaseClock(), []
        tr = self.trainer
        self.clock.wrap(tr, "_generate_and_score_completions", "score")
        self.clock.wrap(tr, "_get_per_token_logps_and_entropies", "pi_old", when=lambda: not torch.is_grad_enabled())
        self.clock.wrap(tr, "_generate_single_turn", "generate")
        self.clock.wrap(tr, "compute_loss", "fwd_bwd")
        self.clock.wrap(tr.accelerator, "backward", "fwd_bwd")
        self.clock.wrap(tr, "_clip_grad_norm", "optimizer")
        generate = tr._generate_single_turn

        def recording(prompt_ids, *args, **kwargs):
            completion_ids, logprobs = generate(prompt_ids, *args, **kwargs)
            self.generations.append(([list(p) for p in prompt_ids], [len(c) for c in completion_ids]))
            return completion_ids, logprobs

        tr._generate_single_turn = recording
        self.go, self.paused = threading.Semaphore(0), threading.Semaphore(0)
        self.pending, self.error, self.cpu_mark = None, None, 0.0
        arm, every, mark = self, cfg.optim.minibatches_per_step, [0.0, 0.0]

        class PauseAfterRollout(TrainerCallback):
            """Times optimizer.step (between its two callbacks) and pauses after a rollout batch's last step."""

            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                mark[:] = perf_counter(), thread_time()

            def on_optimizer_step(self, args, state, control, **kwargs):
                t = arm.clock.totals.setdefault("optimizer", [0.0, 0.0, 0])
                t[0] += perf_counter() - mark[0]
                t[1] += thread_time() - mark[1]

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step % every == 0:
                    arm._pause()

        tr.add_callback(PauseAfterRollout())
        self.thread = threading.Thread(target=self._run, name="trl-train", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        torch.set_num_threads(1)
        self.go.acquire()
        self.cpu_mark = thread_time()
        try:
            self.trainer.train()
        except BaseException as exc:  # handed to the main thread, which raises it
            self.error = exc
        self.paused.release()

    def _pause(self) -> None:
        """In the TRL thread: close the step's record, hand control to the main thread, wait for the next step."""
        now = thread_time()
        self.pending = (now - self.cpu_mark, self.clock.pop(), self.generations.pop())
        self.paused.release()
        self.go.acquire()
        self.cpu_mark = thread_time()

    def step(self) -> StepRecord:
        self.step_index += 1
        wall = perf_counter()
        self.go.release()
        self.paused.acquire()
        wall = perf_counter() - wall
        if self.error is not None:
            raise RuntimeError(f"TRL's train() failed at rollout batch {self.step_index}") from self.error
        cpu, clock, (prompt_rows, lengths) = self.pending
        zero = [0.0, 0.0, 0]
        score = clock.get("score", zero)
        phases = {name: tuple(clock.get(name, zero)[:2]) for name in ("generate", "pi_old", "fwd_bwd", "optimizer")}
        phases["update"] = (wall - score[0], cpu - score[1])
        return StepRecord("trl", self.step_index, wall, cpu, with_other(phases, wall, cpu),
                          int(clock.get("pi_old", zero)[2]), prompt_rows, lengths)

    def close(self) -> None:
        """Let train() run to its end (after the last pause) and wait for the thread."""
        self.go.release()
        self.thread.join(timeout=60)


def build_arms(shape: Shape, steps: int, out: str) -> dict:
    torch.set_num_threads(1)
    isopo = {source: IsopoArm(source, isopo_config(shape, steps, out, source))
             for source in ("recompute", "sampler")}
    return {"trl": TRLArm(isopo["recompute"], out), **isopo}


def run_interleaved(arms: dict, steps: int) -> list[StepRecord]:
    """Steps in rounds, each round one step of every arm in ARMS order."""
    return [arms[name].step() for _ in range(steps) for name in ARMS]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3), inclusive method (the sample's own order statistics and their interpolations)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def summarize(records: list[StepRecord], warmup: int) -> dict:
    """Per arm: quartiles of wall / CPU per step and the median of each phase, over steps after `warmup`;
    ratios to TRL: of the medians, and the median over rounds of the paired per-round ratios."""
    kept = [r for r in records if r.step > warmup]
    by_arm = {arm: [r for r in kept if r.arm == arm] for arm in ARMS}
    out = {}
    for arm, rows in by_arm.items():
        s = {"steps": len(rows), "wall": quartiles([r.wall for r in rows]), "cpu": quartiles([r.cpu for r in rows]),
             "mean_completion_len": statistics.fmean(l for r in rows for l in r.completion_lengths)}
        for phase in PHASES + PARTS:
            if all(phase in r.phases for r in rows):
                s[f"{phase}_wall"] = statistics.median(r.phases[phase][0] for r in rows)
                s[f"{phase}_cpu"] = statistics.median(r.phases[phase][1] for r in rows)
        out[arm] = s
    trl = out["trl"]
    for arm in ARMS[1:]:
        for clock in ("wall", "cpu"):
            out[arm][f"{clock}_vs_trl"] = out[arm][clock][1] / trl[clock][1]
            out[arm][f"{clock}_vs_trl_paired"] = statistics.median(
                getattr(a, clock) / getattr(b, clock) for a, b in zip(by_arm[arm], by_arm["trl"], strict=True))
    return out


def print_report(summary: dict, load: tuple, steps: int, warmup: int) -> None:
    print(f"load average at start {load[0]}, at end {load[1]}; {steps} rounds, medians of steps {warmup + 1}..{steps}")  # noqa: T201
    print("| arm | wall s/step [q1, q3] | thread CPU s/step [q1, q3] | wall vs TRL (paired) | CPU vs TRL (paired) "  # noqa: T201
          "| mean completion len |\n|---|---:|---:|---:|---:|---:|")
    for arm, s in summary.items():
        ratio = {c: f"{s[f'{c}_vs_trl']:.3f} ({s[f'{c}_vs_trl_paired']:.3f})" if arm != "trl" else "1" for c in ("wall", "cpu")}
        print(f"| {arm} | {s['wall'][1]:.3f} [{s['wall'][0]:.3f}, {s['wall'][2]:.3f}] | {s['cpu'][1]:.3f} "  # noqa: T201
              f"[{s['cpu'][0]:.3f}, {s['cpu'][2]:.3f}] | {ratio['wall']} | {ratio['cpu']} | {s['mean_completion_len']:.1f} |")
    columns = PHASES + PARTS
    print("\nmedian s (wall / thread CPU); update = fwd_bwd + optimizer (+ for TRL its loop: dataloader, batch slicing)")  # noqa: T201
    print("| arm | " + " | ".join(columns) + " |\n|---|" + "---:|" * len(columns))  # noqa: T201
    for arm, s in summary.items():
        cells = [f"{s[f'{p}_wall']:.3f} / {s[f'{p}_cpu']:.3f}" if f"{p}_wall" in s else "-" for p in columns]
        print(f"| {arm} | " + " | ".join(cells) + " |")  # noqa: T201


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="rollout batches per arm")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    parser.add_argument("--prompts", type=int, default=Shape.prompts)
    parser.add_argument("--samples", type=int, default=Shape.samples)
    parser.add_argument("--max-new-tokens", type=int, default=Shape.max_new_tokens)
    parser.add_argument("--microbatch", type=int, default=Shape.microbatch)
    parser.add_argument("--out", default="", help="folder for the MLflow stores and trl_step_timing.json (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} must exceed --warmup {args.warmup}")
    out = args.out or tempfile.mkdtemp(prefix="trl_step_timing_")
    shape = Shape(args.prompts, args.samples, args.max_new_tokens, args.microbatch)
    arms = build_arms(shape, args.steps, out)
    load_start = os.getloadavg()
    try:
        records = run_interleaved(arms, args.steps)
    finally:
        for arm in arms.values():
            arm.close()
    load = (tuple(round(x, 2) for x in load_start), tuple(round(x, 2) for x in os.getloadavg()))
    summary = summarize(records, args.warmup)
    print_report(summary, load, args.steps, args.warmup)
    with open(f"{out}/trl_step_timing.json", "w") as f:
        json.dump({"shape": asdict(shape), "load": load, "summary": summary,
                   "records": [{k: v for k, v in asdict(r).items() if k not in ("prompt_rows",)} for r in records]}, f)
    return {"summary": summary, "records": records, "arms": arms}


if __name__ == "__main__":
    main()
