"""Which parameter gets which rule under the layer-wise engine, keyed by module type, and the per-token
rules for parameters that are not Linear weights (ALGORITHMS.md 5.4).

Linear weights (lm_head included) get the method's per-sequence reweighting (autograd_linear.py). The
back-propagated loss has no advantages, so without a rule a norm weight or an embedding receives the
advantage-free gradient of -logp (the ISOPO reference's behaviour, `other_params=reference`). The `reinforce`
rule gives it sum_t A_seq(t) * (token t's contribution) instead. That is exactly the REINFORCE gradient
because sequences do not interact: the REINFORCE output gradient at token t is A_seq(t) g_t. It is applied
per module type with the trick y = y_input_path + w_t * (y_param_path - sg(y_param_path)): the value is
y bit for bit, the input gradient is the ordinary one, and the parameter gradient is reweighted by w_t per
token. Token weight 0 (`freeze`, or the lookup use of a tied embedding under `tied_embedding=reference`)
detaches the parameter instead. Modules owning parameters with no rule raise under `reinforce`.
To cover a new module type, add its forward factory to `rule_factory`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from isopo_bench.layerwise.autograd_linear import check_plain_linear, transforms_now
from isopo_bench.layerwise.kernels import cast_to

OTHER_PARAMS = ("reinforce", "freeze", "reference")
TIED_EMBEDDING = ("split", "reference")

RMS_NORMS = frozenset({"Qwen3RMSNorm", "Qwen2RMSNorm", "LlamaRMSNorm", "MistralRMSNorm"})
"""Norm classes computing weight * x / rms(x) (in float32) with no offset; e.g. Gemma's (1 + w) is not one."""


