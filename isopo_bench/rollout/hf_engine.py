"""Rollouts with transformers' `generate` on the training model itself (weights are shared, so
`sync_weights` is free). Batched, KV-cached, left-padded prompts; returns the sampler's log-probs from the
unscaled logits so they are comparable with the trainer's."""

from __future__ import annotations

import torch

from isopo_bench.plugins import ENGINES
from isopo_bench.finite_guard import sampling_error
from isopo_bench.rollout.api import Rollout, SamplingSettings


@ENGINES.register("hf")
class HFEngine:
    def __init__(self, cfg, model_source: str, tokenizer, policy: torch.nn.Module):
        self.tokenizer = tokenizer
        self.policy = policy
        self.batch_size = cfg.rollout.generation_batch_size
        self.lr = cfg.optim.lr

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Generation runs on the policy module itself: nothing to copy."""

    def close(self) -> None:
        self.policy = None

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSettings) -> Rollout:
        rows = [p for p in prompt_ids for _ in range(sampling.n)]
        out = Rollout(prompt_ids=rows, completion_ids=[], sampler_logps=[], finish_reasons=[])
        was_training = self.policy.training
        self.policy.eval()
        try:
            with torch.random.fork_rng(devices=self._rng_devices()):
                torch.manual_seed(sampling.seed)
                for start in range(0, len(rows), self.batch_size):
                    try:
                        self._generate_chunk(rows[start : start + self.batch_size], sampling, out)
                    except RuntimeError as exc:  # inf/nan probabilities: the project's error, not a traceback
                        if sampling_error(exc, self.lr) is None:
                            raise
                        raise sampling_error(exc, self.lr) from None
        finally:
            self.policy.train(was_training)
        return out

    def _rng_devices(self) -> list:
        device = next(self.policy.parameters()).device
        return [device] if device.type == "cuda" else []

    def _generate_chunk(self, rows: list[list[int]], sampling: SamplingSettings, out: Rollout) -> None:
        device = next(self.policy.parameters()).device
        pad_id, eos_id = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for b, r in enumerate(rows):  # left padding: every row's next token lands in the same column
            input_ids[b, width - len(r) :] = torch.tensor(r)
            attention[b, width - len(r) :] = 1
        kwargs = dict(do_sample=False) if sampling.greedy else dict(
            do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0
        )
        gen = self.policy.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            output_logits=True,
            return_dict_in_generate=True,
            use_cache=True,
            **kwargs,
        )
        new_tokens_BT = gen.sequences[:, width:].cpu()
        logits_BTV = torch.stack(gen.logits, dim=1).float()  # raw logits (before temperature / top-p)
        if not sampling.greedy and sampling.temperature != 1.0:
            # The log-probs of the distribution sampled from (the trainer's at rollout.temperature); top-p's
            # renormalisation is not applied (neither does the trainer).
            logits_BTV = logits_BTV / sampling.temperature
        logp_BT = torch.log_softmax(logits_BTV, dim=-1).gather(-1, new_tokens_BT[..., None].to(logits_BTV.device))
        logp_BT = logp_BT.squeeze(-1).cpu()
        for b in range(len(rows)):
            tokens = new_tokens_BT[b].tolist()
            stopped = eos_id in tokens
            end = tokens.index(eos_id) + 1 if stopped else len(tokens)
            out.completion_ids.append(tokens[:end])
            out.sampler_logps.append(logp_BT[b, :end].tolist())
            out.finish_reasons.append("stop" if stopped else "length")
