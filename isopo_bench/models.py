"""Loading policies: any causal LM by hub id or local folder, and the offline `tiny` Qwen3 model.

The tiny model is a real Qwen3ForCausalLM (the class of the paper's Qwen3-0.6B) with small dimensions and a
character-level tokenizer built with the `tokenizers` library, saved with save_pretrained so that any
engine (HF, vLLM) loads it from a folder. Nothing here downloads weights unless a hub id is requested.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from isopo_bench.config import ModelConfig
from isopo_bench.errors import ConfigError
from isopo_bench.reproducible import reproducible_cpu

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def cache_root() -> Path:
    """Where generated models (tiny, warm starts, conversions) live; override with ISOPO_BENCH_CACHE."""
    return Path(os.environ.get("ISOPO_BENCH_CACHE", ".isopo_cache")).resolve()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("model.device", f"`{name}` requested but CUDA is not available", "use --model.device cpu")
    return torch.device(name)


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: printable ASCII + newline, EOS <|im_end|>, pad <|endoftext|>, chat template."""
    from tokenizers import Tokenizer, decoders, models

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_qwen3_config(cfg: ModelConfig, vocab_size: int, eos_id: int, pad_id: int) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=cfg.tiny_hidden_size,
        intermediate_size=cfg.tiny_intermediate_size,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=cfg.tiny_heads,
        num_key_value_heads=cfg.tiny_kv_heads,
        head_dim=cfg.tiny_hidden_size // cfg.tiny_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=cfg.tiny_tie_embeddings,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=eos_id,
        torch_dtype="float32",
    )


def tiny_model_dir(cfg: ModelConfig, seed: int) -> Path:
    """Build (once) and return the folder of the tiny model for these dimensions and seed."""
    spec = {k: v for k, v in vars(cfg).items() if k.startswith("tiny_")} | {"seed": seed, "v": 1}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    folder = cache_root() / "models" / f"tiny-{key}"
    if (folder / "config.json").exists():
        return folder
    tokenizer = build_char_tokenizer()
    config = tiny_qwen3_config(cfg, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    with reproducible_cpu(seed):  # the same initial weights whatever the caller's threads and generators
        model = Qwen3ForCausalLM(config)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.replace(folder)
    except OSError:
        # Another process (a parallel suite worker) built the same folder first: its copy is identical.
        if not (folder / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        log.info("built tiny model at %s", folder)
    return folder


def model_source(cfg: ModelConfig, seed: int) -> str:
    """The folder or hub id the policy (and any rollout engine) loads from."""
    if cfg.init_from:
        return cfg.init_from
    if cfg.name_or_path == "tiny":
        return str(tiny_model_dir(cfg, seed))
    return cfg.name_or_path


def load_tokenizer(source: str):
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:  # not on the hub, no network, no local copy: one line, not four chained tracebacks
        raise ConfigError("model.name_or_path", f"cannot load `{source}`: {str(exc).splitlines()[0][:300]}",
                          "check the hub id; offline, give a local folder written by save_pretrained (or download it "
                          "once online: the hub cache is reused)") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(cfg: ModelConfig, source: str, device: torch.device) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[cfg.dtype])
    model.to(device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()
    return model


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a user prompt: through the chat template when the tokenizer has one, else plain text.
    The one place prompts are tokenized (training, evaluation, warm start and every engine agree)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return tokenizer(text, add_special_tokens=False)["input_ids"]
