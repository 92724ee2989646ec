"""Atomic checkpoints: model (safetensors), optimizer, scheduler, RNG states, algorithm statistics and the
trainer's own counters. A checkpoint folder is written beside the old one and swapped in with a rename,
so a crash mid-write always leaves the last complete checkpoint.

Integrity: the last file written into a checkpoint is manifest.json (atomically: written aside, fsynced,
renamed), holding the size and sha256 of every other file. A resume verifies every file against it before
reading anything, so a truncated, zeroed, replaced or deleted file is an error naming that file and the fix,
never a silent resume from damaged weights. Everything is loaded with torch.load(weights_only=True): a
checkpoint holds tensors, numbers, strings and containers only (the RNG states are stored as tensors), so a
run folder shared on a cluster cannot execute code in the process that resumes it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from isopo_bench.errors import IsopoBenchError
from isopo_bench.finite_guard import check_finite_model
from isopo_bench.model_identity import file_sha256

CHECKPOINT_DIR = "checkpoint"
FULL_STATES = "full_states.pt"
"""Written instead of model.safetensors by FSDP2 runs: gathered (unsharded) model and optimizer state dicts
keyed by parameter name (torch.distributed.checkpoint.state_dict's full format)."""


MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


class CheckpointError(IsopoBenchError):
    """A checkpoint is incomplete or damaged; the message names the file and the fix."""


def damaged_fix(folder: Path) -> str:
    return (f"restore {folder} from a backup; or delete {folder} and run the same command with --resume to retrain "
            "this run from step 0 in the same MLflow run (steps it already logged are not logged twice); or set "
            "--tracking.output-dir to start a separate copy")


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # tensors: weights_only-safe
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, algorithm, trainer_state: dict,
                    full_states: tuple[dict, dict] | None = None) -> Path:
    """`full_states` = (model, optimizer) state dicts gathered from FSDP2 shards; None: read them from
    `model` and `optimizer` (one process or DDP)."""
    final = run_dir / CHECKPOINT_DIR
    tmp = run_dir / f"{CHECKPOINT_DIR}.tmp"
    if full_states is None:
        check_finite_model(model, "refusing to checkpoint")  # a checkpoint only from a finite state
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if full_states is None:
        save_model(model, str(tmp / "model.safetensors"))  # handles tied lm_head/embedding
    else:
        torch.save({"model": full_states[0], "optimizer": full_states[1]}, tmp / FULL_STATES)
    torch.save(
        {"optimizer": optimizer.state_dict() if full_states is None else None, "scheduler": scheduler.state_dict(),
         "algorithm": algorithm.state_dict(), "rng": rng_state()},
        tmp / "training_state.pt",
    )
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    write_manifest(tmp)  # last: a checkpoint without a valid manifest is incomplete
    old = run_dir / f"{CHECKPOINT_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_trainer_state(run_dir: Path) -> dict | None:
    folder = run_dir / CHECKPOINT_DIR
    path = folder / "trainer_state.json"
    if not path.exists():
        old = run_dir / f"{CHECKPOINT_DIR}.old" / "trainer_state.json"  # crash between the two renames
        if not old.exists():
            if folder.exists():  # only damage leaves a checkpoint folder without it
                raise CheckpointError(f"the checkpoint file {path} is missing. Fix: {damaged_fix(folder)}")
            return None
        os.replace(old.parent, folder)
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"the checkpoint file {path} is unreadable ({exc}). Fix: {damaged_fix(folder)}") from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path) -> None:
    """manifest.json with the size and sha256 of every file in `folder`, written atomically after them."""
    files = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST):
        _fsync(path)
        files[path.name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    tmp = folder / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1))
    _fsync(tmp)
    os.replace(tmp, folder / MANIFEST)
    _fsync(folder)


def verify_checkpoint(folder: Path) -> None:
    """Every file the manifest lists is present with its size and sha256; CheckpointError naming the
    first one that is not."""
    manifest = folder / MANIFEST
    if not manifest.exists():
        raise CheckpointError(f"the checkpoint manifest {manifest} is missing (the checkpoint was written by an older isopo-bench, "
                              f"whose checkpoints cannot be verified or loaded safely, or the file was deleted). "
                              f"Fix: {damaged_fix(folder)}")
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise CheckpointError(f"the checkpoint manifest {manifest} is unreadable ({exc}). Fix: {damaged_fix(folder)}") from None
    signature = []
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"the checkpoint file {path} is missing. Fix: {damaged_fix(folder)}")
        stat = path.stat()
        if stat.st_size != entry["bytes"]:
            raise CheckpointError(f"the checkpoint file {path} has {stat.st_size} bytes, {entry['bytes']} were written "
                                  f"(truncated or overwritten). Fix: {damaged_fix(folder)}")
        signature.append((name, stat.st_ino, stat.st_size, stat.st_mtime_ns, entry["sha256"]))
    if _VERIFIED.get(str(folder)) == signature:
        return  # hashed by this process already (the resume preflight) and not touched since
    for name, entry in files.items():
        if file_sha256(folder / name) != entry["sha256"]:
            raise CheckpointError(f"the checkpoint file {folder / name} is damaged: its content differs from what was "
                                  f"written (sha256 mismatch). Fix: {damaged_fix(folder)}")
    _VERIFIED[str(folder)] = signature


_VERIFIED: dict[str, list] = {}


def verify_run_checkpoint(run_dir: Path) -> None:
    """Before a resume loads anything: the run's checkpoint, when it has one, is complete and undamaged."""
    if read_trainer_state(run_dir) is not None:
        verify_checkpoint(run_dir / CHECKPOINT_DIR)


def load_checkpoint(run_dir: Path, model, optimizer, scheduler, algorithm, restore_full=None) -> dict:
    """`restore_full(model_state, optimizer_state)` scatters gathered FSDP2 states back into the shards;
    required for (and only for) a checkpoint an FSDP2 run wrote."""
    folder = run_dir / CHECKPOINT_DIR
    verify_checkpoint(folder)
    state = _safe_load(folder / "training_state.pt")
    if (folder / FULL_STATES).exists() != (restore_full is not None):
        raise IsopoBenchError(
            f"the checkpoint in {folder} was written by a run {'with' if restore_full is None else 'without'} FSDP2 "
            "sharding. Fix: resume with the same --parallel.mode as the run that wrote it")
    if restore_full is not None:
        full = _safe_load(folder / FULL_STATES)
        restore_full(full["model"], full["optimizer"])
    else:
        load_model(model, str(folder / "model.safetensors"), device=str(next(model.parameters()).device))
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    algorithm.load_state_dict(state["algorithm"])
    set_rng_state(state["rng"])
    if restore_full is None:
        check_finite_model(model, f"the checkpoint in {folder}")
    return read_trainer_state(run_dir)


def _safe_load(path: Path):
    """torch.load of tensors and plain containers only (no pickled code)."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors have many types
        raise CheckpointError(f"the checkpoint file {path} cannot be loaded safely ({type(exc).__name__}: "
                              f"{str(exc)[:300]}). Fix: {damaged_fix(path.parent)}") from None


def export_model(model, tokenizer, folder: Path, state_dict: dict | None = None) -> Path:
    """A plain save_pretrained folder (for evaluation harnesses and other engines); `state_dict`: the
    gathered weights of an FSDP2-sharded model."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if state_dict is not None and getattr(model.config, "tie_word_embeddings", False):
        # Gathered weights are separate tensors: drop the tied head, as save_pretrained does for a plain model.
        state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
