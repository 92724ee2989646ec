"""Deterministic draws of the layer-wise methods: Fisher probe tokens and one sampled sequence.

Each depends only on (run seed, optimizer step, microbatch index, ...) through a hash, so draws repeat
exactly across reruns, resumes, devices, gradient checkpointing, the fast/faithful modes and data-parallel
ranks (the microbatch index is global). The hashed strings are part of the results: changing one changes
every probe set / sampled sequence of every run.
"""

from __future__ import annotations

import hashlib

import torch


def _seed_of(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def probe_generator(seed: int, step: int, microbatch: int, layer: int) -> torch.Generator:
    """A CPU generator for the probe draw of (seed, step, microbatch, layer); layer = -1 is the set shared
    by all layers."""
    gen = torch.Generator()
    gen.manual_seed(_seed_of(f"isopo-probes/{seed}/{step}/{microbatch}/{layer}") & ((1 << 63) - 1))
    return gen


def draw_probes(real_flat_idx_N: torch.Tensor, num_probes: int, gen: torch.Generator) -> torch.Tensor:
    """S = min(num_probes, N) distinct real-token positions, uniformly (flat indices into the B*T grid)."""
    n = real_flat_idx_N.numel()
    pick = torch.randperm(n, generator=gen)[: min(num_probes, n)]
    return real_flat_idx_N[pick.to(real_flat_idx_N.device)]


def sample_index(seed: int, step: int, micro: int, B: int) -> int:
    """A uniform draw in [0, B) from (seed, step, microbatch): npg_rank1's Fisher sequence (the same for every
    layer: one sampled score of the whole model). micro = -1: one draw per step (npg_rank1_model)."""
    return _seed_of(f"npg-rank1/{seed}/{step}/{micro}") % B
