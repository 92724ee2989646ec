"""The training loop: the one place that knows the order of the steps.

    task prompts -> rollout engine -> rewards -> advantages -> [pi_old / reference forward]
      -> optimizer steps over minibatches of microbatches (algorithm loss + backward hooks)
      -> weight sync -> [greedy evaluation] -> metrics (MLflow) -> [checkpoint]

Under torchrun with parallel.world_size = W > 1 the same loop runs on every rank: each rank generates its
share of the prompts, the batch is gathered, each rank updates on its share of the global microbatches and
the gradient shares are summed (isopo_bench.parallel_run documents the flow, isopo_bench.distributed the
update); rank 0 alone evaluates, logs and checkpoints.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from isopo_bench import metric_names as M
from isopo_bench.algorithm_api import StepContext
from isopo_bench.batch import BatchTotals, TrainBatch, logprob_temperature, pad_and_stack, sequence_logprobs
from isopo_bench.checkpoint import export_model, load_checkpoint, save_checkpoint
from isopo_bench.config import RunConfig
from isopo_bench.diagnostics.monitor import StepDiagnostics
from isopo_bench.distributed import (
    DataParallel, all_microbatches, full_model_state, full_states, grad_norm_value, plan_microbatches, restore_full_states,
    rollout_share,
)
from isopo_bench.errors import NonFiniteError
from isopo_bench.evaluation import evaluate
from isopo_bench.finite_guard import check_finite_state
from isopo_bench.item_record import item_tags
from isopo_bench.models import encode_prompt, load_policy, load_tokenizer, model_source, resolve_device
from isopo_bench.optim import build_optimizer
from isopo_bench.parallel_run import RankContext, checksum_spread
from isopo_bench.plugin_settings import resolved_run, run_algorithm_setup
from isopo_bench.plugins import ADVANTAGES, ALGORITHMS, ENGINES, TASKS
from isopo_bench.preflight import check_task_data
from isopo_bench.rollout.api import Rollout, SamplingSettings
from isopo_bench.rollout.mismatch import microbatch_mismatch
from isopo_bench.rollout_correction import BypassGuard, correction_weights
from isopo_bench.run_lock import holding_run
from isopo_bench.run_store import RunStore, run_dir_for
from isopo_bench.step_driver import MicrobatchWork, step_gradients
from isopo_bench.step_metrics import UpdateMetrics, rollout_metrics
from isopo_bench.timing import PhaseTimer

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_id: str | None
    """None on data-parallel ranks other than 0 (rank 0 owns the MLflow run)."""
    run_dir: Path
    status: str
    steps_done: int
    final_accuracy: float | None


class Trainer:
    def __init__(self, cfg: RunConfig, resume: bool = False):
        self.cfg = cfg = resolved_run(cfg.validate())  # the plug-ins' settings explicit from here on
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.ranks = RankContext.from_config(cfg)
        RunStore.preflight(cfg, resume)  # MLflow reachable, no run overwritten: before any model is loaded
        self.ranks.barrier()  # every rank has checked before rank 0 creates the run folder
        torch.manual_seed(cfg.seed)
        self.device = self.ranks.device(resolve_device(cfg.model.device))
        with self.ranks.main_first():  # rank 0 first: it may write the tiny model's cached folder
            self.source = model_source(cfg.model, seed=0)
        self.tokenizer = load_tokenizer(self.source)
        self.model = load_policy(cfg.model, self.source, self.device)
        self.ref_model = self._reference_model()
        self.task = TASKS.get(cfg.task.name)(cfg.task, cfg.seed)
        self.algorithm = ALGORITHMS.get(cfg.algorithm.name)(run_algorithm_setup(cfg))
        self.advantage_fn = ADVANTAGES.get(cfg.algorithm.advantage)
        # Data parallel: wrap before the optimizer is built (FSDP2 replaces parameters). `self.model` stays
        # the plain module (hooks, checkpoints, engines); `self.forward_model` is what training batches run through.
        self.dp = DataParallel.setup(self.model, cfg.parallel.mode) if self.ranks.distributed else None
        self.forward_model = self.dp.forward_model if self.dp else self.model
        self.sharded = self.dp is not None and self.dp.mode == "fsdp2"
        self.engine = ENGINES.get(cfg.rollout.engine)(cfg, self.source, self.tokenizer, self.model)
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg.optim)
        self.timer = PhaseTimer(self.device)
        # Per-step diagnostics (isopo_bench.diagnostics): read-only, timed in their own phase.
        self.diagnostics = (StepDiagnostics(cfg.diagnostics, self.model, cfg.algorithm.loss_agg,
                                            temperature=logprob_temperature(cfg.rollout.temperature))
                            if StepDiagnostics.active(cfg.diagnostics, self.sharded) else None)
        self.eval_items = self.task.eval_items(cfg.task.eval_items)
        self.bypass = BypassGuard(cfg.correction, self.ranks.gather)  # the first-step check of old_logp_source=sampler
        self.state = {"step": 0, "elapsed": 0.0, "best_accuracy": None, "initial_accuracy": None, "last_accuracy": None}
        check_task_data(cfg, self.task, self.tokenizer, self.eval_items)  # data read and checked before the run exists
        # The MLflow run and run folder are created only once everything above loaded, so a bad model id or
        # task setting leaves no half-made run behind.
        self.store = RunStore.open(cfg, resume) if self.ranks.is_main else None
        self.run_dir = run_dir_for(cfg)

    def _reference_model(self):
        if self.cfg.algorithm.kl_coef <= 0:
            return None
        ref = copy.deepcopy(self.model).eval()
        ref.requires_grad_(False)
        return ref

    # ----------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        cfg = self.cfg
        main = self.ranks.is_main
        descriptive = self.algorithm.attach(self.model)
        try:
            if main:
                self.store.start(self.task, descriptive)
            # Rank 0 decides (and repairs a checkpoint swap a crash interrupted) before any rank reads it.
            if self.ranks.gather(self.store.has_checkpoint() if main else None)[0]:
                restore = restore_full_states(self.model, self.optimizer) if self.sharded else None
                self.state = load_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler, self.algorithm, restore)
                self._sync_engine()
                log.info("resumed %s at step %d", self.run_dir, self.state["step"])
            elif cfg.eval.at_start and main:
                self._evaluate(step=0)
            bar = tqdm(range(self.state["step"] + 1, cfg.optim.steps + 1), initial=self.state["step"],
                       total=cfg.optim.steps, desc=f"{cfg.algorithm.name}", dynamic_ncols=True, disable=not main or None)
            for step in bar:
                metrics = self._train_step(step)
                if self._eval_due(step) and main:
                    metrics |= self._evaluate(step)
                self.state["step"] = step
                checkpoint = self._checkpoint_due(step)
                if checkpoint and self.ranks.distributed and not self.sharded:
                    # Replicas must agree; a silent drift would corrupt the run.
                    metrics[M.PARALLEL_PARAM_SPREAD] = checksum_spread(self.ranks, self.model)
                if main:  # metrics before the checkpoint: a run resumed from it must not miss this step's
                    self.store.tracker.log_metrics(metrics, step)
                if checkpoint:
                    self._checkpoint()
                bar.set_postfix(reward=f"{metrics[M.REWARD_MEAN]:.3f}", acc=self.state["last_accuracy"])
        except BaseException as exc:  # KeyboardInterrupt too: the run can be resumed from its checkpoint
            if main:
                self.store.fail_from(exc)
            raise
        finally:
            self.engine.close()
        self._finish()
        return RunResult(self.store.tracker.run_id if main else None, self.run_dir, "FINISHED", self.state["step"],
                         self.state["last_accuracy"])

    def _finish(self) -> None:
        """The run's end, each step under a deadline (isopo_bench.shutdown): FINISHED only once every rank has
        finished training; no rank tears the group down while rank 0 still writes."""
        try:
            weights = full_model_state(self.model) if self.sharded else None  # a collective: every rank
            self.ranks.shutdown_barrier("trained")
            if self.ranks.is_main:
                export_model(self.model, self.tokenizer, self.run_dir / "final_model", weights)
                self.store.finish(self.state)
        except BaseException as exc:  # a missing rank too: FAILED, and a resume finishes from the final checkpoint
            if self.ranks.is_main:
                self.store.fail_from(exc)
            raise
        self.ranks.shutdown_barrier("recorded")
        self.ranks.close()

    def _checkpoint(self) -> None:
        """Every rank takes part (gathering FSDP2 shards is a collective); rank 0 writes."""
        gathered = full_states(self.model, self.optimizer) if self.sharded else None
        if self.ranks.is_main:
            save_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler, self.algorithm, self.state, gathered)

    def _sync_engine(self) -> None:
        """Every rank syncs its own engine (under FSDP2 the vLLM engine gathers the shards: a collective)."""
        self.engine.sync_weights(self.model)

    def _eval_due(self, step: int) -> bool:
        every = self.cfg.eval.every
        return step == self.cfg.optim.steps or (every > 0 and step % every == 0)

    def _checkpoint_due(self, step: int) -> bool:
        every = self.cfg.tracking.checkpoint_every
        return step == self.cfg.optim.steps or (every > 0 and step % every == 0)

    # ----------------------------------------------------------------------------------------------
    def _train_step(self, step: int) -> dict[str, float]:
        cfg, timer = self.cfg, self.timer
        P, G = cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt
        items = self.task.train_items(step - 1, P)
        shared, _ = rollout_share(P, G, self.ranks.world_size, self.ranks.rank)  # all P prompts on one process
        items = items[shared]
        with timer.phase(M.TIME_ROLLOUT):
            prompt_ids = [self._encode(self.task.prompt(item)) for item in items]
            # Rank 0 keeps the one-process seed; other ranks sample their share with their own stream.
            seed = cfg.seed * 1_000_003 + step + self.ranks.rank * 1_000_000_007
            sampling = SamplingSettings(n=G, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                        max_new_tokens=cfg.rollout.max_new_tokens, seed=seed)
            rollout = self.engine.generate(prompt_ids, sampling)
        with timer.phase(M.TIME_REWARD):
            texts = self.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
            rewards_PG = torch.tensor([self.task.score(items[i // G], t) for i, t in enumerate(texts)]).view(-1, G)
        if self.ranks.distributed:
            rollout, rewards_PG = self._gather_rollouts(rollout, rewards_PG)
        # On the whole (gathered) batch: batch-normalised estimators (reinforce++) see every prompt of the step.
        advantages_B = self.advantage_fn(rewards_PG).reshape(-1)
        batch = self._build_batch(rollout, advantages_B)
        metrics = rollout_metrics(rollout, rewards_PG, advantages_B)
        with timer.phase(M.TIME_OLD_LOGP):
            if self.algorithm.needs_old_logp and cfg.algorithm.old_logp_source == "sampler":
                self.bypass.check(lambda: self._forward_logp(self.model, batch), batch, self._own_rows(batch), step)
                batch.old_logp_BT = batch.sampler_logp_BT
            elif self.algorithm.needs_old_logp:
                batch.old_logp_BT = self._forward_logp(self.model, batch)
        with timer.phase(M.TIME_REF_LOGP):
            if self.algorithm.needs_ref_logp:
                batch.ref_logp_BT = self._forward_logp(self.ref_model, batch)
        if cfg.correction.mode != "off":  # weights from the trainer's pi_old (recomputed if not at hand) vs the sampler
            with timer.phase(M.TIME_OLD_LOGP):
                trainer_old = (batch.old_logp_BT if batch.old_logp_BT is not None and cfg.algorithm.old_logp_source == "recompute"
                               else self._forward_logp(self.model, batch))
            own_B = torch.zeros(batch.size, dtype=torch.bool)
            for rows in self._own_rows(batch):
                own_B[rows] = True
            correction = correction_weights(cfg.correction, trainer_old, batch.sampler_logp_BT, batch.response_mask_BT, own_B)
            batch.correction_BT = correction.weights_BT
            metrics |= correction.metrics
        with timer.phase(M.TIME_UPDATE):
            metrics |= self._update(batch, step)
        with timer.phase(M.TIME_SYNC):
            self._sync_engine()
        times = timer.pop()
        metrics |= {name: times.get(name, 0.0) for name in M.TIME_PHASES if name != M.TIME_EVAL}
        metrics[M.TIME_STEP] = sum(v for k, v in times.items() if k not in (M.TIME_EVAL, M.TIME_DIAGNOSTICS))
        metrics |= timer.pop_cpu(skip=(M.TIME_EVAL, M.TIME_DIAGNOSTICS))  # time_cpu/*, time_thread/*: what concurrent workers do not inflate
        metrics[M.COST_FLOP_FLOOR] = self._flop_floor(batch)
        self.state["elapsed"] += metrics[M.TIME_STEP]
        metrics[M.TIME_ELAPSED] = self.state["elapsed"]
        metrics[M.ROLLOUT_TOKENS_PER_S] = rollout.num_tokens / max(times[M.TIME_ROLLOUT], 1e-9)
        return metrics

    def _gather_rollouts(self, rollout: Rollout, rewards_PG: torch.Tensor):
        """Every rank's share, concatenated in rank (= prompt) order: the whole batch on every rank."""
        shares = self.ranks.gather((rollout, rewards_PG))
        merged = Rollout(*([row for share, _ in shares for row in getattr(share, name)]
                           for name in ("prompt_ids", "completion_ids", "sampler_logps", "finish_reasons")))
        return merged, torch.cat([r for _, r in shares])

    def _encode(self, prompt: str) -> list[int]:
        ids = encode_prompt(self.tokenizer, prompt)
        if len(ids) > self.cfg.rollout.max_prompt_tokens:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds rollout.max_prompt_tokens="
                             f"{self.cfg.rollout.max_prompt_tokens}; raise it (prompts are never truncated)")
        return ids

    def _build_batch(self, rollout, advantages_B: torch.Tensor) -> TrainBatch:
        ids, attention, response, sampler = pad_and_stack(
            rollout.prompt_ids, rollout.completion_ids, self.tokenizer.pad_token_id,
            self.cfg.optim.padding_side, rollout.sampler_logps)
        dtype = next(self.model.parameters()).dtype
        dtype = dtype if dtype == torch.float64 else torch.float32
        G = self.cfg.rollout.samples_per_prompt
        return TrainBatch(ids, attention, response.to(dtype), advantages_B.to(dtype), sampler_logp_BT=sampler.to(dtype),
                          group_ids_B=torch.arange(len(ids)) // G)

    def _own_rows(self, batch: TrainBatch) -> list[slice]:
        """Row slices of the microbatches this rank trains on, over all minibatches (all of them on one
        process): the rows whose pi_old / reference log-probs it needs."""
        o = self.cfg.optim
        mini = batch.size // o.minibatches_per_step
        return [slice(m * mini + rows.start, m * mini + rows.stop) for m in range(o.minibatches_per_step)
                for _, rows in plan_microbatches(mini, o.microbatch_size, self.ranks.world_size, self.ranks.rank)]

    @torch.no_grad()
    def _forward_logp(self, model, batch: TrainBatch) -> torch.Tensor:
        """Log-probs of this rank's microbatches in the batch's padded layout (other rows stay 0: unread)."""
        out = torch.zeros_like(batch.response_mask_BT)
        for rows in self._own_rows(batch):
            mb, cols = batch.select(rows).trimmed()
            out[rows, cols] = self._logprobs(model, mb.to(self.device)).to(out.dtype).cpu()
        return out

    def _logprobs(self, model, mb: TrainBatch, with_entropy: bool = False):
        """Training log-probs of the distribution the rollouts were sampled from (logits / temperature)."""
        return sequence_logprobs(model, mb, with_entropy=with_entropy,
                                 temperature=logprob_temperature(self.cfg.rollout.temperature))

    def _local_work(self, microbatches: list[TrainBatch]) -> list[MicrobatchWork]:
        """This rank's microbatches of the step (all of them in one process), on the device."""
        if self.dp is not None:
            return self.dp.local_work(microbatches, self.device)
        return [MicrobatchWork(g, mb.to(self.device)) for g, mb in enumerate(microbatches)]

    # ----------------------------------------------------------------------------------------------
    def _update(self, batch: TrainBatch, step: int) -> dict[str, float]:
        o = self.cfg.optim
        mini_size = batch.size // o.minibatches_per_step
        max_len = self.cfg.algorithm.loss_agg_max_len or self.cfg.rollout.max_new_tokens
        sums = UpdateMetrics()
        first_pass_logp = []
        steps_per_rollout = o.epochs * o.minibatches_per_step
        reducer = self.dp.reducer if self.dp is not None else None
        for epoch in range(o.epochs):
            for m in range(o.minibatches_per_step):
                minibatch = batch.select(slice(m * mini_size, (m + 1) * mini_size))
                microbatches = all_microbatches(minibatch, o.microbatch_size)
                # The optimizer step's index over the run: a pure function of the step, so resumes continue it.
                index = (step - 1) * steps_per_rollout + epoch * o.minibatches_per_step + m
                ctx = StepContext(index, microbatches, BatchTotals.of(minibatch, len(microbatches), max_len),
                                  **({"reducer": reducer} if reducer else {}), logprobs=self._logprobs)
                nonfinite_loss = []
                work = self._local_work(microbatches)
                result = step_gradients(self.algorithm, self.model, ctx, work,
                                        forward_model=self.forward_model, with_entropy=True,
                                        check_loss=lambda loss: self._check_loss(loss, step, nonfinite_loss))
                for out in result.microbatches:
                    mask = out.mb.response_mask_BT
                    sums.add_sum(M.LOSS, out.loss)
                    sums.add_weighted(M.ENTROPY, float((out.entropy_BT * mask).sum()), float(mask.sum()))
                    sums.add_mean(out.metrics)
                    if epoch == 0 and m == 0:
                        first_pass_logp.append((out.mb, out.logp_BT))
                sums.add_mean(result.metrics)
                sums.end_optimizer_step()
                if self.ranks.any(bool(nonfinite_loss)):  # every rank stops together
                    raise NonFiniteError(self._nonfinite_message(step, "loss", nonfinite_loss[0] if nonfinite_loss else math.nan))
                with self.timer.phase(M.TIME_DIAGNOSTICS):  # before clipping: reads the algorithm's gradient
                    pending = self.diagnostics.prepare(self.model, ctx, work) if self.diagnostics else None
                sums.add_mean(self._clip_and_step(step))
                with self.timer.phase(M.TIME_DIAGNOSTICS):
                    sums.add_mean(self.diagnostics.finish(self.model, pending) if self.diagnostics else {})
        metrics = UpdateMetrics.merge(self.ranks.gather(sums)).result()
        metrics[M.LR] = self.scheduler.get_last_lr()[0]
        metrics |= microbatch_mismatch(first_pass_logp)  # sampler vs trainer, before any update
        return metrics

    def _flop_floor(self, batch: TrainBatch) -> float:
        """The FLOP floor of this rollout batch's update relative to REINFORCE's (isopo_bench.flop_floor)."""
        from isopo_bench.flop_floor import update_floor

        o = self.cfg.optim
        size = batch.size // o.minibatches_per_step
        minis = [all_microbatches(batch.select(slice(m * size, (m + 1) * size)), o.microbatch_size)
                 for m in range(o.minibatches_per_step)]
        return update_floor(self.algorithm, self.model, minis * o.epochs)

    def _check_loss(self, loss: torch.Tensor, step: int, found: list[float]) -> None:
        """One process stops at once; under data parallelism the rank records it and all ranks raise
        together after the microbatch loop (a lone raise would leave the others waiting in a collective)."""
        if torch.isfinite(loss):
            return
        if not self.ranks.distributed:
            raise NonFiniteError(self._nonfinite_message(step, "loss", float(loss)))
        found.append(float(loss))

    def _clip_and_step(self, step: int) -> dict[str, float]:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(params, max_norm))  # global: gradients are reduced
        if not math.isfinite(norm):
            raise NonFiniteError(self._nonfinite_message(step, "gradient norm", norm))
        self.optimizer.step()
        self.scheduler.step()
        check_finite_state(self.model, self.optimizer, step, self.cfg.optim.lr, self.ranks, self.run_dir)  # finite_guard
        return {M.GRAD_NORM: norm, M.GRAD_CLIPPED: float(norm > max_norm)}

    def _nonfinite_message(self, step: int, what: str, value: float) -> str:
        return (f"{what} is {value} at step {step}; the update was not applied, the run is marked FAILED and its last "
                f"good checkpoint in {self.run_dir} is kept. Fix: lower --optim.lr (now {self.cfg.optim.lr}), "
                "keep --optim.grad-clip > 0, or use float32/bfloat16 instead of float16")

    # ----------------------------------------------------------------------------------------------
    def _evaluate(self, step: int) -> dict[str, float]:
        max_new = self.cfg.eval.max_new_tokens or self.cfg.rollout.max_new_tokens
        with self.timer.phase(M.TIME_EVAL):
            e, r = self.cfg.eval, self.cfg.rollout
            result = evaluate(self.engine, self.task, self.tokenizer, self.eval_items, max_new, self.cfg.tracking.log_samples,
                              samples=e.samples, pass_k=e.pass_k, temperature=r.temperature, top_p=r.top_p,
                              seed=self.cfg.seed * 1_000_003 + 999_983 + step)
        result.metrics[M.TIME_EVAL] = self.timer.pop().get(M.TIME_EVAL, 0.0)
        accuracy = result.metrics[M.EVAL_ACCURACY]
        if self.state["initial_accuracy"] is None:
            self.state["initial_accuracy"] = accuracy
        best = self.state["best_accuracy"]
        self.state["best_accuracy"] = accuracy if best is None else max(best, accuracy)
        self.state["last_accuracy"] = accuracy
        self.store.tracker.log_dict(result.samples, f"samples/eval_step_{step:05d}.json")
        self.store.tracker.set_tags(item_tags(result.items_correct, self.eval_items, step))  # the latest one stays
        if step == 0:
            self.store.tracker.log_metrics(result.metrics, 0)
        return result.metrics


def train(cfg: RunConfig, resume: bool = False) -> RunResult:
    cfg.validate()  # before the run folder (which holds the lock) is touched
    with holding_run(cfg):  # one live writer per run folder, from before its MLflow run is looked up (run_lock)
        return Trainer(cfg, resume=resume).run()
