"""Atomic checkpoints: model (safetensors), optimizer, scheduler, RNG states, algorithm statistics and the
trainer's own counters. A checkpoint folder is written beside the old one and swapped in with a rename,
so a crash mid-write always leaves the last complete checkpoint."""

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

CHECKPOINT_DIR = "checkpoint"
FULL_STATES = "full_states.pt"
"""Written instead of model.safetensors by FSDP2 runs: gathered (unsharded) model and optimizer state dicts
keyed by parameter name (torch.distributed.checkpoint.state_dict's full format)."""


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, algorithm, trainer_state: dict,
                    full_states: tuple[dict, dict] | None = None) -> Path:
    """`full_states` = (model, optimizer) state dicts gathered from FSDP2 shards; None: read them from
    `model` and `optimizer` (one process or DDP)."""
    final = run_dir / CHECKPOINT_DIR
    tmp = run_dir / f"{CHECKPOINT_DIR}.tmp"
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
    old = run_dir / f"{CHECKPOINT_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_trainer_state(run_dir: Path) -> dict | None:
    path = run_dir / CHECKPOINT_DIR / "trainer_state.json"
    if not path.exists():
        old = run_dir / f"{CHECKPOINT_DIR}.old" / "trainer_state.json"  # crash between the two renames
        if not old.exists():
            return None
        os.replace(old.parent, run_dir / CHECKPOINT_DIR)
    return json.loads(path.read_text())


def load_checkpoint(run_dir: Path, model, optimizer, scheduler, algorithm, restore_full=None) -> dict:
    """`restore_full(model_state, optimizer_state)` scatters gathered FSDP2 states back into the shards;
    required for (and only for) a checkpoint an FSDP2 run wrote."""
    folder = run_dir / CHECKPOINT_DIR
    state = torch.load(folder / "training_state.pt", weights_only=False)
    if (folder / FULL_STATES).exists() != (restore_full is not None):
        raise IsopoBenchError(
            f"the checkpoint in {folder} was written by a run {'with' if restore_full is None else 'without'} FSDP2 "
            "sharding. Fix: resume with the same --parallel.mode as the run that wrote it")
    if restore_full is not None:
        full = torch.load(folder / FULL_STATES, weights_only=False)
        restore_full(full["model"], full["optimizer"])
    else:
        load_model(model, str(folder / "model.safetensors"), device=str(next(model.parameters()).device))
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    algorithm.load_state_dict(state["algorithm"])
    set_rng_state(state["rng"])
    return json.loads((folder / "trainer_state.json").read_text())


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
