"""Pure tensor kernels of the layer-wise engine: per-sequence statistics of one Linear layer in one
microbatch, and the final combination sum_i w_i G_i (ALGORITHMS.md 5.1, 5.2, 5.5; SEED_METHODS.md).

Inputs are padded token grids: a_BTI (the Linear's input), g_BTO (the loss gradient w.r.t. its output,
exactly zero on padding). Per-sequence layer gradients are G_i = sum_{t in i} g_t a_t^T. Every statistic
has an obviously-correct form (from materialised G_i, used by the faithful mode) and an exactly equivalent
cheaper form (ghost norms, Gram trick, probe products; the fast mode). No state lives here.
"""

from __future__ import annotations

import contextlib

import torch
import torch.autograd.profiler as _profiler

EPS_NORM = 1e-12
"""Added to ||g_k|| ||a_k|| in the Fisher trace (and by methods dividing by a norm, e.g. ISOPO's R_i = O_i / N_i)."""
EPS_DAMP = 1e-8
"""Added to eigenvalue + lambda in the damped NTK solve (interacting ISOPO, npg_rank1; kept identical in the
solve form so that the methods built on it agree bit for bit)."""


def cast_to(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t` in `dtype`, with no dispatched op when it already is (tiny ops dominate small layers' cost)."""
    return t if t.dtype == dtype else t.to(dtype)


def stage(name: str):
    """A profiler range (`--breakdown`) only while a profiler runs: entering one costs ~10 us even when
    nothing records, several per Linear per microbatch, a few percent of a small model's step."""
    return torch.profiler.record_function(name) if _profiler._is_profiler_enabled else contextlib.nullcontext()


def seq_grads(a_BTI: torch.Tensor, g_BTO: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """G_BOI[i] = sum_t g_t a_t^T, one batched matmul (padding rows of a are zero)."""
    return torch.bmm(g_BTO.transpose(1, 2), a_BTI, out=out)


def ghost_sq_norms(a_BTI: torch.Tensor, g_BTO: torch.Tensor, gram_a_BTT: torch.Tensor | None = None) -> torch.Tensor:
    """||G_i||^2 = sum_{t,s in i} (g_t . g_s)(a_t . a_s), without forming G_i (cost T^2 (d_in + d_out))."""
    if gram_a_BTT is None:
        gram_a_BTT = torch.bmm(a_BTI, a_BTI.transpose(1, 2))
    gram_g_BTT = torch.bmm(g_BTO, g_BTO.transpose(1, 2))
    return (gram_a_BTT * gram_g_BTT).sum(dim=(1, 2))


def gram_ntk(a_BTI: torch.Tensor, g_BTO: torch.Tensor) -> torch.Tensor:
    """K_ij = <G_i, G_j> = sum_{t in i, s in j} (g_t . g_s)(a_t . a_s) (the Gram trick, cost (BT)^2 (d_in + d_out))."""
    B, T, _ = a_BTI.shape
    a_NI, g_NO = a_BTI.reshape(B * T, -1), g_BTO.reshape(B * T, -1)
    prod_NN = (a_NI @ a_NI.T) * (g_NO @ g_NO.T)
    return prod_NN.view(B, T, B, T).sum(dim=(1, 3))


def probe_side(x_NI: torch.Tensor, probes_S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_S x^T, ||x_k||) for one side (input or output gradient) of the probe products."""
    x_SI = x_NI[probes_S]
    return x_SI @ x_NI.T, x_SI.norm(dim=1)


def probe_overlaps(side_a, side_g, B: int, T: int) -> torch.Tensor:
    """P_SB[k, i] = <G_i, J_k> = sum_{t in i} (g_k . g_t)(a_k . a_t): one S x N product, segment-summed."""
    (prod_a_SN, _), (prod_g_SN, _) = side_a, side_g
    return (prod_a_SN * prod_g_SN).view(-1, B, T).sum(dim=-1)


def probe_overlaps_materialised(G_BOI: torch.Tensor, a_SI: torch.Tensor, g_SO: torch.Tensor) -> torch.Tensor:
    """P_SB[k, i] = <G_i, g_k a_k^T> = g_k^T G_i a_k, from the materialised G_i (faithful mode)."""
    Ga_BOS = G_BOI @ a_SI.T
    return (Ga_BOS * g_SO.T.unsqueeze(0)).sum(dim=1).T


def fisher_trace_sqrt(a_norm_S: torch.Tensor, g_norm_S: torch.Tensor) -> torch.Tensor:
    """|| (||g_k|| ||a_k|| + eps)_k ||_2, the denominator of O_i (sqrt of tr F, regularised)."""
    return (g_norm_S * a_norm_S + EPS_NORM).norm()


def scaled(c: float, x: torch.Tensor) -> torch.Tensor:
    """c * x, with no op for c = 1 (exact either way)."""
    return x if c == 1.0 else c * x


def damped_solve_eigh(K_BB: torch.Tensor, A_B: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """A~ = lambda (K + (lambda + 1e-8) I)^-1 A as U diag(lambda / (D + lambda + 1e-8)) U^T A, the ISOPO
    reference's eigh form (faithful mode)."""
    D_B, U_BB = torch.linalg.eigh(K_BB)
    return U_BB @ ((lam / (D_B + lam + EPS_DAMP)) * (U_BB.T @ A_B))


def damped_ntk_solve(K_BB: torch.Tensor, A_B: torch.Tensor, damping_of) -> tuple[torch.Tensor, torch.Tensor]:
    """(A~, lambda) with lambda = damping_of(tr K / B) and A~ = lambda (K + (lambda + 1e-8) I)^-1 A, in
    float64 (fast mode; `damping_of` maps the mean eigenvalue to lambda, e.g. an EMA). K may carry a
    leading layer axis (L, B, B) (small-layer batching): then lambda is (L,) and A~ (L, B).
    A~ is in K's dtype, lambda in float64."""
    # One float64 copy of K gives the trace and, shifted in place on its diagonal (no identity matrix),
    # the solve; solve_ex skips the singularity check (K + lambda' I with lambda' > 0 is positive
    # definite), which on CUDA is a host sync. About ten small ops in all: in a backward pass each costs
    # ~10-20 us, which on a small model is more than the layer's Gram matrix.
    K64 = K_BB.to(torch.float64, copy=True)
    diag = K64.diagonal(dim1=-2, dim2=-1)
    lam64 = damping_of(diag.mean(dim=-1))
    lam_col = lam64 if K_BB.dim() == 2 else lam64.unsqueeze(-1)
    diag.add_(lam_col + EPS_DAMP)
    A64 = cast_to(A_B, torch.float64)
    if K_BB.dim() > 2:
        A64 = A64.expand(K_BB.shape[:-1])
    sol = torch.linalg.solve_ex(K64, A64)[0]
    return cast_to(lam_col * sol, K_BB.dtype), lam64


def input_row(a_BTI: torch.Tensor, j: int) -> torch.Tensor:
    """a_j a^T: (T, B T) products of sequence j's inputs with every token's."""
    B, T, _ = a_BTI.shape
    return a_BTI[j] @ a_BTI.reshape(B * T, -1).T


def ghost_row(a_BTI: torch.Tensor, g_BTO: torch.Tensor, j: int, a_row_TN: torch.Tensor | None = None) -> torch.Tensor:
    """K_jB[i] = <G_j, G_i> = sum_{t in j, s in i} (g_t . g_s)(a_t . a_s), cost T N (d_in + d_out).
    `a_row_TN` = a_j a^T when already computed (it is shared by the Linears that read the same input)."""
    B, T, _ = a_BTI.shape
    if a_row_TN is None:
        a_row_TN = input_row(a_BTI, j)
    prod_TN = a_row_TN * (g_BTO[j] @ g_BTO.reshape(B * T, -1).T)
    return prod_TN.view(T, B, T).sum(dim=(0, 2))


def row_gram(X_BD: torch.Tensor, block: int = 1 << 16) -> torch.Tensor:
    """X X^T for a few very long rows, in column blocks (a plain (B x D)(D x B) product runs far below
    memory bandwidth on CPU)."""
    if X_BD.shape[1] <= block:
        return torch.mm(X_BD, X_BD.t())
    return sum(torch.mm(X_BD[:, s : s + block], X_BD[:, s : s + block].t()) for s in range(0, X_BD.shape[1], block))


def combine(w_B: torch.Tensor, a_BTI: torch.Tensor, g_BTO: torch.Tensor, G_BOI: torch.Tensor | None) -> torch.Tensor:
    """sum_i w_i G_i: a B-term sum when G_i are materialised, else g^T diag(w_seq(t)) a, one matmul with
    the per-token weights applied to the narrower side."""
    if G_BOI is not None:
        B, O, I = G_BOI.shape
        return (cast_to(w_B, G_BOI.dtype).view(1, B) @ G_BOI.view(B, O * I)).view(O, I)
    B, T, I = a_BTI.shape
    O = g_BTO.shape[-1]
    if I <= O:
        a_BTI = a_BTI * cast_to(w_B, a_BTI.dtype).view(B, 1, 1)
    else:
        g_BTO = g_BTO * cast_to(w_B, g_BTO.dtype).view(B, 1, 1)
    return g_BTO.reshape(B * T, O).T @ a_BTI.reshape(B * T, I)
