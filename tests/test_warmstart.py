"""SFT warm start: completion-only labels, loss falls, results are cached, the band is reached (slow); the
same bits whatever the caller's threads, shipped folders used first and verified, the start hash of a run."""

import dataclasses
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM

from conftest import smoke_config
from isopo_bench import metric_names as M
from isopo_bench import shipped_warm_starts as shipping
from isopo_bench import warmstart
from isopo_bench.tasks.arithmetic import ArithmeticSettings
from isopo_bench.config import ModelConfig, RunConfig, TaskConfig
from isopo_bench.model_identity import start_identity
from isopo_bench.models import build_char_tokenizer, encode_prompt, model_source
from isopo_bench.reproducible import reproducible_cpu
from isopo_bench.trainer import train
from isopo_bench.warmstart import WarmStartConfig, from_run_config, sft_batch, warm_start

SMALL_MODEL = ModelConfig(tiny_hidden_size=64, tiny_layers=2, tiny_heads=2, tiny_kv_heads=1, tiny_intermediate_size=128)
EASY_TASK = TaskConfig(settings=ArithmeticSettings(num_terms=2, max_operand=9, ops="+"))


def small_config(**changes) -> WarmStartConfig:
    base = dict(
        model=SMALL_MODEL, task=EASY_TASK, lr=3e-3, batch_size=16, warmup_steps=10, eval_items=16, max_new_tokens=12
    )
    return WarmStartConfig(**(base | changes))


