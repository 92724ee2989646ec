"""Per-token log-probs and entropy without the B x T x V logits: the LM head applied in chunks of response
positions only, in forward and backward (a custom autograd Function that recomputes each chunk's logits in
its backward), so at most one chunk x V slice of logits (and its softmax) exists at a time.

Values: the same operations per row as the full path (`batch.sequence_logprobs` before this module):
logits = lm_head(h) in the model's dtype, upcast to float32, divided by the temperature (1: no division),
logp = logits[target] - logsumexp(logits), entropy = logsumexp - sum softmax * logits. Positions that are not
response tokens get logp 0 and entropy 0 (every consumer masks them: losses, KL, mismatch, entropy metric).
The gradient is the exact one, (onehot - softmax) * dlogp / temperature per row, formed in float32 and cast to
the model dtype for the two products, as autograd does for the upcast; the LM head's weight gradient is
accumulated over chunks in float32 (a bfloat16 running sum would lose bits autograd's one matmul keeps).

Per-sequence weight-gradient rules (the layer-wise engine: ISOPO, npg_rank1, seq-norm): an LM head whose
instance `forward` is a `HeadRule` also takes the chunked path. Its backward then runs over vocabulary
chunks instead of rows: pass 1 hands the rule d loss / d logits on columns [v, v + c) of every position
(`vocab_chunk_grads`, recomputed from h, W and the forward's logsumexp), from which it forms the head's
per-sequence statistics (each one a sum over output rows) and returns the per-sequence weights w_B, while the
ordinary input gradient is accumulated from the same chunks; pass 2 writes rows [v, v + c) of the weight
gradient sum_t w_seq(t) g_t h_t^T from the same chunks, kept from pass 1 when all N x V of them fit
`KEEP_CHUNKS_BUDGET_MB` and recomputed otherwise (same bits either way). A rule that kept its per-sequence
gradients G_i (B x V x d within its memory budget; interacting ISOPO at moderate vocabularies) returns
sum_i w_i G_i itself (`kept_weight_grad`) and pass 2 does not run. Beyond those budgeted keeps, at most one
N x c (and B x T x c) slice of logits exists at a time; the price is one more head matmul than the full path
per pass that recomputes (logits).

Where it applies (`applies`): a plain HF causal LM whose output embedding is an nn.Linear with no instance
`forward` override other than a HeadRule, no module hooks on the head or the model (their
owner expects them to run: FSDP2's root unshard, user hooks), parameters that are not DTensors and no logit soft-capping, called
directly (not through a DDP / FSDP wrapper, whose forward must run). `set_mode("full")` or
ISOPO_LOGPROBS=full forces the full path (the memory benchmark's "before").
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

CHUNK_BUDGET_MB = 64
"""Float32 logits per chunk: rows = max(1, budget / (4 V)) (~110 rows at V = 151,936)."""
KEEP_CHUNKS_BUDGET_MB = 256
"""A rule's pass 1 keeps its N x V output-gradient chunks for pass 2 (no third head product) when they take
at most this much (float32): at moderate vocabularies and batches; never at the paper's (N x 151,936)."""
_MODE = {"mode": os.environ.get("ISOPO_LOGPROBS", "auto")}


def set_mode(mode: str) -> None:
    """`auto` (chunked where it applies), `chunked` (raise where it does not) or `full`."""
    if mode not in ("auto", "chunked", "full"):
        raise ValueError(f"logprobs mode must be auto, chunked or full, got {mode!r}")
    _MODE["mode"] = mode


@contextlib.contextmanager
def mode(name: str):
    old = _MODE["mode"]
    set_mode(name)
    try:
        yield
    finally:
        _MODE["mode"] = old


def _parts(model: torch.nn.Module):
    """(decoder, lm_head) of a plain HF causal LM, else None."""
    get_out = getattr(model, "get_output_embeddings", None)
    prefix = getattr(model, "base_model_prefix", None)
    decoder = getattr(model, prefix, None) if prefix else None
    head = get_out() if callable(get_out) else None
    if decoder is None or not isinstance(head, torch.nn.Linear) or type(head) is not torch.nn.Linear:
        return None
    return decoder, head


