"""Proximity: how far one optimizer step moved the policy on the minibatch it was computed from.

Before the step a no-grad forward keeps, per response position, only the hidden state that enters the output
head (N x d, stopped before the logits), plus a copy of the head's parameters; after the step a second
no-grad forward gives the new hidden states. The full-vocabulary distributions before and after are then
formed for `chunk` positions at a time (never more than chunk x V logits), giving per position the exact
KL(pi_before || pi_after) and the log-probs of the taken token under both. Per-sequence sums are placed in
global B-vectors and summed over data-parallel ranks with the step context's reducer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from isopo_bench import metric_names as M
from isopo_bench.batch import TrainBatch, position_ids_for


class _Stop(Exception):
    pass


def head_inputs(model: nn.Module, mb: TrainBatch) -> torch.Tensor:
    """The output head's input (B, T, d) of a forward of `mb`, without computing any logits."""
    head = model.get_output_embeddings()
    seen: list[torch.Tensor] = []

    def pre_hook(module, args):
        seen.append(args[0])
        raise _Stop

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        model(input_ids=mb.input_ids_BT, attention_mask=mb.attention_mask_BT,
              position_ids=position_ids_for(mb.attention_mask_BT), use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError("diagnostics: the model's forward never reached its output head")
    return seen[0]


@dataclass
class ResponseStates:
    """One microbatch's response positions: hidden states h (N, d) predicting them, targets (N,), the
    sequence (row) of each (N,)."""

    hidden: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor

    @staticmethod
    def of(model: nn.Module, mb: TrainBatch) -> "ResponseStates":
        h_BTd = head_inputs(model, mb)
        b, t = mb.response_mask_BT.nonzero(as_tuple=True)  # t >= 1: position 0 is never a response token
        return ResponseStates(h_BTd[b, t - 1].detach(), mb.input_ids_BT[b, t], b)


def head_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.get_output_embeddings().named_parameters()}


def token_stats(head: nn.Module, before_params: dict[str, torch.Tensor], before: ResponseStates,
                after: ResponseStates, chunk: int, temperature: float = 1.0):
    """Per response position: KL(pi_before || pi_after) over the full vocabulary, logp_before(y), logp_after(y)."""
    kl, lp_b, lp_a = [], [], []
    for s in range(0, before.hidden.shape[0], chunk):
        sl = slice(s, s + chunk)
        logits_b = torch.func.functional_call(head, before_params, (before.hidden[sl],))
        logits_a = head(after.hidden[sl])
        logq_b = torch.log_softmax(logits_b.double() / temperature, dim=-1)
        logq_a = torch.log_softmax(logits_a.double() / temperature, dim=-1)
        kl.append((logq_b.exp() * (logq_b - logq_a)).sum(-1))
        y = before.targets[sl, None]
        lp_b.append(logq_b.gather(-1, y).squeeze(-1))
        lp_a.append(logq_a.gather(-1, y).squeeze(-1))
    cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.float64)  # noqa: E731
    return cat(kl), cat(lp_b), cat(lp_a)


@dataclass
class SequenceSums:
    """Global per-sequence sums (B,) over response tokens."""

    kl: torch.Tensor
    tokens: torch.Tensor
    dlogp: torch.Tensor
    abs_logratio: torch.Tensor

    @staticmethod
    def zeros(B: int) -> "SequenceSums":
        return SequenceSums(*(torch.zeros(B, dtype=torch.float64) for _ in range(4)))

    def add(self, offset: int, rows: torch.Tensor, kl, lp_b, lp_a) -> None:
        r = rows.cpu() + offset
        d = (lp_a - lp_b).cpu()
        self.kl.index_add_(0, r, kl.cpu())
        self.tokens.index_add_(0, r, torch.ones_like(d))
        self.dlogp.index_add_(0, r, d)
        self.abs_logratio.index_add_(0, r, d.abs())

    def reduced(self, reducer) -> "SequenceSums":
        stacked = reducer(torch.stack([self.kl, self.tokens, self.dlogp, self.abs_logratio]))
        return SequenceSums(*stacked.unbind(0))


def proximity_metrics(sums: SequenceSums, adv_B: torch.Tensor) -> dict[str, float]:
    adv = adv_B.double().cpu()
    n = float(sums.tokens.sum())
    has = sums.tokens > 0
    kl_tok = float(sums.kl.sum()) / max(n, 1.0)
    out = {
        M.DIAG_KL_TOK: kl_tok,
        M.DIAG_KL_TOK_MAX_SEQ: float((sums.kl[has] / sums.tokens[has]).max()) if bool(has.any()) else 0.0,
        M.DIAG_KL_SEQ: float(sums.kl.mean()),
        M.DIAG_LOGRATIO_ABS: float(sums.abs_logratio.sum()) / max(n, 1.0),
        M.DIAG_SURROGATE: float((adv * sums.dlogp).mean()),
    }
    for key, sel in ((M.DIAG_DLOGP_POS, adv > 0), (M.DIAG_DLOGP_NEG, adv < 0)):
        if bool(sel.any()):
            out[key] = float(sums.dlogp[sel].mean())
    if kl_tok > 0:
        out[M.DIAG_SURROGATE_PER_KL] = out[M.DIAG_SURROGATE] / kl_tok
    return out
