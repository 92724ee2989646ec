"""The three arms of scripts/trl_step_timing.py (its docstring says what is timed and why it is the same
work): TRL's GRPOTrainer driven step by step in a paused worker thread, and isopo-bench's trainer with pi_old
recomputed or taken from the sampler; each arm's `step()` runs one rollout batch and returns a StepRecord
(wall, thread CPU, per-phase split). The measurement and the report stay in trl_step_timing.py."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
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