class HeadRule:
    """An LM head forward override that also serves the chunked path (the layer-wise engine's). Calling it is
    the head's full-path forward; `active()` says whether its rule acts in this forward (training, grad
    enabled); `sequence_weights(hidden_BTd, g_chunks)` returns w_B from the head's input (B, T, d) and a
    re-iterable source of output-gradient grids (B, T, c) over vocabulary chunks (zero off the positions
    that predict a response token), and the head's weight gradient becomes sum_i w_i G_i."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def active(self) -> bool:
        raise NotImplementedError

    def sequence_weights(self, hidden_BTd: torch.Tensor,
                         g_chunks: Callable[[], Iterator[torch.Tensor]]) -> torch.Tensor:
        raise NotImplementedError

    def kept_weight_grad(self) -> torch.Tensor | None:
        """sum_i w_i G_i (V, d) when the rule kept the head's per-sequence gradients while it formed its
        statistics (then the backward's second pass over the vocabulary does not run), else None."""
        return None

    def will_keep_weight_grad(self, hidden_BTd: torch.Tensor, vocab: int) -> bool:
        """Whether `kept_weight_grad` will return the gradient for this input (then pass 1 need not keep
        its output-gradient chunks for pass 2)."""
        return False


def _head_rule(head: torch.nn.Module) -> HeadRule | None:
    rule = head.__dict__.get("forward")
    return rule if isinstance(rule, HeadRule) else None


def applies(model: torch.nn.Module) -> bool:
    m = _MODE["mode"]
    if m == "full":
        return False
    parts = _parts(model)
    cfg = getattr(model, "config", None)
    ok = (parts is not None and ("forward" not in parts[1].__dict__ or _head_rule(parts[1]) is not None)
          and not _hooked(parts[1]) and not _hooked(model)
          and type(parts[1].weight) is torch.nn.Parameter  # not a DTensor (FSDP2 shards: its root hooks must run)
          and not getattr(cfg, "final_logit_softcapping", None) and getattr(cfg, "logit_scale", None) is None)
    if m == "chunked" and not ok:
        raise RuntimeError(f"chunked log-probs do not apply to a {type(model).__name__} (see isopo_bench.chunked_logprobs)")
    return ok


def _hooked(module: torch.nn.Module) -> bool:
    """Hooks on the LM head (or global module hooks) expect it to be called: keep the full path."""
    from torch.nn.modules import module as mod

    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None) or mod._global_forward_hooks
                or mod._global_forward_pre_hooks or mod._global_backward_hooks)


def chunk_rows(vocab: int, budget_mb: int = CHUNK_BUDGET_MB) -> int:
    return max(1, budget_mb * 2**20 // (4 * vocab))


def vocab_cols(rows: int, budget_mb: int = CHUNK_BUDGET_MB) -> int:
    """Vocabulary columns per chunk of a rule's backward, for `rows` = the larger of the grid's B T and the
    B d of a rule's per-chunk per-sequence gradients (float32)."""
    return max(1, budget_mb * 2**20 // (4 * rows))


def _chunk_logits(h_cd, weight, bias, temperature: float) -> torch.Tensor:
    logits = F.linear(h_cd, weight, bias)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


class ChunkedHeadLogprobs(torch.autograd.Function):
    """(h_Nd, weight, bias, targets_N) -> (logp_N, entropy_N); entropy is not differentiated."""

    @staticmethod
    def forward(ctx, h_Nd, weight, bias, targets_N, rows: int, temperature: float, with_entropy: bool,
                rule_inputs: "RuleInputs | None" = None):
        N = h_Nd.shape[0]
        out_dt = torch.float64 if h_Nd.dtype == torch.float64 else torch.float32
        logp = torch.empty(N, dtype=out_dt, device=h_Nd.device)
        lse = torch.empty(N, dtype=out_dt, device=h_Nd.device)
        ent = torch.empty(N, dtype=out_dt, device=h_Nd.device) if with_entropy else None
        for s in range(0, N, rows):
            logits = _chunk_logits(h_Nd[s : s + rows], weight, bias, temperature)
            lse_c = torch.logsumexp(logits, dim=-1)
            logp[s : s + rows] = logits.gather(-1, targets_N[s : s + rows, None]).squeeze(-1) - lse_c
            lse[s : s + rows] = lse_c
            if with_entropy:
                probs = torch.softmax(logits, dim=-1)
                ent[s : s + rows] = torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)
            del logits
        ctx.save_for_backward(h_Nd, weight, bias if bias is not None else torch.empty(0), targets_N, lse)
        ctx.rows, ctx.temperature, ctx.has_bias = rows, temperature, bias is not None
        ctx.rule_inputs = rule_inputs
        if ent is None:
            ent = torch.zeros(0, dtype=out_dt, device=h_Nd.device)
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, _grad_ent):
        h_Nd, weight, bias, targets_N, lse = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        if ctx.rule_inputs is not None and ctx.needs_input_grad[1]:
            return _rule_backward(ctx, h_Nd, weight, bias, targets_N, lse, grad_logp)
        rows, temperature = ctx.rows, ctx.temperature
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(h_Nd) if need_h else None
        acc_dt = torch.float64 if weight.dtype == torch.float64 else torch.float32
        grad_w = torch.zeros(weight.shape, dtype=acc_dt, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc_dt, device=weight.device) if need_b else None
        for s in range(0, h_Nd.shape[0], rows):
            h_c, g_c = h_Nd[s : s + rows], grad_logp[s : s + rows]
            with torch.no_grad():
                logits = _chunk_logits(h_c, weight, bias, temperature)
                # d logp / d logits = onehot(target) - softmax; times the incoming gradient, in place.
                grad_logits = torch.exp_(logits.sub_(lse[s : s + rows, None])).mul_(-g_c[:, None])
                grad_logits.scatter_add_(-1, targets_N[s : s + rows, None], g_c[:, None])
                if temperature != 1.0:
                    grad_logits.div_(temperature)
                gl = grad_logits.to(h_Nd.dtype)
                del logits, grad_logits
                if need_h:
                    grad_h[s : s + rows] = gl @ weight.to(h_Nd.dtype)
                if need_w:
                    grad_w.add_((gl.T @ h_c).to(acc_dt))
                if need_b:
                    grad_b.add_(gl.sum(0).to(acc_dt))
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(weight.dtype), None, None, None, None, None)


