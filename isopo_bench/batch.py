"""Training batches: padded token tensors with masks, advantages and reference log-probs.

Layout convention: `logp_BT[b, t]` is log pi(input_ids[b, t] | input_ids[b, :t]); position 0 has no
log-prob and is never a response token. `response_mask_BT` is 1 on completion tokens (including the EOS
that ended them), 0 on prompt tokens and padding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class TrainBatch:
    input_ids_BT: torch.Tensor
    """Prompt + completion token ids, padded with pad_token_id."""
    attention_mask_BT: torch.Tensor
    """1 on real tokens (prompt and completion), 0 on padding."""
    response_mask_BT: torch.Tensor
    """1 on completion tokens (float, same dtype as losses)."""
    advantages_B: torch.Tensor
    """Sequence-level advantages, broadcast over the sequence's response tokens."""
    old_logp_BT: torch.Tensor | None = None
    """pi_old log-probs (recomputed before the update, or the sampler's)."""
    ref_logp_BT: torch.Tensor | None = None
    """Reference-policy log-probs for the KL penalty."""
    sampler_logp_BT: torch.Tensor | None = None
    """The rollout engine's own log-probs of the sampled tokens."""
    group_ids_B: torch.Tensor | None = None
    """Index of the prompt (group) each sequence belongs to."""
    correction_BT: torch.Tensor | None = None
    """Detached rollout-correction weights (isopo_bench.rollout_correction) that aggregation multiplies into
    the per-token loss; None = no correction."""

    @property
    def size(self) -> int:
        return self.input_ids_BT.shape[0]

    def select(self, index: torch.Tensor | slice) -> "TrainBatch":
        """Rows `index` of every tensor field (None stays None)."""
        fields = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            fields[f.name] = None if value is None else value[index]
        return TrainBatch(**fields)

    def to(self, device: torch.device | str) -> "TrainBatch":
        fields = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            fields[f.name] = None if value is None else value.to(device)
        return TrainBatch(**fields)

    def trimmed(self) -> tuple["TrainBatch", slice]:
        """Drop the columns that are padding in every row (keeps microbatch forwards short).

        Returns the trimmed batch and the column slice it occupies in this batch."""
        keep = self.attention_mask_BT.any(dim=0).nonzero().squeeze(-1)
        cols = slice(int(keep[0]), int(keep[-1]) + 1) if len(keep) else slice(0, 0)
        fields = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            fields[f.name] = value[:, cols] if value is not None and value.dim() == 2 else value
        return TrainBatch(**fields), cols


@dataclass(frozen=True)
class BatchTotals:
    """Counts over the whole optimizer batch (minibatch), so that losses summed over microbatches do not
    depend on how the minibatch was split."""

    num_tokens: float
    """Response tokens in the optimizer batch."""
    num_seqs: int
    """Sequences in the optimizer batch."""
    num_microbatches: int
    """Microbatches the optimizer batch is split into."""
    max_len: int
    """L_max constant for seq-mean-token-sum-norm."""

    @staticmethod
    def of(batch: TrainBatch, num_microbatches: int, max_len: int) -> "BatchTotals":
        return BatchTotals(
            num_tokens=float(batch.response_mask_BT.sum()),
            num_seqs=batch.size,
            num_microbatches=num_microbatches,
            max_len=max_len,
        )


def pad_and_stack(
    prompts: list[list[int]],
    completions: list[list[int]],
    pad_token_id: int,
    padding_side: str = "right",
    sampler_logps: list[list[float]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Concatenate prompt+completion per row and pad to a rectangle.

    Returns input_ids_BT, attention_mask_BT, response_mask_BT (float) and sampler_logp_BT (or None).
    """
    rows = [p + c for p, c in zip(prompts, completions)]
    T = max(len(r) for r in rows)
    B = len(rows)
    input_ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.long)
    response = torch.zeros((B, T), dtype=torch.float32)
    sampler = torch.zeros((B, T), dtype=torch.float32) if sampler_logps is not None else None
    for b, (p, c) in enumerate(zip(prompts, completions)):
        n = len(p) + len(c)
        start = 0 if padding_side == "right" else T - n
        input_ids[b, start : start + n] = torch.tensor(p + c, dtype=torch.long)
        attention[b, start : start + n] = 1
        response[b, start + len(p) : start + n] = 1.0
        if sampler is not None and len(c):
            sampler[b, start + len(p) : start + n] = torch.tensor(sampler_logps[b], dtype=torch.float32)
    return input_ids, attention, response, sampler


def position_ids_for(attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """Positions count real tokens only, so left and right padding give identical logits."""
    return (attention_mask_BT.cumsum(-1) - 1).clamp(min=0)


def logprob_temperature(rollout_temperature: float) -> float:
    """The temperature training log-probs use for rollouts sampled at `rollout_temperature`: the same, except
    greedy rollouts (0), whose degenerate distribution has no log-probs; they train on the unscaled logits."""
    return rollout_temperature if rollout_temperature > 0 else 1.0


def sequence_logprobs(
    model: torch.nn.Module, batch: TrainBatch, with_entropy: bool = False, temperature: float = 1.0
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs logp_BT of the batch's own tokens under `model` (0 at position 0).

    `temperature`: log-probs (and entropy) of softmax(logits / temperature), the distribution a sampler at
    that temperature draws from (as TRL and verl train); 1.0 leaves the logits untouched (bit-identical to
    no scaling). Half-precision logits are upcast to float32 first, the same way for every algorithm. With
    `with_entropy`, also returns the detached per-token entropy of the predictive distribution.
    Where it applies (plain HF causal LMs, LM head not overridden) the LM head runs in chunks of response
    positions (isopo_bench.chunked_logprobs; logp and entropy are then 0 off the response).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    from isopo_bench import chunked_logprobs

    if chunked_logprobs.applies(model):
        return chunked_logprobs.chunked_sequence_logprobs(model, batch, with_entropy, temperature=temperature)
    logits_BTV = model(
        input_ids=batch.input_ids_BT,
        attention_mask=batch.attention_mask_BT,
        position_ids=position_ids_for(batch.attention_mask_BT),
        use_cache=False,
    ).logits[:, :-1]
    if logits_BTV.dtype in (torch.float16, torch.bfloat16):
        logits_BTV = logits_BTV.float()
    if temperature != 1.0:
        logits_BTV = logits_BTV / temperature
    # gather - logsumexp avoids materialising a second B x T x V log-softmax tensor.
    picked = logits_BTV.gather(-1, batch.input_ids_BT[:, 1:, None]).squeeze(-1)
    logp_BT = torch.nn.functional.pad(picked - torch.logsumexp(logits_BTV, dim=-1), (1, 0))
    if not with_entropy:
        return logp_BT
    with torch.no_grad():
        probs = torch.softmax(logits_BTV, dim=-1)
        entropy = torch.logsumexp(logits_BTV, dim=-1) - (probs * logits_BTV).sum(-1)
    return logp_BT, torch.nn.functional.pad(entropy, (1, 0))
