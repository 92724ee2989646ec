"""The core never imports an optional track: validating and hashing a text run, listing the registries and
building the CLI's flags leave isopo_bench.control (and vLLM) unimported."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from isopo_bench.cli_config import parse_config
from isopo_bench.config import RunConfig
from isopo_bench.plugin_settings import algorithm_presets
from isopo_bench.presets import compose
cfg = parse_config(RunConfig, compose("tiny-smoke", "isopo"), ["--algorithm.q", "0.5"]).validate()
cfg.config_hash(), algorithm_presets()
loaded = sorted(m for m in sys.modules if m.startswith(("isopo_bench.control", "vllm")))
print("LOADED", loaded)
"""


def test_validation_does_not_import_the_control_track():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout
