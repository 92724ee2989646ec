"""The one loss-aggregation function every loss-based algorithm uses (ALGORITHMS.md section 3).

All modes normalise by counts of the whole optimizer batch (`BatchTotals`), never of the microbatch, so
summing microbatch losses gives the same gradient however the batch is split.
"""

from __future__ import annotations

import torch

from isopo_bench.batch import BatchTotals

MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate(loss_BT: torch.Tensor, mask_BT: torch.Tensor, mode: str, totals: BatchTotals) -> torch.Tensor:
    """Reduce per-token losses of one microbatch to its additive share of the optimizer-batch loss."""
    masked = loss_BT * mask_BT
    if mode == "token-mean":
        return masked.sum() / max(totals.num_tokens, 1.0)
    if mode == "seq-mean-token-mean":
        per_seq = masked.sum(-1) / mask_BT.sum(-1).clamp(min=1.0)
        return per_seq.sum() / totals.num_seqs
    if mode == "seq-mean-token-sum":
        return masked.sum() / totals.num_seqs
    if mode == "seq-mean-token-sum-norm":
        # Dr.GRPO as in verl: a constant denominator L_max (no division by the sequence count).
        return masked.sum() / totals.max_len
    raise ValueError(f"unknown loss aggregation `{mode}`; known: {', '.join(MODES)}")