class RuleInputs:
    """What a HeadRule's backward needs beyond the Function's tensors: the rule, the head's whole input
    (B, T, d; detached) and which grid positions the N rows are (B, T)."""

    def __init__(self, rule: HeadRule, hidden_BTd: torch.Tensor, rows_BT: torch.Tensor):
        self.rule, self.hidden_BTd, self.rows_BT = rule, hidden_BTd, rows_BT


def vocab_chunk_grads(h_Nd, weight, bias, targets_N, lse_N, grad_logp_N, temperature: float,
                      cols: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(v, g_Nc): d loss / d logits on vocabulary columns [v, v + cols), (onehot - softmax) * dlogp /
    temperature, in float32 (float64 for float64 models), from the forward's logsumexp."""
    for v in range(0, weight.shape[0], cols):
        with torch.no_grad():
            w_c = weight[v : v + cols]
            logits = _chunk_logits(h_Nd, w_c, None if bias is None else bias[v : v + cols], temperature)
            g = torch.exp_(logits.sub_(lse_N[:, None])).mul_(-grad_logp_N[:, None])
            hit_N = ((targets_N >= v) & (targets_N < v + w_c.shape[0])).nonzero().squeeze(-1)
            g[hit_N, targets_N[hit_N] - v] += grad_logp_N[hit_N]
            if temperature != 1.0:
                g.div_(temperature)
        yield v, g


def _rule_backward(ctx, h_Nd, weight, bias, targets_N, lse, grad_logp):
    """The rule's pass over vocabulary chunks: its statistics and weights w_B, with the ordinary input
    gradient accumulated on the way (it does not depend on w). Then the weight gradient sum_t w_seq(t) g_t
    h_t^T: the rule's own when it kept its per-sequence gradients, else a second pass that recomputes the
    chunks (the per-token weight on the narrower input side, as the engine's combine). Linear biases get a
    zero gradient under a rule (the engine's convention)."""
    inputs: RuleInputs = ctx.rule_inputs
    rows_BT, model_dt = inputs.rows_BT, h_Nd.dtype
    B, T = rows_BT.shape
    cols = vocab_cols(max(B * T, B * weight.shape[1]))
    acc_dt = torch.float64 if model_dt == torch.float64 else torch.float32
    grad_h = torch.zeros(h_Nd.shape, dtype=acc_dt, device=h_Nd.device) if ctx.needs_input_grad[0] else None
    progress = {"calls": 0, "grad_h_done": False}
    # Pass 2 reuses pass 1's chunks when they fit the budget: recomputing them is one more head product
    # (2 N d V FLOPs; by the FLOP count ~4-5% of an update step at Qwen3-0.6B widths with V 8192, too small
    # for this machine's timing noise to confirm); the values are the same bits either way.
    keep_chunks = (h_Nd.shape[0] * weight.shape[0] * torch.finfo(acc_dt).bits // 8 <= KEEP_CHUNKS_BUDGET_MB * 2**20
                   and not inputs.rule.will_keep_weight_grad(inputs.hidden_BTd, weight.shape[0]))
    kept_chunks: list[tuple[int, torch.Tensor]] = []

    def chunks() -> Iterator[tuple[int, torch.Tensor]]:
        return vocab_chunk_grads(h_Nd, weight, bias, targets_N, lse, grad_logp, ctx.temperature, cols)

    def input_grad_part(v: int, g_Nc: torch.Tensor) -> None:
        gl = g_Nc.to(model_dt)
        grad_h.add_((gl @ weight[v : v + gl.shape[1]].to(model_dt)).to(acc_dt))

    def grids() -> Iterator[torch.Tensor]:
        progress["calls"] += 1
        first = progress["calls"] == 1
        for v, g_Nc in chunks():
            if first and grad_h is not None:
                input_grad_part(v, g_Nc)
            if first and keep_chunks:
                kept_chunks.append((v, g_Nc))
            # Rounded through the model dtype, as the full path's output gradient is.
            g_BTc = g_Nc.new_zeros(B, T, g_Nc.shape[1])
            g_BTc[rows_BT] = g_Nc.to(model_dt).to(g_Nc.dtype)
            yield g_BTc
        if first:  # only a first iteration run to its end holds every chunk's part (and every chunk)
            progress["grad_h_done"] = True

    w_B = inputs.rule.sequence_weights(inputs.hidden_BTd, grids)
    kept = inputs.rule.kept_weight_grad()
    grad_w = None if kept is None else kept.to(weight.dtype)
    redo_grad_h = grad_h is not None and not progress["grad_h_done"]
    if redo_grad_h:
        grad_h.zero_()
    if grad_w is None or redo_grad_h:
        seq_N = rows_BT.nonzero()[:, 0]
        hw_Nd = h_Nd * w_B.to(model_dt)[seq_N][:, None]
        fill_w = grad_w is None
        if fill_w:
            grad_w = torch.empty_like(weight)
        second_pass = kept_chunks if progress["grad_h_done"] and keep_chunks else chunks()
        with torch.no_grad():
            for v, g_Nc in second_pass:
                if redo_grad_h:
                    input_grad_part(v, g_Nc)
                if fill_w:
                    grad_w[v : v + g_Nc.shape[1]] = (g_Nc.to(model_dt).T @ hw_Nd).to(weight.dtype)
                del g_Nc
    kept_chunks.clear()
    grad_b = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
    return (None if grad_h is None else grad_h.to(model_dt), grad_w, grad_b, None, None, None, None, None)


def chunked_sequence_logprobs(model: torch.nn.Module, batch, with_entropy: bool = False, temperature: float = 1.0,
                              budget_mb: int = CHUNK_BUDGET_MB):
    """`batch.sequence_logprobs`'s result (logp_BT, and the detached entropy_BT with `with_entropy`) through
    the chunked head, on response positions only (0 elsewhere)."""
    from isopo_bench.batch import position_ids_for

    decoder, head = _parts(model)
    hidden_BTd = decoder(input_ids=batch.input_ids_BT, attention_mask=batch.attention_mask_BT,
                         position_ids=position_ids_for(batch.attention_mask_BT), use_cache=False).last_hidden_state
    B, T = batch.input_ids_BT.shape
    sel_B1 = batch.response_mask_BT[:, 1:] > 0  # logp_BT[b, t] comes from the hidden state at t - 1
    h_Nd = hidden_BTd[:, :-1][sel_B1]
    targets_N = batch.input_ids_BT[:, 1:][sel_B1]
    rows = chunk_rows(head.out_features, budget_mb)
    rule = _head_rule(head)
    rule_inputs = None
    if rule is not None and rule.active():
        rule_inputs = RuleInputs(rule, hidden_BTd.detach(), F.pad(sel_B1, (0, 1), value=False))
    logp_N, ent_N = ChunkedHeadLogprobs.apply(h_Nd, head.weight, head.bias, targets_N, rows, float(temperature),
                                              with_entropy, rule_inputs)
    zeros = torch.zeros(B, T - 1, dtype=logp_N.dtype, device=logp_N.device)
    logp_BT = F.pad(zeros.masked_scatter(sel_B1, logp_N), (1, 0))
    if not with_entropy:
        return logp_BT
    return logp_BT, F.pad(zeros.masked_scatter(sel_B1, ent_N.detach()), (1, 0))
