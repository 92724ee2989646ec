"""The trainer-facing side of the diagnostics: two calls around each optimizer step.

    grads = step_gradients(...)                      # the algorithm's gradient in .grad
    pending = monitor.prepare(model, ctx, work)      # before clipping: reads .grad, keeps what `finish` needs
    clip, optimizer.step()
    metrics = monitor.finish(model, pending)         # after the step: `diag/...` metrics

Nothing here writes `.grad`, a parameter, an algorithm's state or the RNG streams, so a run's trajectory is
the same with diagnostics on or off (tests/test_diagnostics.py checks bit-identity through the trainer).
Every algorithm is measured the same way: only the batch, the gradient in `.grad` and the parameters
before and after are read.
"""

from __future__ import annotations

import logging

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from isopo_bench import metric_names as M
from isopo_bench.algorithm_api import StepContext
from isopo_bench.diagnostics.alignment import aggregation_weights, alignment_metrics, project
from isopo_bench.diagnostics.capture import MicrobatchScores, ScoreCapture, diagnostic_mode
from isopo_bench.diagnostics.proximity import (
    ResponseStates, SequenceSums, head_params, proximity_metrics, token_stats,
)
from isopo_bench.diagnostics.settings import DiagnosticsConfig
from isopo_bench.errors import ConfigError
from isopo_bench.step_driver import MicrobatchWork


log = logging.getLogger(__name__)

@dataclass
class Pending:
    ctx: StepContext
    work: list[tuple[int, object]]
    """(global microbatch index, microbatch on the device) of this rank."""
    states: dict[int, ResponseStates] = field(default_factory=dict)
    head: dict[str, torch.Tensor] | None = None
    scores: list[tuple[int, MicrobatchScores]] = field(default_factory=list)
    params_before: dict[str, torch.Tensor] | None = None
    grad_ascent: dict[str, torch.Tensor] | None = None


class StepDiagnostics:
    def __init__(self, cfg: DiagnosticsConfig, model: nn.Module, loss_agg: str, temperature: float = 1.0):
        self.cfg, self.loss_agg, self.temperature = cfg, loss_agg, temperature
        self.capture = ScoreCapture(model) if cfg.alignment_every > 0 else None

    @staticmethod
    def active(cfg: DiagnosticsConfig, sharded: bool) -> bool:
        """Whether the diagnostics run: enabled, and not on FSDP2 shards (skipped there, said in the log)."""
        if cfg.enabled and sharded:
            log.warning("per-step diagnostics skipped: under parallel.mode=fsdp2 a rank holds parameter shards "
                        "only (use parallel.mode=ddp to measure them)")
        return cfg.enabled and not sharded

    @staticmethod
    def validate(cfg: DiagnosticsConfig, track: str = "text") -> None:
        if not cfg.enabled:
            return
        if track != "text":
            raise ConfigError("diagnostics.proximity_every",
                              f"the per-step diagnostics measure token distributions of a language model; the "
                              f"`{track}` track has none", "set diagnostics.proximity_every=0 and "
                              "diagnostics.alignment_every=0 there")
        for name in ("proximity_every", "alignment_every"):
            if getattr(cfg, name) < 0:
                raise ConfigError(f"diagnostics.{name}", "must be >= 0", "0 turns it off")
        if cfg.kl_chunk < 1 or cfg.budget_mb < 1:
            raise ConfigError("diagnostics.kl_chunk", "kl_chunk and budget_mb must be >= 1", "use the defaults")
        if any(not r > 0 for r in cfg.rhos):
            raise ConfigError("diagnostics.rhos", f"every damping level must be > 0, got {cfg.rhos}", "use 0.01,1")

    def prepare(self, model: nn.Module, ctx: StepContext, work: Sequence[MicrobatchWork]) -> Pending | None:
        prox = self.cfg.due(self.cfg.proximity_every, ctx.step)
        align = self.capture is not None and self.cfg.due(self.cfg.alignment_every, ctx.step)
        if not (prox or align):
            return None
        pending = Pending(ctx, [(w.index, w.mb) for w in work])
        if prox:
            pending.head = head_params(model)
            with diagnostic_mode(model), torch.no_grad():
                pending.states = {i: ResponseStates.of(model, mb) for i, mb in pending.work}
        if align:
            pending.grad_ascent = {n: torch.zeros_like(p) if p.grad is None else -p.grad.detach().clone()
                                   for n, p in self.capture.params.items()}
            pending.params_before = {n: p.detach().clone() for n, p in self.capture.params.items()}
            pending.scores = [(i, self.capture.run(model, mb, ctx.logprobs)) for i, mb in pending.work]
        return pending

    def finish(self, model: nn.Module, pending: Pending | None) -> dict[str, float]:
        if pending is None:
            return {}
        ctx = pending.ctx
        sizes = {i: mb.size for i, mb in enumerate(ctx.microbatches)}
        adv_B = torch.cat([mb.advantages_B for mb in ctx.microbatches])
        out: dict[str, float] = {}
        if pending.states:
            out |= self._proximity(model, pending, sizes, adv_B)
        if pending.params_before is not None:
            update = {n: p.detach() - pending.params_before[n] for n, p in self.capture.params.items()}
            whole, layers = project(self.capture, pending.scores, sizes,
                                    {"grad": pending.grad_ascent, "update": update}, ctx.reducer, self.cfg.budget_mb)
            w = aggregation_weights(ctx.microbatches, self.loss_agg, ctx.totals) * adv_B.double().cpu()
            out |= alignment_metrics(whole, layers, w, self.cfg.rhos)
        return out

    def _proximity(self, model, pending: Pending, sizes: dict[int, int], adv_B) -> dict[str, float]:
        offsets = _offsets(sizes)
        sums = SequenceSums.zeros(sum(sizes.values()))
        head = model.get_output_embeddings()
        with diagnostic_mode(model), torch.no_grad():
            for i, mb in pending.work:
                after = ResponseStates.of(model, mb)
                before = pending.states[i]
                kl, lp_b, lp_a = token_stats(head, pending.head, before, after, self.cfg.kl_chunk, self.temperature)
                sums.add(offsets[i], before.rows, kl, lp_b, lp_a)
        return proximity_metrics(sums.reduced(pending.ctx.reducer), adv_B)


def _offsets(sizes: dict[int, int]) -> dict[int, int]:
    out, acc = {}, 0
    for i in sorted(sizes):
        out[i] = acc
        acc += sizes[i]
    return out


__all__ = ["DiagnosticsConfig", "StepDiagnostics", "M"]
