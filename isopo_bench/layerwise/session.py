"""What every Linear layer of one microbatch shares while its backward runs: masks, advantages, the
probe set and the drawn sequence (seeded from the run seed, the optimizer step and the GLOBAL microbatch
index), a small cache of input-side products and one workspace for materialised G_i.

A session lives exactly as long as one `backward_context`: the Linear overrides are closures over it, so
no state is assigned onto modules or rules, and a backward that runs after the context raises.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from isopo_bench.layerwise.draws import draw_probes, probe_generator, sample_index
from isopo_bench.layerwise.options import EngineOptions


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are computed in float32 (float64 for float64 models), whatever the autocast dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class MicrobatchSession:
    def __init__(self, mask_BT: torch.Tensor, adv_B: torch.Tensor, *, seed: int, step: int, index: int,
                 options: EngineOptions):
        self.mask_BT = mask_BT.bool()
        """Real tokens (attention mask)."""
        self.adv_B = adv_B.detach()
        self.seed, self.step, self.index, self.options = seed, step, index, options
        self.real_idx_N = self.mask_BT.reshape(-1).nonzero().squeeze(-1)
        self.has_padding = self.real_idx_N.numel() < self.mask_BT.numel()
        self.open = True
        self._shared_probes: torch.Tensor | None = None
        self._workspace: torch.Tensor | None = None
        self._views: dict[tuple, torch.Tensor] = {}
        self._cache: OrderedDict = OrderedDict()
        self._per_dtype: dict = {}
        self.kept_head_grad: torch.Tensor | None = None
        self.batching = None
        """The microbatch's small-layer batching (batched.LayerBatching), or None: the per-layer path."""
        """The chunked LM head's sum_i w_i G_i when its statistics kept G_i (engine._head_weights)."""

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask_BT.shape)

    def probes_for(self, layer: int) -> torch.Tensor:
        """Flat indices of the S probe tokens of `layer` (the shared set unless share_probes=False)."""
        opts = self.options
        if opts.share_probes and self._shared_probes is not None:
            return self._shared_probes
        gen = probe_generator(self.seed, self.step, self.index, -1 if opts.share_probes else layer)
        probes = draw_probes(self.real_idx_N, opts.num_probes, gen)
        if opts.share_probes:
            self._shared_probes = probes
        return probes

    def drawn(self) -> int:
        """The microbatch's one sampled sequence j (the same for every layer)."""
        return sample_index(self.seed, self.step, self.index, self.shape[0])

    def shared(self, x: torch.Tensor, what: tuple, compute):
        """Input-side tensors (masked input, a_S a^T, a a^T, a_j a^T) reused by Linears that read the same
        tensor (q/k/v, gate/up). An entry holds `x` itself, so its memory cannot be reused by another tensor
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

    def _once(self, key: tuple, compute):
        """Small per-microbatch tensors every layer reads (the float mask, the advantages in a dtype):
        made once, since in a backward pass each tiny tensor op costs ~10-20 us of dispatch."""
        value = self._per_dtype.get(key)
        if value is None:
            value = self._per_dtype[key] = compute()
        return value

    def adv_in(self, dt: torch.dtype) -> torch.Tensor:
        """The advantages in dtype `dt`."""
        if self.adv_B.dtype == dt:
            return self.adv_B
        return self._once(("adv", dt), lambda: self.adv_B.to(dt))

    def masked_input(self, x: torch.Tensor, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(a in x's dtype, a in the statistics dtype), zero on padding. Masking the input side alone
        is enough: every quantity is a sum of products g_t a_t^T-terms, so padding tokens drop out."""
        a_model = x
        if self.has_padding:
            mask = self._once(("mask", x.dtype, x.device), lambda: self.mask_BT.unsqueeze(-1).to(x.dtype))
            a_model = self.shared(x, ("masked",), lambda: x * mask)
        a = a_model if x.dtype == dt else self.shared(x, ("masked", dt), lambda: a_model.to(dt))
        return a_model, a

    def workspace(self, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        """One buffer reused by every layer of this microbatch for its materialised G_i: on CPU, a fresh
        100 MB tensor per layer costs more in page faults than the matmul that fills it. Views of it are
        kept per shape (layers of one shape recur in every block)."""
        key = (shape, like.dtype, like.device)
        view = self._views.get(key)
        if view is not None:
            return view
        n = 1
        for d in shape:
            n *= d
        ws = self._workspace
        if ws is None or ws.numel() < n or ws.dtype != like.dtype or ws.device != like.device:
            ws = self._workspace = torch.empty(n, dtype=like.dtype, device=like.device)
            self._views.clear()  # views of the old buffer
        view = self._views[key] = ws[:n].view(shape)
        return view

    def close(self) -> None:
        self.open = False
        self._cache.clear()
        self._per_dtype.clear()
        self._views.clear()
        self._workspace = None
        self.kept_head_grad = None
