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
import json
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the arms module beside this script

from trl_step_arms import (  # noqa: E402  (re-exported: the tests read them from here)
    ARMS, PARTS, PHASES, Shape, StepRecord, build_arms, isopo_config, run_interleaved, task_reward, trl_args,
    trl_dataset, with_other,
)

__all__ = ["ARMS", "PARTS", "PHASES", "Shape", "StepRecord", "build_arms", "isopo_config", "main", "run_interleaved",
           "summarize", "task_reward", "trl_args", "trl_dataset", "with_other"]


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