def test_labels_cover_completion_and_eos_only():
    tok = build_char_tokenizer()
    batch = sft_batch(tok, ["1+2=?", "10+20=?"], ["1+2=3\n#### 3", "#### 30"])
    prompt0 = encode_prompt(tok, "1+2=?")  # chat template, as the trainer builds prompts
    completion0 = tok("1+2=3\n#### 3", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert batch["input_ids"][0].tolist() == prompt0 + completion0
    assert batch["labels"][0].tolist() == [-100] * len(prompt0) + completion0
    row1 = encode_prompt(tok, "10+20=?") + tok("#### 30", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    pad = len(prompt0 + completion0) - len(row1)
    assert batch["attention_mask"][1].tolist() == [1] * len(row1) + [0] * pad
    assert batch["labels"][1].tolist()[len(row1):] == [-100] * pad


def test_loss_falls_and_second_call_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ISOPO_BENCH_CACHE", str(tmp_path))
    torch.set_num_threads(1)
    # target_low 1.0 is out of reach: exactly max_steps steps run.
    cfg = small_config(max_steps=60, eval_every=30, target_low=1.0, target_high=1.0)
    folder = warm_start(cfg)
    report = json.loads((folder / "warmstart.json").read_text())
    assert report["steps"] == 60 and [h["step"] for h in report["history"]] == [30, 60]
    # Cross-entropy starts near ln(99 tokens) ~ 4.6 and drops below 1.0 nat/token within 60 steps.
    assert report["initial_loss"] > 3.5
    assert report["history"][-1]["loss"] < 1.0
    assert folder.parent == tmp_path / "warmstart" and (folder / "config.json").exists()

    def no_training(*args):
        raise AssertionError("a cached warm start must not train again")

    monkeypatch.setattr(warmstart, "_train", no_training)
    assert warm_start(cfg) == folder
    assert warm_start(small_config(max_steps=60, eval_every=30, target_low=1.0, target_high=1.0, threads=1)) == folder


def test_run_config_maps_to_matching_warm_start():
    run = RunConfig(model=ModelConfig(init_from="/somewhere", tiny_layers=2), task=EASY_TASK, seed=7)
    cfg = from_run_config(run)
    assert (cfg.model.init_from, cfg.model.tiny_layers, cfg.task, cfg.seed) == ("", 2, EASY_TASK, 7)
    assert cfg.key() != WarmStartConfig().key() and cfg.key() == from_run_config(run).key()


@pytest.mark.slow
def test_reaches_sampled_accuracy_band(tmp_path, monkeypatch):
    monkeypatch.setenv("ISOPO_BENCH_CACHE", str(tmp_path))
    torch.set_num_threads(1)
    folder = warm_start(small_config(max_steps=600, eval_every=25, eval_every_fine=25, eval_items=64))
    report = json.loads((folder / "warmstart.json").read_text())
    assert report["sampled_accuracy"] >= 0.25 and report["in_band"], report["history"]


# ------------------------------------------------------------------------------------------------
NOT_THE_MODEL = ("warmstart.json", "MANIFEST.sha256")


def hand_start_hash(folder) -> str:
    """sha256 over (name, NUL, bytes) of the model's files in name order: what start_identity must equal."""
    digest = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name not in NOT_THE_MODEL and p.suffix in (".safetensors", ".json", ".jinja", ".txt"):
            digest.update(p.name.encode() + b"\0" + p.read_bytes())
    return "content:" + digest.hexdigest()[:16]


def test_reproducible_cpu_seeds_inside_and_restores_the_caller():
    torch.set_num_threads(2)
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    with reproducible_cpu(7):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        assert torch.equal(torch.rand(4), torch.rand(4, generator=torch.Generator().manual_seed(7)))
        assert random.random() == random.Random(7).random() and np.random.rand() == np.random.RandomState(7).rand()
    # The caller's streams continue where they were, as if nothing had drawn from them.
    assert torch.equal(torch.rand(4), torch.rand(4, generator=torch.Generator().manual_seed(123)))
    assert random.random() == random.Random(123).random() and np.random.rand() == np.random.RandomState(123).rand()
    assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)


def test_same_bits_from_two_fresh_caches_at_1_and_2_caller_threads(tmp_path, monkeypatch):
    # The default tiny model (hidden 128): on this machine 10 SFT steps at 1 and at 2 torch threads, without
    # the single-thread context, ended in different weights (sha256 e8502e33... vs b75a93f9...).
    cfg = WarmStartConfig(task=EASY_TASK, lr=3e-3, batch_size=32, warmup_steps=10, eval_items=8, max_new_tokens=8,
                          max_steps=10, eval_every=10, target_low=1.0, target_high=1.0)
    hashes = []
    for threads in (1, 2):
        monkeypatch.setenv("ISOPO_BENCH_CACHE", str(tmp_path / f"cache{threads}"))
        torch.set_num_threads(threads)
        folder = warm_start(cfg)
        assert torch.get_num_threads() == threads  # the caller's setting is restored
        assert json.loads((folder / "warmstart.json").read_text())["torch_threads"] == 1
        hashes.append((hand_start_hash(folder), start_identity(str(folder))))
    torch.set_num_threads(1)
    assert hashes[0] == hashes[1] and hashes[0][0] == hashes[0][1]
    assert cfg.key() == dataclasses.replace(cfg, threads=1).key() == dataclasses.replace(cfg, threads=0).key()
    assert dataclasses.replace(cfg, threads=2).key() != cfg.key()  # another thread count trains other bits


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small warm start trained into its own cache: (config, folder)."""
    cache = tmp_path_factory.mktemp("ws-cache")
    cfg = small_config(max_steps=4, eval_every=4, target_low=1.0, target_high=1.0, eval_items=8, max_new_tokens=8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ISOPO_BENCH_CACHE", str(cache))
        return cfg, warm_start(cfg)


def test_export_writes_a_sha256sum_manifest_and_the_shipped_folder_is_used_first(trained, tmp_path, monkeypatch):
    cfg, folder = trained
    shipped = shipping.export(folder, tmp_path / "warm_starts")
    assert shipped == tmp_path / "warm_starts" / cfg.key()
    files = sorted(p.name for p in folder.iterdir())
    listed = [line.split("  ") for line in (shipped / "MANIFEST.sha256").read_text().splitlines()]
    assert [name for _, name in listed] == files and "warmstart.json" in files and "model.safetensors" in files
    assert all(digest == hashlib.sha256((folder / name).read_bytes()).hexdigest() for digest, name in listed)
    assert shipping.export(folder, tmp_path / "warm_starts") == shipped  # the same files again: kept as it is

    monkeypatch.setattr(shipping, "SHIPPED_ROOT", tmp_path / "warm_starts")
    monkeypatch.setenv("ISOPO_BENCH_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(warmstart, "_train", lambda *a: pytest.fail("a shipped warm start must not be trained"))
    assert warm_start(cfg) == shipped
    assert start_identity(str(shipped)) == start_identity(str(folder)) == hand_start_hash(shipped)
    assert not (tmp_path / "empty-cache" / "warmstart").exists()


def test_shipped_folder_that_does_not_match_its_manifest_is_refused(trained, tmp_path, monkeypatch):
    cfg, folder = trained
    monkeypatch.setattr(shipping, "SHIPPED_ROOT", tmp_path)
    shipped = shipping.export(folder, tmp_path)
    weights = shipped / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    damaged = r"model\.safetensors has sha256 .* manifest says .*Fix: restore"
    with pytest.raises(shipping.ShippedWarmStartError, match=damaged):
        warm_start(cfg)
    weights.write_bytes((folder / "model.safetensors").read_bytes())
    assert warm_start(cfg) == shipped  # repaired
    (shipped / "extra.json").write_text("{}")
    with pytest.raises(shipping.ShippedWarmStartError, match=r"not in the manifest: \['extra.json'\]"):
        warm_start(cfg)
    (shipped / "extra.json").unlink()
    (shipped / "MANIFEST.sha256").unlink()
    with pytest.raises(shipping.ShippedWarmStartError, match="has no MANIFEST.sha256"):
        warm_start(cfg)
    (shipped / "warmstart.json").write_text("{}")  # another, consistent folder under the same key
    shipping.write_manifest(shipped)
    assert warm_start(cfg) == shipped
    with pytest.raises(shipping.ShippedWarmStartError, match="already ships another warm start under this key"):
        shipping.export(folder, tmp_path)


def test_export_from_the_command_line(trained, tmp_path, monkeypatch, capsys):
    cfg, folder = trained
    monkeypatch.setenv("ISOPO_BENCH_CACHE", str(folder.parents[1]))  # the fixture's cache: nothing trains
    monkeypatch.setattr(warmstart, "_train", lambda *a: pytest.fail("the cached warm start must be exported"))
    argv = ["--model.tiny-hidden-size", "64", "--model.tiny-layers", "2", "--model.tiny-heads", "2",
            "--model.tiny-kv-heads", "1", "--model.tiny-intermediate-size", "128", "--task.num-terms", "2",
            "--task.max-operand", "9", "--task.ops", "+", "--lr", "3e-3", "--batch-size", "16", "--warmup-steps", "10",
            "--eval-items", "8", "--max-new-tokens", "8", "--max-steps", "4", "--eval-every", "4", "--target-low", "1.0",
            "--target-high", "1.0", "--export", "--export-dir", str(tmp_path / "ship")]
    assert warmstart.main(argv) == 0
    assert f"exported to {tmp_path / 'ship' / cfg.key()}" in capsys.readouterr().out
    assert shipping.shipped_folder(cfg.key(), tmp_path / "ship") == tmp_path / "ship" / cfg.key()


def test_a_real_run_records_its_start_hash_model_and_display(trained, tmp_path, monkeypatch):
    cfg, folder = trained
    monkeypatch.chdir(tmp_path)  # MLflow's artifacts land next to the store, not in the checkout
    run = train(smoke_config(tmp_path, **{"model.init_from": str(folder), "optim.steps": 1}))
    tags = MlflowClient(smoke_config(tmp_path).tracking.uri).get_run(run.run_id).data.tags
    start = hand_start_hash(folder)
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).parameters())  # tied: counted once
    assert tags[M.TAG_START_HASH] == start
    assert tags[M.TAG_MODEL] == f"warmstart/{cfg.key()}"  # where the folder lies is not part of the model
    assert tags[M.TAG_MODEL_DISPLAY] == (f"tiny-qwen3 {params / 1e3:.3g}K + warm start arithmetic(num_terms=2, "
                                         f"max_operand=9, ops=+) [{start[len('content:'):][:8]}]")
    (tmp_path / "plain").mkdir()
    plain_cfg = smoke_config(tmp_path / "plain", **{"optim.steps": 1})
    plain = train(plain_cfg)  # the random tiny model: hashed from its cached folder
    plain_tags = MlflowClient(plain_cfg.tracking.uri).get_run(plain.run_id).data.tags
    tiny = Path(model_source(plain_cfg.model, seed=0))
    assert plain_tags[M.TAG_START_HASH] == hand_start_hash(tiny) and plain_tags[M.TAG_MODEL] == "tiny"
    assert plain_tags[M.TAG_MODEL_DISPLAY].startswith("tiny-qwen3 ")
