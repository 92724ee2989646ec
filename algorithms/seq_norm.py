"""seq-norm: each sequence's layer gradient normalised by its own Euclidean norm, the smallest
per-sequence method on the layer-wise engine (isopo_bench.layerwise).

Per Linear layer and microbatch, with G_i the gradient of sequence i's share of the advantage-free loss,

    grad W = sum_i A_i G_i / (||G_i||_F + eps),

so every sequence moves each layer by a step of the same size, signed and scaled by its advantage alone.
(ISOPO's `isopo-euclidean` preset is the same up to its 1e-8 placement.) Other parameters get their
REINFORCE gradient, the engine's default. A sequence whose layer gradient vanishes (a query attending to
a single key leaves k_proj without gradient) is rounding noise scaled up to |A_i| unless eps is well above
that rounding.
"""

from dataclasses import dataclass

from isopo_bench.algorithm_api import AlgorithmPreset
from isopo_bench.layerwise import LayerwiseAlgorithm, Needs
from isopo_bench.plugins import ALGORITHMS


@dataclass(frozen=True)
class SeqNormSettings:
    eps: float = 1e-8
    """Added to ||G_i||_F before dividing."""


@ALGORITHMS.register("seq-norm")
class SeqNorm(LayerwiseAlgorithm):
    Settings = SeqNormSettings
    presets = {"seq-norm": AlgorithmPreset(SeqNormSettings(), description="w_i = A_i / ||G_i||")}
    needs = Needs(euclid_norms=True)
    metric_prefix = "seq_norm"

    def sequence_weights(self, layer):
        return layer.adv_B / (layer.euclid_norm + self.settings.eps)
