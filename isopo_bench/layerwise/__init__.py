"""The layer-wise gradient engine: what ISOPO, npg_rank1 and any per-sequence method share.

A method subclasses `LayerwiseAlgorithm`, declares the per-sequence statistics it needs (`Needs`) and
supplies `sequence_weights(layer) -> w_B`; the engine produces sum_i w_i G_i as every Linear's weight
gradient inside the backward pass (algorithms/seq_norm.py is the smallest example).

Modules (pure kernels apart from stateful classes):
- kernels.py: per-sequence statistics and the final combination (pure tensor math);
- planner.py: ghost vs materialised vs chunked, per layer, by cost (pure);
- draws.py: seeded probe draws and sequence samples (pure);
- options.py: `Needs`, `EngineOptions` (what a method declares);
- autograd_linear.py: the custom autograd Linear and the forward overrides;
- param_rules.py: rules per module type for norms, embeddings and tied heads (`ParameterMap`);
- session.py: what one microbatch's layers share during its backward;
- statistics.py: one layer's statistics as a method reads them (`LayerStats`; `LayerGroup` for a batch
  of same-shaped layers);
- batched.py: small-layer batching (per-shape buffers of G_i; K, weights and gradients after the backward);
- ema.py: EMA statistics and metric means, with their reduction across ranks;
- engine.py: `LayerwiseAlgorithm`, the algorithm-contract side.
"""

from isopo_bench.layerwise.engine import LayerwiseAlgorithm
from isopo_bench.layerwise.options import EngineOptions, Needs
from isopo_bench.layerwise.statistics import LayerGroup, LayerStats

__all__ = ["EngineOptions", "LayerGroup", "LayerStats", "LayerwiseAlgorithm", "Needs"]
