"""The layer-wise engine's algorithm base: everything a per-sequence method shares, so that the method
itself is its Settings, its `Needs` and one weight function.

A method declares the per-sequence statistics it needs (options.Needs) and supplies
`sequence_weights(layer) -> w_B`, a function of those statistics and the advantages. For every nn.Linear
(lm_head included) and every microbatch, the engine computes the statistics inside the backward pass, asks
for w and returns sum_i w_i G_i = (g * w_seq(t))^T a as the weight gradient, in one matmul (or a B-term sum
when the planner kept the G_i). The back-propagated loss is advantage-free, aggregate(-logp) with the run's
`loss_agg` and the optimizer batch's denominators, so G_i is sequence i's share of it. Parameters that are
not Linear weights get the rule of `options.other_params` (param_rules.py).

The LM head's override is a `HeadForward` (a chunked_logprobs.HeadRule): where the chunked head applies, the
head's statistics come from vocabulary chunks of its output gradient (`_head_weights`,
statistics.compute_chunked) and the chunked head forms sum_i w_i G_i itself, so no B x T x V tensor exists;
elsewhere it is the same layer-wise Linear as every other one.

Step-level state is the algorithm's own: EMA statistics (`ema`) and metric means (`metrics`), both
reduced across data-parallel ranks with `ctx.reducer` in `finalize_grads`, so W ranks == 1 process over
the same microbatches. Draws are seeded from (run seed, ctx.step, global microbatch index), never from a
private counter, so a resumed run repeats them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import ClassVar

import torch

from isopo_bench.aggregation import aggregate
from isopo_bench.algorithm_api import Algorithm, AlgorithmSetup, StepContext, no_reduction
from isopo_bench.batch import BatchTotals, TrainBatch
from isopo_bench.errors import ConfigError
from isopo_bench.layerwise import batched
from isopo_bench.layerwise import kernels as K
from isopo_bench.layerwise import statistics
from isopo_bench.layerwise.batched import LayerBatching
from isopo_bench.chunked_logprobs import HeadRule
from isopo_bench.layerwise.autograd_linear import linear_forward, overridden_forwards, transforms_now
from isopo_bench.layerwise.ema import EmaStats, MetricSums
from isopo_bench.layerwise.options import EngineOptions, Needs
from isopo_bench.layerwise.param_rules import ParameterMap
from isopo_bench.layerwise.planner import fits_budget, plan_layer
from isopo_bench.layerwise.session import MicrobatchSession, stats_dtype
from isopo_bench.layerwise.statistics import LayerGroup, LayerStats

log = logging.getLogger(__name__)


class LayerwiseAlgorithm(Algorithm):
    needs: ClassVar[Needs] = Needs()
    """The statistics `sequence_weights` reads (override as a property when they depend on settings)."""
    options: ClassVar[EngineOptions] = EngineOptions()
    """Numerics and parameter policy (override as a property to expose them as settings)."""
    metric_prefix: ClassVar[str] = "layerwise"
    """Metrics are `algo/{prefix}_...`, descriptive params `{prefix}/...`, profiler ranges `{prefix}/...`."""

    def __init__(self, setup: AlgorithmSetup):
        super().__init__(setup)
        self.ema = EmaStats(self.options.ema_decay, self.options.ema_cumulative)
        self.metrics = MetricSums()
        self._params: ParameterMap | None = None
        self._model_id: int | None = None
        self._head: torch.nn.Module | None = None
        self._batching: LayerBatching | None = None

    def sequence_weights(self, layer: LayerStats) -> torch.Tensor:
        """w_B: this layer's gradient is sum_i w_i G_i."""
        raise NotImplementedError

    group_weights = None
    """Optional, for methods whose weights depend on the layer NTK alone (`needs` = Needs(ntk=True)):
    `group_weights(group: LayerGroup) -> w_LB`, the weights of every Linear of one shape at once, equal
    to `sequence_weights` of each. With it, small layers are batched (batched.py)."""

    @classmethod
    def validate(cls, setup: AlgorithmSetup) -> None:
        if setup.kl_coef > 0:
            raise ConfigError("algorithm.kl_coef", f"`{setup.name}` has no KL penalty (its gradient would pass "
                              "through the per-layer reweighting)", "set it to 0")

    def attach(self, model: torch.nn.Module) -> dict[str, str]:
        opts = self.options
        self._params = ParameterMap.of(model, opts.other_params, opts.tied_embedding)
        self._model_id = id(model)
        get_head = getattr(model, "get_output_embeddings", None)
        self._head = get_head() if callable(get_head) else None
        batchable = self.group_weights is not None and self.needs == Needs(ntk=True) and opts.mode == "fast"
        # The LM head stays per layer: under the chunked head its gradient is formed chunk by chunk.
        self._batching = LayerBatching(self._params.linears, {id(self._head)}) if batchable else None
        desc = {f"{self.metric_prefix}/mode": opts.mode} | self._params.describe(self.metric_prefix)
        if self._params.frozen_names:
            log.info("%s other_params=freeze: no gradient for %s", self.setup.name, _names(self._params.frozen_names))
        return desc

    def loss(self, logp_BT: torch.Tensor, mb: TrainBatch, totals: BatchTotals):
        # Advantage-free: the advantages enter through the per-layer weights inside the backward pass.
        return aggregate(-logp_BT, mb, self.setup.loss_agg, totals), {}

    def backward_context(self, model: torch.nn.Module, mb: TrainBatch, ctx: StepContext, index: int):
        if self._params is None or self._model_id != id(model):
            self.attach(model)
        return self._context(mb, ctx, index)

    @contextlib.contextmanager
    def _context(self, mb: TrainBatch, ctx: StepContext, index: int):
        session = MicrobatchSession(mb.attention_mask_BT, mb.advantages_B, seed=self.setup.seed, step=ctx.step,
                                    index=index, options=self.options)
        overrides = {}
        for i, (name, module) in enumerate(self._params.linears.items()):
            forward = linear_forward(module, functools.partial(self._weight_grad, session, name, i))
            if module is self._head:  # the chunked LM head (isopo_bench.chunked_logprobs) reads its rule
                forward = HeadForward(module, forward, functools.partial(self._head_weights, session, name, i),
                                      session, functools.partial(self._head_keeps_grads, session))
            overrides[module] = forward
        overrides |= self._params.other_overrides(session.adv_B, session.shape[1])
        batching = self._batching_for(mb, ctx)
        session.batching = batching
        try:
            with overridden_forwards(overrides):
                yield
            if batching is not None:
                self._finish_batched(session, batching)
        finally:
            if batching is not None:
                batching.clear()
            session.close()

    def _batching_for(self, mb: TrainBatch, ctx: StepContext) -> LayerBatching | None:
        """Small-layer batching for this microbatch, or None (batched.py: one process only, within the
        memory bound)."""
        batching = self._batching
        if batching is None or self.options.fast_plan == "ghost" or not _one_process(ctx):
            return None
        B = mb.attention_mask_BT.shape[0]
        dt = self._dtype_of_stats()
        if not batching.fits(B, dt):
            return None
        batching.begin(B, dt, mb.attention_mask_BT.device)
        return batching

    def _dtype_of_stats(self) -> torch.dtype:
        weight = next(iter(self._params.linears.values())).weight
        return stats_dtype(weight.dtype)

    def _finish_batched(self, session: MicrobatchSession, batching: LayerBatching) -> None:
        """The batched layers' K, weights and sum_i w_i G_i, added to .grad (batched.finish)."""
        prefix = self.metric_prefix

        def weights_of(group, K_LBB, rows):
            layers = LayerGroup([group.names[k] for k in rows], session.adv_in(K_LBB.dtype), self.ema,
                                self.metrics, K_LBB)
            return self.group_weights(layers)

        pending = batching.pending()
        self.metrics.add(f"algo/{prefix}_batched_layers", float(sum(sum(g.filled) for g in pending)))
        with torch.no_grad(), K.stage(f"{prefix}/batched"):
            batched.finish(pending, weights_of)

    def _check_input(self, session: MicrobatchSession, name: str, x: torch.Tensor) -> None:
        if not session.open:
            raise RuntimeError(f"{self.setup.name}: backward through `{name}` ran outside its backward_context")
        B, T = session.shape
        if x.dim() != 3 or tuple(x.shape[:2]) != (B, T):
            raise RuntimeError(
                f"{self.setup.name}: `{name}` saw input {tuple(x.shape)}, expected (B={B}, T={T}, d): only padded "
                "(batch, time, features) inputs of the microbatch are supported (no packing)"
            )

    def _head_keeps_grads(self, session: MicrobatchSession, x: torch.Tensor, V: int) -> bool:
        """Whether `_head_weights` will keep the head's per-sequence gradients (and form its weight
        gradient itself) for this input."""
        B, T = session.shape
        dt = stats_dtype(x.dtype)
        n = self.needs
        plan = plan_layer(B, T, x.shape[-1], V, dt, n.ntk, self.options)
        forms_G = n.euclid_norms or n.ntk or n.ntk_row or self.options.mode == "faithful"  # compute_chunked's with_G
        # Keeping every chunk's G_i makes the head's weight gradient a B-term sum here and spares the chunked
        # head its second pass (faithful plans ignore the budget; the keep does not).
        return plan == "materialise" and forms_G and fits_budget(B, x.shape[-1], V, dt, self.options)

    def _head_weights(self, session: MicrobatchSession, name: str, index: int, x: torch.Tensor,
                      g_chunks) -> torch.Tensor:
        """w_B of the LM head under the chunked head: the same statistics as `_weight_grad`'s, summed over
        vocabulary chunks of the output gradient (statistics.compute_chunked); the head then forms
        sum_i w_i G_i itself, chunk by chunk."""
        self._check_input(session, name, x)
        B, T = session.shape
        dt = stats_dtype(x.dtype)
        _, a = session.masked_input(x, dt)
        V, d = self._head.out_features, x.shape[-1]
        plan = plan_layer(B, T, d, V, dt, self.needs.ntk, self.options)
        layer = LayerStats(name, index, session.adv_in(dt), self.options.mode == "faithful", self.ema, self.metrics)
        kept: list[torch.Tensor] | None = [] if self._head_keeps_grads(session, x, V) else None
        materialised = statistics.compute_chunked(layer, session, self.needs, plan, x, a, g_chunks, V,
                                                  self.metric_prefix, keep=kept)
        w_B = self.sequence_weights(layer)
        self.metrics.add(f"algo/{self.metric_prefix}_materialised_frac", float(materialised))
        if kept:
            with K.stage(f"{self.metric_prefix}/combine"):
                session.kept_head_grad = torch.cat([K.combine(w_B, a, None, G) for G in kept])
        return w_B

    def _weight_grad(self, session: MicrobatchSession, name: str, index: int, x: torch.Tensor,
                     grad_out: torch.Tensor) -> torch.Tensor | None:
        prefix = self.metric_prefix
        self._check_input(session, name, x)
        B, T = session.shape
        dt = stats_dtype(x.dtype)
        a_model, a = session.masked_input(x, dt)
        g = grad_out if grad_out.dtype == dt else grad_out.to(dt)
        needs = self.needs
        plan = plan_layer(B, T, x.shape[-1], grad_out.shape[-1], dt, needs.ntk, self.options)
        if session.batching is not None and plan == "materialise":
            slot = session.batching.slot(self._params.linears[name], B, dt)
            if slot is not None:  # K, w and the gradient come after the backward (batched.py)
                K.seq_grads(a, g, out=slot)
                self.metrics.add(f"algo/{prefix}_materialised_frac", 1.0)
                return None
        layer = LayerStats(name, index, session.adv_in(dt), self.options.mode == "faithful", self.ema, self.metrics)
        G = statistics.compute(layer, session, needs, plan, x, a, g, prefix)
        w_B = self.sequence_weights(layer)
        self.metrics.add(f"algo/{prefix}_materialised_frac", float(G is not None))
        with K.stage(f"{prefix}/combine"):
            if G is not None:
                return K.combine(w_B, a, g, G)
            return K.combine(w_B, a_model, grad_out, None)

    def finalize_grads(self, model: torch.nn.Module, ctx: StepContext) -> dict[str, float]:
        self.ema.end_step(ctx.reducer)
        metrics = self.metrics.pop(ctx.reducer)
        metrics[f"algo/{self.metric_prefix}_microbatches"] = float(len(ctx.microbatches))
        if self._params is not None:
            metrics[f"algo/{self.metric_prefix}_linear_layers"] = float(len(self._params.linears))
            for p in self._params.frozen_params:
                p.grad = None
        return metrics

    def state_dict(self) -> dict:
        return {"stats": self.ema.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state.get("stats", {}))


class HeadForward(HeadRule):
    """The LM head's override: the layer-wise Linear forward on the full path, and the per-sequence
    weights of the chunked head's backward (isopo_bench.chunked_logprobs.HeadRule)."""

    def __init__(self, module: torch.nn.Module, forward, weights, session: MicrobatchSession, keeps):
        self.module, self._forward, self._weights, self._session = module, forward, weights, session
        self._keeps = keeps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    def active(self) -> bool:
        return transforms_now(self.module) and self.module.weight.requires_grad

    def sequence_weights(self, hidden_BTd: torch.Tensor, g_chunks) -> torch.Tensor:
        return self._weights(hidden_BTd, g_chunks)

    def kept_weight_grad(self) -> torch.Tensor | None:
        grad, self._session.kept_head_grad = self._session.kept_head_grad, None
        return grad

    def will_keep_weight_grad(self, hidden_BTd: torch.Tensor, vocab: int) -> bool:
        return self._keeps(hidden_BTd, vocab)


def _one_process(ctx: StepContext) -> bool:
    """No data parallelism: gradients need not exist before the backward ends. (Under DDP/FSDP they are
    all-reduced during it, whatever reducer the step context carries.)"""
    if ctx.reducer is not no_reduction:
        return False
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1)


def _names(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
