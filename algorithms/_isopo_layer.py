"""The per-layer ISOPO transform, run inside each Linear's backward (see _isopo_linear.py).

`MicroContext` holds what every layer of one microbatch shares (masks, advantages, probes, statistics, a
small cache of input-side products); `LinearRule` turns one layer's (a, g) into its ISOPO weight gradient.
Fast mode picks, per layer, the cheaper exact form: ghost norms / Gram trick (cost ~ T^2 (d_in + d_out)
per sequence pair) or materialised per-sequence gradients (cost ~ B d_in d_out on top of the weight
gradient, which is then a B-term sum), chunked over output rows when they do not fit the memory budget.
Faithful mode always materialises G_i in float32 (float64 for float64 models), uses the probe matrices
J_k directly and eigh, as the reference does.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch.profiler import record_function

from isopo_bench.algorithms import _isopo_math as M
from isopo_bench.algorithms._isopo_stats import EmaStats, MetricSums, draw_probes, probe_generator
from isopo_bench.config import IsopoConfig


@dataclass
class MicroContext:
    cfg: IsopoConfig
    interacting: bool
    mask_BT: torch.Tensor
    """Real tokens (attention mask), bool."""
    adv_B: torch.Tensor
    seed: int
    step: int
    micro: int
    stats: EmaStats
    metrics: MetricSums
    real_idx_N: torch.Tensor = field(init=False)
    shared_probes_S: torch.Tensor | None = field(init=False)
    has_padding: bool = field(init=False)
    _workspace: torch.Tensor | None = field(init=False, default=None)
    _cache: OrderedDict = field(init=False, default_factory=OrderedDict)

    def __post_init__(self):
        self.real_idx_N = self.mask_BT.reshape(-1).nonzero().squeeze(-1)
        self.has_padding = self.real_idx_N.numel() < self.mask_BT.numel()
        self.shared_probes_S = self.probes_for(-1) if self.cfg.share_probes else None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask_BT.shape)

    def probes_for(self, layer: int) -> torch.Tensor:
        if layer >= 0 and self.shared_probes_S is not None:
            return self.shared_probes_S
        gen = probe_generator(self.seed, self.step, self.micro, layer)
        return draw_probes(self.real_idx_N, self.cfg.num_probes, gen)

    def shared(self, x: torch.Tensor, what: tuple, compute):
        """Input-side tensors (masked input, a_S a^T, a a^T) reused by Linears that read the same tensor
        (q/k/v, gate/up). An entry holds `x` itself, so its memory cannot be reused by another tensor
        while cached; entries for two inputs at most."""
        key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x._version)
        entry = self._cache.get(key)
        if entry is None:
            entry = self._cache[key] = (x, {})
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        if what not in entry[1]:
            entry[1][what] = compute()
        return entry[1][what]

    def masked_input(self, x: torch.Tensor, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(a in x's dtype, a in the statistics dtype), zero on padding. Masking the input side alone
        is enough: every quantity is a sum of products g_t a_t^T-terms, so padding tokens drop out."""
        a_model = x
        if self.has_padding:
            a_model = self.shared(x, ("masked",), lambda: x * self.mask_BT.unsqueeze(-1).to(x.dtype))
        a = a_model if x.dtype == dt else self.shared(x, ("masked", dt), lambda: a_model.to(dt))
        return a_model, a

    def workspace(self, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        """One buffer reused by every layer of this microbatch for its materialised G_i: on CPU, a fresh
        100 MB tensor per layer costs more in page faults than the matmul that fills it."""
        n = 1
        for d in shape:
            n *= d
        ws = self._workspace
        if ws is None or ws.numel() < n or ws.dtype != like.dtype or ws.device != like.device:
            ws = self._workspace = torch.empty(n, dtype=like.dtype, device=like.device)
        return ws[:n].view(shape)

    def clear(self) -> None:
        self._cache.clear()
        self._workspace = None


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class LinearRule:
    """ISOPO for one nn.Linear: `weight_grad(x, grad_out)` returns sum_i w_i G_i for the active variant."""

    def __init__(self, name: str, index: int, cfg: IsopoConfig, interacting: bool):
        self.name, self.index, self.cfg, self.interacting = name, index, cfg, interacting
        self.micro: MicroContext | None = None

    def weight_grad(self, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        mc = self.micro
        if mc is None:
            raise RuntimeError(f"ISOPO: backward through `{self.name}` ran outside its backward_context")
        B, T = mc.shape
        if tuple(x.shape[:2]) != (B, T) or x.dim() != 3:
            raise RuntimeError(
                f"ISOPO: `{self.name}` saw input {tuple(x.shape)}, expected (B={B}, T={T}, d): only padded "
                "(batch, time, features) inputs of the microbatch are supported (no packing)"
            )
        dt = stats_dtype(x.dtype)
        a_model, a = mc.masked_input(x, dt)
        g = grad_out.to(dt)
        plan = self.plan(B, T, x.shape[-1], grad_out.shape[-1], dt)
        if self.interacting:
            w_B, G = self._interacting(a, g, plan)
        else:
            w_B, G = self._noninteracting(x, a, g, plan)
        mc.metrics.add("algo/isopo_materialised_frac", torch.tensor(float(G is not None)))
        with record_function("isopo/combine"):
            if G is not None:
                return M.combine(w_B, a, g, G)
            return M.combine(w_B, a_model, grad_out, None)

    def plan(self, B: int, T: int, d_in: int, d_out: int, dt: torch.dtype) -> str:
        """`materialise` (keep all G_i), `chunked` (G_i by output-row chunks, not kept) or `ghost`."""
        forced = self.cfg.fast_plan
        fits = B * d_out * d_in * torch.finfo(dt).bits // 8 <= self.cfg.materialise_budget_mb * 2**20
        if self.cfg.mode == "faithful":
            return "materialise"
        if forced != "auto":
            return "chunked" if forced == "materialise" and not fits else forced
        keep_or_redo = B * d_out * d_in if fits else B * T * d_out * d_in
        if self.interacting:
            cost_ghost, cost_mat = (B * T) ** 2 * (d_in + d_out), B * B * d_out * d_in + keep_or_redo
        else:
            cost_ghost, cost_mat = B * T * T * (d_in + d_out), keep_or_redo
        if cost_ghost <= cost_mat:
            return "ghost"
        return "materialise" if fits else "chunked"

    def _row_chunks(self, a: torch.Tensor, g: torch.Tensor):
        B, _, d_in = a.shape
        rows = max(1, self.cfg.materialise_budget_mb * 2**20 // (B * d_in * torch.finfo(a.dtype).bits // 8))
        for start in range(0, g.shape[-1], rows):
            yield M.seq_grads(a, g[..., start : start + rows]).reshape(B, -1)

    def _noninteracting(self, x, a, g, plan):
        mc, cfg = self.micro, self.cfg
        # With p = r = 0 (the released setting) N_i is unused: the fast mode then skips it, and the
        # layer costs only the probe products on top of an ordinary weight gradient.
        G, N = None, None
        if cfg.p != 0 or cfg.r != 0 or cfg.mode == "faithful":
            with record_function("isopo/norms"):
                G, N = self._euclid_norms(x, a, g, plan)
        with record_function("isopo/probes"):
            O = self._fisher_norms(x, a, g, G)
        stats = {"O": O} if N is None else {"N": N, "O": O, "R": O / (N + M.EPS_NORM)}
        regs = {"N": cfg.reg_n, "O": cfg.reg_o, "R": cfg.reg_r}
        tilde = [self._soft(k, stats[k], regs[k]) if k in stats else torch.ones_like(O) for k in "NOR"]
        s = M.isopo_scale(*tilde, cfg.p, cfg.q, cfg.r)
        names = {"N": "euclid_norm", "O": "fisher_norm", "R": "rel_overlap"}
        for key, v in [("scale", s)] + [(names[k], v) for k, v in stats.items()]:
            mc.metrics.add(f"algo/isopo_{key}_mean", v)
        return s * mc.adv_B.to(s.dtype), G

    def _euclid_norms(self, x, a, g, plan):
        """(G or None, N_B)."""
        mc = self.micro
        if plan == "materialise":
            G = self._seq_grads(a, g)
            return G, torch.linalg.vector_norm(G, dim=(1, 2))
        if plan == "chunked":
            return None, sum(Gc.pow(2).sum(dim=1) for Gc in self._row_chunks(a, g)).sqrt()
        gram_a = mc.shared(x, ("gram",), lambda: torch.bmm(a, a.transpose(1, 2)))
        return None, M.ghost_sq_norms(a, g, gram_a).clamp(min=0).sqrt()

    def _seq_grads(self, a, g):
        B, _, d_in = a.shape
        return M.seq_grads(a, g, out=self.micro.workspace((B, g.shape[-1], d_in), a))

    def _fisher_norms(self, x, a, g, G):
        mc = self.micro
        B, T = mc.shape
        probes = self.micro.probes_for(self.index)
        mc.metrics.add("algo/isopo_probes_mean", torch.tensor(float(probes.numel())))
        a_N, g_N = a.reshape(B * T, -1), g.reshape(B * T, -1)
        if self.cfg.mode == "faithful" or (G is not None and self._overlaps_from_G_cheaper(G, probes.numel())):
            a_S, g_S = a_N[probes], g_N[probes]
            P_SB = M.probe_overlaps_materialised(G, a_S, g_S)
            denom = M.fisher_trace_sqrt(a_S.norm(dim=1), g_S.norm(dim=1))
        else:
            # Only a shared probe set makes input-side products reusable across layers.
            probe_key = -1 if self.cfg.share_probes else self.index
            side_a = mc.shared(x, ("probe", probe_key), lambda: M.probe_side(a_N, probes))
            side_g = M.probe_side(g_N, probes)
            P_SB = M.probe_overlaps(side_a, side_g, B, T)
            denom = M.fisher_trace_sqrt(side_a[1], side_g[1])
        return P_SB.norm(dim=0) / denom

    def _overlaps_from_G_cheaper(self, G: torch.Tensor, S: int) -> bool:
        """g_k^T G_i a_k costs B S d_out d_in; the probe products S B T (d_in + d_out) (narrow layers,
        long sequences favour the former)."""
        B, d_out, d_in = G.shape
        return B * S * d_out * d_in < S * self.micro.mask_BT.numel() * (d_in + d_out)

    def _soft(self, stat: str, x_B: torch.Tensor, c: float) -> torch.Tensor:
        if c == 0:
            return x_B.abs()
        key = f"{stat}2/{self.name}"
        ema = self.micro.stats.value(key, x_B**2)
        self.micro.stats.collect(key, x_B**2)
        return M.soft_abs(x_B, c, ema, self.cfg.reg_form)

    def _interacting(self, a, g, plan):
        mc, cfg = self.micro, self.cfg
        B, _ = mc.shape
        with record_function("isopo/ntk"):
            G = self._seq_grads(a, g) if plan == "materialise" else None
            if G is not None:
                K = M.row_gram(G.reshape(B, -1))
            elif plan == "chunked":
                K = sum(Gc @ Gc.T for Gc in self._row_chunks(a, g))
            else:
                K = M.gram_ntk(a, g)
        mean_eig = K.diagonal().sum() / B
        key = f"ntk_mean_eig/{self.name}"
        lam = cfg.damping * mc.stats.value(key, mean_eig)
        mc.stats.collect(key, mean_eig)
        A = mc.adv_B.to(K.dtype)
        damp = M.damped_advantages_eigh if cfg.mode == "faithful" else M.damped_advantages_solve
        A_t = damp(K, A, lam)
        mc.metrics.add("algo/isopo_damping_mean", lam)
        mc.metrics.add("algo/isopo_adv_ratio_mean", A_t.norm() / (A.norm() + M.EPS_NORM))
        return A_t, G
