"""Rollout correction of the sampler/trainer mismatch: truncated importance sampling (TIS) and masked
importance sampling (MIS), at token or sequence level, as one setting every loss-based algorithm gets.

The rollout engine samples from pi_sampler (e.g. vLLM's kernels, a stale weight copy); the trainer's
policy at the same parameters is pi_old. Importance ratios, from log-probs of the sampled tokens:

    token level      rho_t = exp(logp_old_t - logp_sampler_t)
    sequence level   rho_i = exp(sum_t (logp_old_t - logp_sampler_t))     (the product of token ratios)

and the per-token weight w (detached; a sequence-level weight is broadcast over its response tokens):

    tis   w = min(rho, C)                              truncated IS (Yao et al. 2025, "Your efficient RL
                                                       framework secretly brings you off-policy RL training")
    mis   w = 1 if 1/C <= rho <= C else 0              masked IS (verl's rollout_rs / TRL's *_mask modes;
                                                       the kept tokens are not reweighted)

`isopo_bench.aggregation.aggregate` multiplies w into the per-token loss (the TrainBatch field
`correction_BT`); the KL penalty is not weighted. Same as TRL's `vllm_importance_sampling_mode`
token_truncate / sequence_truncate (with clip_max = C; TRL's truncation has no lower bound either) and
token_mask / sequence_mask (with clip_min = 1/C, clip_max = C), and verl's `rollout_is` = token/sequence
with `rollout_is_threshold` = C (TIS). Log-ratios are clamped to [-20, 20] before exp (token level; the
sequence sum as well), so an impossible sampler token gives a huge but finite ratio.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from isopo_bench import metric_names as M
from isopo_bench.errors import ConfigError, IsopoBenchError

LOG_RATIO_CLAMP = 20.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorrectionConfig:
    mode: Literal["off", "tis", "mis"] = "off"
    """Rollout correction of the sampler/trainer mismatch: `tis` truncates the importance ratio
    pi_old / pi_sampler at `threshold`, `mis` drops tokens (sequences) whose ratio is outside
    [1/threshold, threshold]; `off` trains on the samples unweighted."""
    level: Literal["token", "sequence"] = "token"
    """Ratio per token, or per sequence (the product of its token ratios, applied to all its tokens)."""
    threshold: float = 2.0
    """C > 1: the truncation cap (tis) or the accepted band [1/C, C] (mis)."""
    bypass_warn: float = 0.02
    """With algorithm.old_logp_source=sampler (pi_old = the sampler's log-probs, no pi_old forward; verl's
    bypass mode): the first step of a process runs one pi_old forward anyway and warns when the mean
    |logp_trainer - logp_sampler| over response tokens is above this."""
    bypass_refuse: float = 0.1
    """... and stops before any update when it is above this (inf: never)."""

    def validate(self) -> None:
        if self.mode not in ("off", "tis", "mis"):
            raise ConfigError("correction.mode", f"unknown mode `{self.mode}`", "use off, tis or mis")
        if self.level not in ("token", "sequence"):
            raise ConfigError("correction.level", f"unknown level `{self.level}`", "use token or sequence")
        if self.mode != "off" and not self.threshold > 1.0:
            raise ConfigError("correction.threshold", f"must be > 1, got {self.threshold}",
                              "use e.g. 2.0 (token TIS, as verl's examples) or a larger cap at sequence level")
        if not 0 < self.bypass_warn <= self.bypass_refuse:
            raise ConfigError("correction.bypass_warn / correction.bypass_refuse",
                              f"need 0 < bypass_warn <= bypass_refuse, got {self.bypass_warn} and {self.bypass_refuse}",
                              "use the defaults 0.02 and 0.1 (mean |logp difference| per response token)")


class BypassGuard:
    """old_logp_source=sampler assumes the sampler's log-probs are the trainer's: the first `check` of a
    process (a resume may run another engine build) runs `trainer_logp()` (one pi_old forward, before the
    first update), measures the mean |logp_trainer - logp_sampler| over the response tokens of every rank's
    own rows (`gather` collects the ranks' (sum, count)) and refuses or warns (check_bypass); later calls
    do nothing."""

    def __init__(self, cfg: CorrectionConfig, gather: Callable[[tuple], list] = lambda share: [share]):
        self.cfg, self.gather, self.checked = cfg, gather, False

    def check(self, trainer_logp: Callable[[], torch.Tensor], batch, own_rows: list[slice], step: int) -> None:
        if self.checked:
            return
        trainer_logp_BT = trainer_logp()
        mask_BT = torch.zeros_like(batch.response_mask_BT, dtype=torch.float64)
        for rows in own_rows:  # other ranks' rows of trainer_logp_BT are unfilled
            mask_BT[rows] = batch.response_mask_BT[rows].double()
        diff_BT = (trainer_logp_BT.double() - batch.sampler_logp_BT.double()).abs()
        diff_BT = torch.where(mask_BT > 0, diff_BT, 0.0)  # inf off the mask must not become nan
        shares = self.gather((float(diff_BT.sum()), float(mask_BT.sum())))
        self.checked = True
        warning = check_bypass(sum(s for s, _ in shares) / max(sum(n for _, n in shares), 1.0), self.cfg, step)
        if warning:
            log.warning(warning)


class SamplerMismatchError(IsopoBenchError, RuntimeError):
    """pi_old taken from the sampler, but the sampler's log-probs are not the trainer's."""


def check_bypass(mean_abs: float, cfg: CorrectionConfig, step: int) -> str | None:
    """The first-step check of old_logp_source=sampler: raises SamplerMismatchError above
    `cfg.bypass_refuse` (or for a non-finite value), returns a warning above `cfg.bypass_warn`, else None."""
    what = (f"algorithm.old_logp_source=sampler: at step {step} the sampler's log-probs differ from the trainer's "
            f"by {mean_abs:.4g} per response token (mean |logp_trainer - logp_sampler|)")
    if not mean_abs <= cfg.bypass_refuse:
        raise SamplerMismatchError(
            f"{what}, above correction.bypass_refuse = {cfg.bypass_refuse}; no update was applied. The sampler is "
            "not pi_old (a different temperature or top_p, dtype, kernels or a stale weight sync). Fix: use "
            "--algorithm.old-logp-source recompute (the pi_old forward), or raise --correction.bypass-refuse "
            "if this mismatch is intended")
    if mean_abs > cfg.bypass_warn:
        return (f"{what}, above correction.bypass_warn = {cfg.bypass_warn} (refused above "
                f"{cfg.bypass_refuse}); the ratios pi / pi_old include this mismatch")
    return None


@dataclass
class Correction:
    weights_BT: torch.Tensor
    """Per-token weights, 0 outside the response mask."""
    metrics: dict[str, float]


def correction_weights(cfg: CorrectionConfig, old_logp_BT: torch.Tensor, sampler_logp_BT: torch.Tensor,
                       mask_BT: torch.Tensor, metric_rows_B: torch.Tensor | None = None) -> Correction:
    """The detached correction weights of a batch and their metrics.

    `old_logp_BT`: the trainer's log-probs at the rollout's parameters (pi_old); `sampler_logp_BT`: the
    engine's; `mask_BT`: response tokens. `metric_rows_B` (bool) restricts the metrics to some rows (a
    data-parallel rank's own); default all."""
    if cfg.mode == "off":
        raise ValueError("correction_weights called with correction.mode = off")
    mask_BT = mask_BT.to(torch.float64)
    diff_BT = (old_logp_BT.detach().double() - sampler_logp_BT.detach().double()) * mask_BT
    if cfg.level == "token":
        log_ratio = diff_BT.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # B x T
        unit_mask = mask_BT
    else:
        log_ratio = diff_BT.sum(-1).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # B
        unit_mask = (mask_BT.sum(-1) > 0).double()
    ratio = torch.exp(log_ratio)
    C = float(cfg.threshold)
    if cfg.mode == "tis":
        changed = ratio > C
        weight = ratio.clamp(max=C)
    else:
        changed = (ratio < 1.0 / C) | (ratio > C)
        weight = (~changed).double()
    weights_BT = (weight if cfg.level == "token" else weight[:, None].expand_as(mask_BT)) * mask_BT
    rows = torch.ones(mask_BT.shape[0], dtype=torch.bool) if metric_rows_B is None else metric_rows_B.bool()
    units = unit_mask * (rows[:, None] if cfg.level == "token" else rows).double()
    tokens = mask_BT * rows[:, None].double()
    n_units, n_tokens = float(units.sum()), float(tokens.sum())
    metrics = {}
    if n_units > 0:
        frac = float((changed.double() * units).sum()) / n_units
        metrics = {
            M.CORRECTION_WEIGHT_MEAN: float((weights_BT * tokens).sum()) / max(n_tokens, 1.0),
            M.CORRECTION_RATIO_MEAN: float((ratio * units).sum()) / n_units,
            M.CORRECTION_RATIO_MAX: float(ratio[units.bool()].max()),
            M.CORRECTION_CLIP_FRAC if cfg.mode == "tis" else M.CORRECTION_MASK_FRAC: frac,
        }
    return Correction(weights_BT.to(old_logp_BT.dtype), metrics)
