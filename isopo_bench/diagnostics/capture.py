"""Per-sequence score capture for the alignment diagnostic, on the layer-wise engine's capture path.

One extra backward of the advantage-free objective J = sum_i log pi(y_i) (sum over each sequence's response
tokens) through the engine's custom autograd Linear (isopo_bench.layerwise.autograd_linear) records, per
Linear, the masked inputs a_t and the output gradients g_t of every position of the microbatch (prompt
positions included), so sequence i's layer score is U_{l,i} = sum_{t in i} g_t a_t^T. Parameters that are not
Linear weights are captured where they are cheap:
- RMS norm weights: the per-sequence gradient sum_{t in i} gy_t * h_t (h = the norm's output at weight 1);
- the input embedding: the gradient gy_t of its output (a lookup row per token);
- Linear biases: sum_{t in i} g_t.
A tied lm_head/embedding weight is the sum of its head and lookup parts (alignment.py adds them).

The backward is `torch.autograd.grad` with the embedding output (cut from the graph) as its only input, so
no `.grad` is written, no AccumulateGrad node or data-parallel hook runs, and no algorithm hook or EMA is
involved. The forward runs in evaluation mode (no dropout) under `torch.random.fork_rng`, so the training
RNG stream is untouched.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from isopo_bench.batch import TrainBatch
from isopo_bench.errors import ConfigError
from isopo_bench.layerwise.autograd_linear import linear_forward, overridden_forwards
from isopo_bench.layerwise.param_rules import RMS_NORMS, ParameterMap
from isopo_bench.layerwise.session import stats_dtype


def _grad_enabled(module: nn.Module) -> bool:
    return torch.is_grad_enabled()


class _Tap(torch.autograd.Function):
    """Identity whose backward hands the incoming gradient to a callback."""

    @staticmethod
    def forward(ctx, y, callback):
        ctx.callback = callback
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        ctx.callback(grad)
        return grad, None


@dataclass
class MicrobatchScores:
    """What one microbatch's capture backward recorded (statistics dtype; padding rows of a are zero)."""

    linear: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """Linear name -> (a_BTI, g_BTO)."""
    norm: dict[str, torch.Tensor] = field(default_factory=dict)
    """Norm module name -> per-sequence weight gradient (B, D)."""
    embedding: tuple[torch.Tensor, torch.Tensor] | None = None
    """(ids_BT, gy_BTD) of the input embedding."""


@dataclass(frozen=True)
class Use:
    kind: str
    """`linear_w`, `linear_b`, `norm` or `embedding`."""
    module: str


class ScoreCapture:
    """The capture plan of one model: which module records what, and which parameter each record is a
    part of (`uses`, keyed by parameter name as named_parameters() gives it, tied weights once)."""

    def __init__(self, model: nn.Module):
        pmap = ParameterMap.of(model, other_params="reference")
        self.linears = {n: m for n, m in pmap.linears.items() if m.weight.requires_grad}
        self.embedding = model.get_input_embeddings()
        names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
        self.uses: dict[str, list[Use]] = {}
        self.norms: dict[str, nn.Module] = {}
        modules = dict(model.named_modules())
        for name, module in self.linears.items():
            self._use(names, module.weight, Use("linear_w", name))
            if module.bias is not None and module.bias.requires_grad:
                self._use(names, module.bias, Use("linear_b", name))
        for name, module in pmap.others.items():
            for pname, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                if module is self.embedding and pname == "weight":
                    self._use(names, p, Use("embedding", name))
                elif type(module).__name__ in RMS_NORMS and pname == "weight":
                    self.norms[name] = module
                    self._use(names, p, Use("norm", name))
                elif id(p) not in {id(m.weight) for m in self.linears.values()}:
                    raise ConfigError("diagnostics.alignment_every",
                                      f"the alignment diagnostic has no per-sequence capture for `{name}.{pname}` "
                                      f"({type(module).__name__}); it covers Linear layers, RMS norms and the input "
                                      "embedding", "set it to 0 (proximity diagnostics still run)")
        self.embedding_name = next((n for n, m in modules.items() if m is self.embedding), None)
        self.params = {n: p for n, p in model.named_parameters() if n in self.uses}

    def _use(self, names: dict[int, str], p: torch.Tensor, use: Use) -> None:
        self.uses.setdefault(names[id(p)], []).append(use)

    def run(self, model: nn.Module, mb: TrainBatch, logprobs: Callable) -> MicrobatchScores:
        """One forward and capture backward of J = sum of the microbatch's response log-probs."""
        out = MicrobatchScores()
        mask_BT = mb.attention_mask_BT.bool()
        cut: list[torch.Tensor] = []

        def linear_recorder(name):
            def weight_grad(x, grad_out):
                dt = stats_dtype(x.dtype)
                a = (x * mask_BT.unsqueeze(-1).to(x.dtype)).to(dt)
                out.linear[name] = (a.detach(), grad_out.to(dt).detach())
                return torch.zeros((), dtype=grad_out.dtype, device=grad_out.device).expand(
                    self.linears[name].weight.shape)
            return weight_grad

        def norm_forward(name, module):
            def forward(x):
                y = type(module).forward(module, x)
                if not torch.is_grad_enabled():
                    return y
                with torch.no_grad():
                    h = _unit_weight_output(module, x.detach())

                def record(gy, h=h):
                    dt = stats_dtype(gy.dtype)
                    prod = (gy.to(dt) * h.to(dt))
                    out.norm[name] = prod.reshape(prod.shape[0], -1, prod.shape[-1]).sum(1)
                return _Tap.apply(y, record)
            return forward

        def embedding_forward(module):
            def forward(ids):
                y = type(module).forward(module, ids).detach().requires_grad_(True)
                cut.append(y)
                out.embedding = (ids, None)
                return y
            return forward

        overrides = {m: linear_forward(m, linear_recorder(n), when=_grad_enabled) for n, m in self.linears.items()}
        overrides |= {m: norm_forward(n, m) for n, m in self.norms.items()}
        overrides[self.embedding] = embedding_forward(self.embedding)
        with _diagnostic_mode(model), overridden_forwards(overrides), torch.enable_grad():
            logp_BT = logprobs(model, mb)
            objective = (logp_BT * mb.response_mask_BT.to(logp_BT.dtype)).sum()
            (gy,) = torch.autograd.grad(objective, cut[:1])
        if out.embedding is not None:
            ids = out.embedding[0]
            gy = gy.to(stats_dtype(gy.dtype))
            pad = getattr(self.embedding, "padding_idx", None)
            if pad is not None:  # nn.Embedding gives its padding row no gradient
                gy = gy * (ids != pad).unsqueeze(-1).to(gy.dtype)
            out.embedding = (ids, gy)
        return out


def _unit_weight_output(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The norm's forward with its weight replaced by ones: d y / d weight per element, exactly as the
    module computes it (whatever precision its own forward uses)."""
    weight = module._parameters["weight"]
    module._parameters["weight"] = torch.ones_like(weight)
    try:
        return type(module).forward(module, x)
    finally:
        module._parameters["weight"] = weight


@contextlib.contextmanager
def _diagnostic_mode(model: nn.Module):
    """Evaluation mode (no dropout) with the RNG state restored afterwards; every module's training flag
    is restored exactly."""
    flags = [(m, m.training) for m in model.modules()]
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        model.eval()
        try:
            yield
        finally:
            for m, flag in flags:
                m.training = flag


diagnostic_mode = _diagnostic_mode
