"""The optimizer (AdamW, or SGD with momentum) with a warmup + constant/cosine/linear schedule over all
optimizer steps of a run."""

from __future__ import annotations

import math

import torch

from isopo_bench.config import OptimConfig


def total_optimizer_steps(cfg: OptimConfig) -> int:
    return cfg.steps * cfg.epochs * cfg.minibatches_per_step


def lr_factor(cfg: OptimConfig, opt_step: int) -> float:
    """Multiplier of cfg.lr after `opt_step` optimizer steps."""
    if opt_step < cfg.warmup_steps:
        return (opt_step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(total_optimizer_steps(cfg) - cfg.warmup_steps, 1)
    progress = min((opt_step - cfg.warmup_steps) / span, 1.0)
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    return optimizer, scheduler
