"""Pure tensor math of the damped rank-|S| natural gradient on one Linear layer (SEED_METHODS.md).

With per-sequence layer gradients G_i (rows of U when they are Fisher samples), g = sum_i A_i G_i and the
layer NTK K_ij = <G_i, G_j>, every setting's d = lambda (lambda' I + sum_{u in S} u u^T)^-1 g is again a
combination sum_i A~_i G_i, so only the advantages change (Sherman-Morrison / push-through identity).
lambda' = lambda + 1e-8, the constant interacting ISOPO adds, so that `all` equals it bit for bit.
"""

from __future__ import annotations

import hashlib

import torch

from isopo_bench.algorithms._isopo_math import EPS_DAMP


def sample_index(seed: int, step: int, micro: int, B: int) -> int:
    """The Fisher sample of setting `one`: a uniform draw that depends only on (seed, step, microbatch), so
    every layer uses the same sequence (one sampled score of the whole model) and reruns repeat it."""
    digest = hashlib.sha256(f"npg-rank1/{seed}/{step}/{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % B


def ghost_row(a_BTI: torch.Tensor, g_BTO: torch.Tensor, j: int, a_row_TN: torch.Tensor | None = None) -> torch.Tensor:
    """K_jB[i] = <G_j, G_i> = sum_{t in j, s in i} (g_t . g_s)(a_t . a_s), cost T N (d_in + d_out).
    `a_row_TN` = a_j a^T when already computed (it is shared by the Linears that read the same input)."""
    B, T, _ = a_BTI.shape
    if a_row_TN is None:
        a_row_TN = input_row(a_BTI, j)
    prod_TN = a_row_TN * (g_BTO[j] @ g_BTO.reshape(B * T, -1).T)
    return prod_TN.view(T, B, T).sum(dim=(0, 2))


def input_row(a_BTI: torch.Tensor, j: int) -> torch.Tensor:
    """a_j a^T: (T, B T) products of sequence j's inputs with every token's."""
    B, T, _ = a_BTI.shape
    return a_BTI[j] @ a_BTI.reshape(B * T, -1).T


def adv_one(K_jB: torch.Tensor, A_B: torch.Tensor, j: int, lam: torch.Tensor) -> torch.Tensor:
    """S = {G_j}: d = (lambda / lambda')(g - G_j <G_j, g> / (lambda' + |G_j|^2)); only A_j changes."""
    lam_eff = lam + EPS_DAMP
    A_t = A_B.clone()
    A_t[j] = A_B[j] - (K_jB @ A_B) / (lam_eff + K_jB[j])
    return (lam / lam_eff) * A_t


def adv_own(diag_B: torch.Tensor, A_B: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """S_i = {G_i} for sequence i's own term: A~_i = A_i lambda / (lambda' + |G_i|^2)."""
    return A_B * lam / (lam + EPS_DAMP + diag_B)


def adv_mean(K1_B: torch.Tensor, A_B: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """S = {u}, u = mean_i G_i: u.g = 1^T K A / B, |u|^2 = 1^T K 1 / B^2; every A_i shifts by one constant."""
    B = A_B.shape[0]
    lam_eff = lam + EPS_DAMP
    shift = (K1_B @ A_B / B) / (lam_eff + K1_B.sum() / B**2) / B
    return (lam / lam_eff) * (A_B - shift)
