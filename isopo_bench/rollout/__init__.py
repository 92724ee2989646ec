"""Rollout engines. The HF engine registers eagerly; vLLM registers lazily ("module:attr") so importing
isopo_bench never imports vllm."""

from isopo_bench.plugins import ENGINES
from isopo_bench.rollout.api import Rollout, RolloutEngine, SamplingSettings
from isopo_bench.rollout.hf_engine import HFEngine

ENGINES.register_lazy("vllm", "isopo_bench.rollout.vllm_engine:VllmEngine")

__all__ = ["Rollout", "RolloutEngine", "SamplingSettings", "HFEngine"]