def _rms_normalised(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Mirrors the HF forward exactly (float32 statistics, cast back) so the forward value is unchanged.
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
    return h.to(x.dtype)


def _check_tokens(w_BT: torch.Tensor, y: torch.Tensor) -> None:
    if tuple(y.shape[:2]) != tuple(w_BT.shape):
        B, T = w_BT.shape
        raise RuntimeError(f"other_params rule expected (B={B}, T={T}, ...) activations, got {tuple(y.shape)}")


def _per_token(w_BT: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    _check_tokens(w_BT, y)
    B, T = w_BT.shape
    return cast_to(w_BT, y.dtype).view(B, T, *([1] * (y.dim() - 2)))


class TokenWeightedScale(torch.autograd.Function):
    """y = weight * h with the weight's gradient reweighted per token: sum_t w_t (dL/dy_t * h_t), summed to
    the weight's shape; h's gradient is the ordinary dL/dy * weight. The same values, bit for bit, as
    autograd's through y + w_t (y_param - sg(y_param)), in one saved product instead of four extra
    elementwise ops and their backward (an RMSNorm per sublayer makes that count on small models)."""

    @staticmethod
    def forward(ctx, h, weight, w_tok):
        ctx.save_for_backward(h, weight, w_tok)
        return weight * h

    @staticmethod
    def backward(ctx, grad_y):
        h, weight, w_tok = ctx.saved_tensors
        grad_h = cast_to(grad_y * weight, h.dtype) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = cast_to(((grad_y * w_tok) * h).sum_to_size(weight.shape), weight.dtype)
        return grad_h, grad_w, None


def rms_norm_forward(module: nn.Module, w_BT: torch.Tensor | None) -> Callable:
    """w_BT None: parameter detached (no gradient); else per-token weights of the parameter gradient."""
    shaped: dict[tuple, torch.Tensor] = {}
    """w_BT viewed and cast for an activation's rank and dtype, made once per microbatch (every norm of a
    model reads one of two or three; a tiny op per norm call counts on a small model)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not transforms_now(module):
            return type(module).forward(module, x)
        h = _rms_normalised(module, x)
        if w_BT is None:
            return module.weight.detach() * h
        _check_tokens(w_BT, h)
        key = (h.dim(), h.dtype, module.weight.dtype)
        w_tok = shaped.get(key)
        if w_tok is None:
            w_tok = shaped[key] = cast_to(_per_token(w_BT, h), torch.promote_types(module.weight.dtype, h.dtype))
        return TokenWeightedScale.apply(h, module.weight, w_tok)

    return forward


def embedding_forward(module: nn.Embedding, w_BT: torch.Tensor | None) -> Callable:
    def forward(ids: torch.Tensor) -> torch.Tensor:
        y = type(module).forward(module, ids)
        if not transforms_now(module):
            return y
        y_det = y.detach()
        if w_BT is None:
            return y_det
        return y_det + _per_token(w_BT, y) * (y - y_det)

    return forward


def rule_factory(module: nn.Module) -> Callable | None:
    if isinstance(module, nn.Embedding):
        return embedding_forward
    if type(module).__name__ in RMS_NORMS:
        return rms_norm_forward
    return None


def _patterns(names: list[str]) -> str:
    """Compact, readable list: layer indices collapsed to `*`."""
    seen = dict.fromkeys(re.sub(r"\.\d+\.", ".*.", n) for n in names)
    return ", ".join(seen) or "(none)"


@dataclass
class ParameterMap:
    """The rule of every trainable parameter of one model, decided once at attach time.
    `other_params` / `tied_embedding`: the method's settings of those names (see OTHER_PARAMS, TIED_EMBEDDING)."""

    linears: dict[str, nn.Linear] = field(default_factory=dict)
    others: dict[str, nn.Module] = field(default_factory=dict)
    """Modules owning trainable non-Linear parameters, by module name."""
    tied: set[str] = field(default_factory=set)
    """Names of `others` whose weight is also a Linear weight (tied embeddings)."""
    frozen_params: list[torch.nn.Parameter] = field(default_factory=list)
    frozen_names: list[str] = field(default_factory=list)
    other_params: str = "reinforce"
    tied_embedding: str = "split"

    @staticmethod
    def of(model: nn.Module, other_params: str = "reinforce", tied_embedding: str = "split") -> "ParameterMap":
        pol = ParameterMap(other_params=other_params, tied_embedding=tied_embedding)
        for name, module in model.named_modules():
            own = [p for p in module._parameters.values() if p is not None and p.requires_grad]
            if isinstance(module, nn.Linear):
                check_plain_linear(name, module)
                pol.linears[name] = module
            elif own:
                pol.others[name] = module
        linear_weights = {id(m.weight) for m in pol.linears.values()}
        for name, module in pol.others.items():
            if any(id(p) in linear_weights for p in module._parameters.values()):
                pol.tied.add(name)
            elif other_params == "reinforce" and rule_factory(module) is None:
                raise TypeError(
                    f"other_params=reinforce has no per-token rule for `{name}` ({type(module).__name__}); "
                    "use algorithm.other_params=freeze or =reference, or add a rule in isopo_bench/layerwise/param_rules.py"
                )
        if other_params == "freeze":
            for name, module in pol.others.items():
                for pname, p in module.named_parameters(recurse=False):
                    if id(p) not in linear_weights:
                        pol.frozen_params.append(p)
                        pol.frozen_names.append(f"{name}.{pname}" if name else pname)
        return pol

    def token_weight_mode(self, name: str) -> str:
        """`advantage`, `zero` or `raw` (leave the module alone) for the lookup/norm use of `name`."""
        if name in self.tied and self.tied_embedding == "reference":
            return "zero"
        return {"reinforce": "advantage", "freeze": "zero", "reference": "raw"}[self.other_params]

    def other_overrides(self, adv_B: torch.Tensor, T: int) -> dict[nn.Module, Callable]:
        adv_BT = adv_B[:, None].expand(-1, T)
        overrides = {}
        for name, module in self.others.items():
            mode = self.token_weight_mode(name)
            factory = rule_factory(module)
            if mode == "raw" or factory is None:
                continue  # raw gradient; under `freeze` an unknown module's grads are dropped in finalize
            overrides[module] = factory(module, adv_BT if mode == "advantage" else None)
        return overrides

    def describe(self, prefix: str) -> dict[str, str]:
        """Descriptive run params, keyed `{prefix}/...`."""
        biases = [f"{n}.bias" for n, m in self.linears.items() if m.bias is not None]
        others = [f"{n}.{p}" if n else p for n, m in self.others.items() for p, _ in m.named_parameters(recurse=False)]
        desc = {
            "linear_weights": _patterns([f"{n}.weight" for n in self.linears]),
            "linear_biases_zeroed": _patterns(biases),
            "other_params_rule": self.other_params,
            "other_params": _patterns(others),
            "frozen_params": _patterns(self.frozen_names),
        }
        if self.tied:
            desc["tied_embedding"] = f"{_patterns(sorted(self.tied))}: {self.tied_embedding}"
        return {f"{prefix}/{k}": v for k, v in desc.items()}
