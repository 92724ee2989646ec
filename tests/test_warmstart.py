"""SFT warm start: completion-only labels, loss falls, results are cached, the band is reached (slow)."""

import json

import pytest
import torch

from isopo_bench import warmstart
from isopo_bench.tasks.arithmetic import ArithmeticSettings
from isopo_bench.config import ModelConfig, RunConfig, TaskConfig
from isopo_bench.models import build_char_tokenizer, encode_prompt
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
