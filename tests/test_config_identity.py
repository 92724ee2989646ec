"""Stable identities: the config hash of every built-in preset is recorded here (a change that moves one
must bump the suite versions and say so in the README), covers only the chosen plug-ins' own settings, and
names a model folder by its content, not its path."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from isopo_bench.config import replace
from isopo_bench.models import model_source
from isopo_bench.presets import compose

# Recorded 2026-12-01 from the plug-in-settings layout (suite versions 2).
RECORDED = {
    "reinforce": "8b8f2ffb49a5", "grpo": "7ca2b84a1a9c", "dapo": "9a41cb4b87f0", "drgrpo": "bdcdccb79940",
    "cispo": "035bc87b3bad", "gspo": "88160015dd30", "isopo": "1ba49f2e0752", "isopo-interacting": "f7454757abb2",
    "npg_rank1": "ae44bb60e593", "npg_rank1_model": "0f3b1bb76c20", "seq-norm": "a30a220a9fee",
}


@pytest.mark.parametrize("preset", sorted(RECORDED))
def test_builtin_hashes_are_the_recorded_ones(preset):
    assert compose("tiny-smoke", preset).config_hash() == RECORDED[preset]


def test_explicit_default_settings_hash_as_none():
    cfg = compose("tiny-smoke", "isopo")
    assert dataclasses.replace(cfg, algorithm=dataclasses.replace(cfg.algorithm, settings=None)).config_hash() == \
        cfg.config_hash()


def test_diagnostics_and_labels_are_not_identity():
    cfg = compose("tiny-smoke", "grpo")
    changed = replace(cfg, **{"diagnostics.alignment_every": 0, "tracking.algorithm_label": "x", "threads": 2})
    assert changed.config_hash() == cfg.config_hash()


def test_a_model_folder_is_named_by_its_content(tmp_path):
    folder = model_source(compose("tiny-smoke").model, seed=0)
    a, b = tmp_path / "checkout-a" / "warm", tmp_path / "node-b" / "warm"
    shutil.copytree(folder, a)
    shutil.copytree(folder, b)
    base = compose("tiny-smoke")
    at_a, at_b = (replace(base, **{"model.init_from": str(p)}) for p in (a, b))
    assert at_a.config_hash() == at_b.config_hash() != base.config_hash()
    weights = next(b.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit of other weights: another experiment
    weights.write_bytes(bytes(data))
    assert replace(base, **{"model.init_from": str(b)}).config_hash() != at_a.config_hash()
