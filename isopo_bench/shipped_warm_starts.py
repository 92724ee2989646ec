"""Warm starts shipped with the package: the same starting weights on every machine.

A warm start trained here is bit-reproducible on this machine (isopo_bench.reproducible), but another CPU
or library build rounds differently and trains another model. So a chosen warm start can be shipped:
`isopo-bench warmstart --export` copies the cached folder into `isopo_bench/warm_starts/<key>/` (package
data, in the wheel) with a manifest, and `warm_start()` reads that folder in place whenever its key matches.

Layout of `warm_starts/<key>/`: the model (safetensors, config), tokenizer files, `warmstart.json` (the
training report) and `MANIFEST.sha256`, one `<sha256>  <file name>` line per other file, the format of
`sha256sum` (`cd warm_starts/<key> && sha256sum -c MANIFEST.sha256` checks it by hand). The manifest is
verified every time the folder is used: a changed, missing or unlisted file is an error, never a silently
different starting point.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from isopo_bench.errors import IsopoBenchError
from isopo_bench.model_identity import file_sha256

SHIPPED_ROOT = Path(__file__).resolve().parent / "warm_starts"
MANIFEST = "MANIFEST.sha256"
REPORT = "warmstart.json"


class ShippedWarmStartError(IsopoBenchError):
    """A shipped warm start does not match its manifest, or cannot be exported."""


def shipped_folder(key: str, root: Path | None = None) -> Path | None:
    """The verified shipped folder for a warm-start key; None when none is shipped under that key."""
    folder = (root or SHIPPED_ROOT) / key
    if not folder.is_dir():
        return None
    verify_manifest(folder)
    return folder


def write_manifest(folder: Path) -> None:
    lines = [f"{file_sha256(p)}  {p.name}" for p in _listed_files(folder)]
    (folder / MANIFEST).write_text("\n".join(lines) + "\n")


def verify_manifest(folder: Path) -> None:
    fix = (f"restore the folder (`git checkout -- {folder}` in a checkout, reinstall the package otherwise), or "
           f"delete {folder} to train this warm start locally instead")
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise ShippedWarmStartError(f"shipped warm start {folder} has no {MANIFEST}. Fix: {fix}")
    expected = _read_manifest(manifest)
    present = {p.name for p in _listed_files(folder)}
    if present != set(expected):
        missing, unlisted = sorted(set(expected) - present), sorted(present - set(expected))
        raise ShippedWarmStartError(f"shipped warm start {folder} does not hold the files its manifest lists "
                                    f"(missing: {missing or 'none'}; not in the manifest: {unlisted or 'none'}). "
                                    f"Fix: {fix}")
    for name, digest in expected.items():
        actual = file_sha256(folder / name)
        if actual != digest:
            raise ShippedWarmStartError(f"shipped warm start file {folder / name} has sha256 {actual[:16]}..., its "
                                        f"manifest says {digest[:16]}... (changed or damaged). Fix: {fix}")


def export(trained: Path, root: Path | None = None) -> Path:
    """Copy a trained warm start (a cache folder named by its key) to `root/<key>/` with its manifest.
    An existing shipped folder is kept when it holds the same files, and is an error otherwise."""
    if not (trained / REPORT).is_file():
        raise ShippedWarmStartError(f"{trained} is not a trained warm start (no {REPORT}). Fix: export the "
                                    "folder `isopo-bench warmstart` prints")
    dest = (root or SHIPPED_ROOT) / trained.name
    if dest.resolve() == trained.resolve():
        verify_manifest(dest)
        return dest
    if dest.exists():
        verify_manifest(dest)
        if _read_manifest(dest / MANIFEST) != {p.name: file_sha256(p) for p in _listed_files(trained)}:
            raise ShippedWarmStartError(f"{dest} already ships another warm start under this key. Fix: delete "
                                        f"{dest} first if the new one should replace it")
        return dest
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True)
    for p in _listed_files(trained):
        shutil.copyfile(p, tmp / p.name)
    write_manifest(tmp)
    tmp.replace(dest)
    return dest


def _listed_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)


def _read_manifest(manifest: Path) -> dict[str, str]:
    entries = {}
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise ShippedWarmStartError(f"{manifest} line {number} is not `<sha256>  <file name>`: {line[:80]!r}. "
                                        f"Fix: write it again with `isopo-bench warmstart --export`")
        entries[name] = digest
    return entries
