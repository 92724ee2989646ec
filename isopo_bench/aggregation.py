"""The one loss-aggregation function every loss-based algorithm uses (docs/conventions.md#aggregation).

All modes normalise by counts of the whole optimizer batch (`BatchTotals`), never of the microbatch, so
summing microbatch losses gives the same gradient however the batch is split. With M the response mask,
l the per-token loss, B the optimizer batch's sequences, N = sum(M) its response tokens and L_max the
constant `totals.max_len`:

    token-mean                 sum(M l) / N                        TRL `dapo`/`bnpo`, verl `token-mean`
    seq-mean-token-mean        (1/B) sum_i sum_t M l / sum_t M     TRL `grpo`, verl `seq-mean-token-mean`
    seq-mean-token-sum         (1/B) sum(M l)                      verl `seq-mean-token-sum`
    seq-mean-token-sum-norm    sum(M l) / (B L_max)                Dr.GRPO: TRL `dr_grpo`, verl `seq-mean-token-sum-norm`
    token-sum                  sum(M l)                            no normalisation

Checked against verl's `agg_loss` and its actor's microbatch scaling (loss * micro_B / mini_B) in the verl
source this project mirrors (0.8.0.dev; the issue found 0.9.1 the same): verl's seq-mean-token-sum-norm is
sum(M l) / (B L_max) over the mini-batch, with L_max = the padded response width unless
`loss_scale_factor` is set (here always the constant `algorithm.loss_agg_max_len`, default
rollout.max_new_tokens, which is what verl pads responses to). Without `global_batch_size` verl's
seq-mean-* modes count only sequences with a response token; here every sequence counts (an empty response
adds a 0 term either way, and a sampled response always holds at least its EOS).

Rollout correction: when the second argument is a TrainBatch whose `correction_BT` is set
(isopo_bench.rollout_correction), the per-token loss is multiplied by it before the reduction; the
denominators stay those of the uncorrected batch (as verl and TRL apply their IS weights).
"""

from __future__ import annotations

import torch

from isopo_bench.batch import BatchTotals, TrainBatch

MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "token-sum")


def aggregate(loss_BT: torch.Tensor, mask: torch.Tensor | TrainBatch, mode: str, totals: BatchTotals) -> torch.Tensor:
    """Reduce per-token losses of one microbatch to its additive share of the optimizer-batch loss.

    `mask` is the response mask, or the microbatch itself: then its response mask is used and its
    rollout-correction weights `correction_BT` (when set) multiply the per-token loss."""
    if isinstance(mask, TrainBatch):
        mask_BT, correction_BT = mask.response_mask_BT, mask.correction_BT
    else:
        mask_BT, correction_BT = mask, None
    masked = loss_BT * mask_BT
    if correction_BT is not None:
        masked = masked * correction_BT.to(masked.dtype)
    if mode == "token-mean":
        return masked.sum() / max(totals.num_tokens, 1.0)
    if mode == "seq-mean-token-mean":
        per_seq = masked.sum(-1) / mask_BT.sum(-1).clamp(min=1.0)
        return per_seq.sum() / totals.num_seqs
    if mode == "seq-mean-token-sum":
        return masked.sum() / totals.num_seqs
    if mode == "seq-mean-token-sum-norm":
        # Dr.GRPO (arXiv 2503.20783), TRL `dr_grpo`, verl: the token sum over (optimizer-batch sequences x L_max),
        # both constants of the optimizer batch, so a microbatch split never changes it.
        return masked.sum() / (totals.num_seqs * totals.max_len)
    if mode == "token-sum":
        return masked.sum()
    raise ValueError(f"unknown loss aggregation `{mode}`; known: {', '.join(MODES)}")
