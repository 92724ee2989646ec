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

CHECKPOINT_DIR = "checkpoint"


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


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, algorithm, trainer_state: dict) -> Path:
    final = run_dir / CHECKPOINT_DIR
    tmp = run_dir / f"{CHECKPOINT_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))  # handles tied lm_head/embedding
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
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


def load_checkpoint(run_dir: Path, model, optimizer, scheduler, algorithm) -> dict:
    folder = run_dir / CHECKPOINT_DIR
    load_model(model, str(folder / "model.safetensors"), device=str(next(model.parameters()).device))
    state = torch.load(folder / "training_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    algorithm.load_state_dict(state["algorithm"])
    set_rng_state(state["rng"])
    return json.loads((folder / "trainer_state.json").read_text())


def export_model(model, tokenizer, folder: Path) -> Path:
    """A plain save_pretrained folder (for evaluation harnesses and other engines)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
