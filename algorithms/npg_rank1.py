"""npg_rank1: the damped low-rank inverse-Fisher natural policy gradient (Huo, Dash, Stoican, Kaski, Sun;
arXiv 2601.18626), per Linear layer, on ISOPO's machinery (SEED_METHODS.md).

The paper steps along F^-1 g with F = lambda I + u u^T, u the score of one sampled action, inverted by
Sherman-Morrison: d = (g - u (u.g) / (lambda + |u|^2)) / lambda, lambda = mean |u|^2. Here, per Linear
layer and microbatch, with per-sequence layer gradients G_i of the advantage-free loss (as ISOPO) and
g = sum_i A_i G_i, the layer gradient is d = lambda (lambda I + sum_{u in S} u u^T)^-1 g for the Fisher
samples S chosen by `algorithm.npg.fisher`:
- `one` (default, the paper's): S = {G_j}, one sequence drawn per microbatch (same j for every layer);
- `own`: each sequence's own score for its own term; equals `isopo` with (p, q, r) = (2, 0, 0) and the
  keep-small regulariser c_N = damping (up to its 1e-8 constants);
- `mean`: S = {mean_i G_i}; REINFORCE with every advantage shifted by one constant;
- `all`: S = all sequences; exactly `isopo-interacting`.
The factor lambda makes huge damping equal REINFORCE. lambda = damping * EMA[tr K / B] (K the layer NTK),
the EMA exactly as ISOPO's (ALGORITHMS.md 5.3).

Shared with ISOPO (IsopoConfig, not repeated here): the numerics mode / cost plans, EMA decay, the policy
for parameters that are not Linear weights (default: their REINFORCE gradient), tied embeddings, no KL.

Whole-model scope: `npg_rank1_model` (algorithms/npg_rank1_model.py) takes one Fisher sample over all
parameters for `one`, at the price of a second backward pass of the drawn sequence. The other settings
would need every sequence's whole-model gradient (B extra backward passes), or the sum of all layers' NTKs
before any layer's gradient is produced (a second backward of the whole batch with transformed advantages);
they stay per layer.
"""

from __future__ import annotations

import dataclasses

import torch

from isopo_bench.algorithms._npg_layer import FISHER_SETTINGS, NpgLinearRule
from isopo_bench.algorithms.isopo import _Isopo
from isopo_bench.errors import ConfigError
from isopo_bench.plugins import ALGORITHMS


@ALGORITHMS.register("npg_rank1")
class NpgRank1(_Isopo):
    interacting = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.ncfg = self.acfg.npg
        # The layer rules read damping from the machinery's config: npg's own damping replaces ISOPO's.
        self.icfg = dataclasses.replace(self.acfg.isopo, damping=self.ncfg.damping)

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        npg = cfg.algorithm.npg
        if npg.fisher not in FISHER_SETTINGS:
            raise ConfigError("algorithm.npg.fisher", f"unknown `{npg.fisher}`", f"pick one of {', '.join(FISHER_SETTINGS)}")
        if not npg.damping > 0:
            raise ConfigError("algorithm.npg.damping", f"must be > 0, got {npg.damping}", "use 1.0 (lambda = mean |u|^2)")

    def attach(self, model: torch.nn.Module) -> dict[str, str]:
        desc = super().attach(model)
        self.rules = {
            name: NpgLinearRule(name, i, self.icfg, self.ncfg.fisher) for i, name in enumerate(self.policy.linears)
        }
        desc.pop("isopo/variant", None)
        return desc | {"npg/fisher": self.ncfg.fisher, "npg/damping": str(self.ncfg.damping), "npg/scope": "layer"}
