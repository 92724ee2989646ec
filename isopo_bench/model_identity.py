"""A model folder named by what it holds, not where it lies: the content hash that enters the config hash
for `model.init_from` and local `model.name_or_path`, so one run in two checkouts (or on two cluster nodes
sharing a store) has one identity. `start_identity` is the narrower hash of what a run starts from (the
`start_hash` tag the leaderboard compares; isopo_bench.start_point)."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

# The files that decide what a model computes; tokenizer files count too (they decide the token ids).
_CONTENT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".gguf")
# The starting point of a run (start_identity): the chat template file decides the prompts' token ids too;
# a warm start's report (timings, thread count) and a shipped folder's manifest describe the model, they
# are not it, so two bit-identical trainings share one start identity.
_START_SUFFIXES = _CONTENT_SUFFIXES + (".jinja",)
_NOT_THE_MODEL = ("warmstart.json", "MANIFEST.sha256")
_CHUNK = 1 << 20


def is_local_folder(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.path.isdir(name)


def model_identity(name: str) -> str:
    """`content:<sha256 prefix>` for a local model folder; the name itself for a hub id (or a missing
    folder, which validation reports)."""
    path = Path(name).expanduser()
    if not (is_local_folder(name) and path.is_dir()):
        return name
    return _content_hash(path, _CONTENT_SUFFIXES)


def start_identity(name: str) -> str:
    """What a run starts from: `content:<sha256 prefix>` of a local folder's weights, config, tokenizer
    and chat template (not a warm start's report or manifest); `hub:<id>` for a hub id."""
    path = Path(name).expanduser()
    if not (is_local_folder(name) and path.is_dir()):
        return f"hub:{name}"
    return _content_hash(path, _START_SUFFIXES, _NOT_THE_MODEL)


def _content_hash(path: Path, suffixes: tuple[str, ...], skip: tuple[str, ...] = ()) -> str:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in suffixes and p.name not in skip)
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _folder_digest(str(path.resolve()), stamp)


def feed_file(digest, path) -> None:
    """Stream a file into a hashlib digest (1 MiB blocks: model files do not fit a read)."""
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    feed_file(digest, path)
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _folder_digest(folder: str, stamp: tuple) -> str:
    # `stamp` (names, sizes, mtimes) is the cache key: a rewritten file is hashed again.
    digest = hashlib.sha256()
    for name, _, _ in stamp:
        digest.update(name.encode() + b"\0")
        feed_file(digest, os.path.join(folder, name))
    return f"content:{digest.hexdigest()[:16]}"
