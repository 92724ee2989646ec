"""SFT warm start: teach the random tiny model the task's answer format until RL has signal.

A random policy never writes "#### <n>", so every reward is 0 and RL cannot start. Supervised fine-tuning
on worked solutions (prompt through the same `encode_prompt` as training, completion = solution + EOS,
loss on completion tokens only) is stopped as soon as the sampled accuracy (temperature 1, the RL rollout
setting) on held-out training-split items enters [target_low, target_high]: high enough for group
advantages to be non-zero, low enough to leave room for RL to improve.

Measured on 2 shared CPU cores, 1 torch thread (tiny Qwen3, default arithmetic = 3 terms, 2 digits, +-):
lr 1e-3, batch 64 reached sampled 0.27 / greedy 0.41 at step 1300 (30 min); lr 3e-3, batch 32 stalled at
<= 0.08 after 2100 steps. The 2-term task (batch 32) reached sampled 0.27 / greedy 0.38 at step 1260
(12 min). Accuracy stays near 0 for hundreds of steps and then rises within ~100, so evaluation runs every
`eval_every` steps and every `eval_every_fine` once accuracy starts rising.
SFT items come from a seed stream disjoint from the RL runs' (seed + SFT_SEED_OFFSET) and the held-out
items are training-split items at indices no SFT step reaches, so the RL test split is never looked at.

Reproducible: training runs inside isopo_bench.reproducible.reproducible_cpu (one torch thread unless
`threads` says otherwise, deterministic algorithms, every generator seeded from `seed`, the caller's
settings restored after), so on one machine the same config trains the same bits whatever the caller's
thread count. Another machine may round differently; for the same bits everywhere, a warm start is shipped
with the package (isopo_bench.shipped_warm_starts) and used before any cache or training.

Where a warm start comes from, first match wins: the shipped folder isopo_bench/warm_starts/<key>/ (read
in place, its manifest verified), the cache cache_root()/warmstart/<key>/ (model, tokenizer,
warmstart.json), or a new training written to that cache. `isopo-bench warmstart --export` copies the
result into the shipped folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from isopo_bench.config import ModelConfig, RunConfig, TaskConfig
from isopo_bench.errors import ConfigError
from isopo_bench.models import cache_root, encode_prompt, load_policy, load_tokenizer, model_source
from isopo_bench.plugins import ENGINES, TASKS
from isopo_bench.reproducible import reproducible_cpu
from isopo_bench.rollout.api import SamplingSettings
from isopo_bench.shipped_warm_starts import SHIPPED_ROOT, export, shipped_folder

log = logging.getLogger(__name__)
SFT_SEED_OFFSET = 1_000_003
HELD_OUT_START = 10**9  # training-split indices SFT never reaches
VERSION = 1


@dataclass(frozen=True)
class WarmStartConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to fine-tune (default: the random tiny Qwen3)."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """Task whose worked solutions are the SFT targets (default: arithmetic)."""
    seed: int = 0
    """Seed of the base model and of the SFT item stream."""
    lr: float = 1e-3
    """AdamW learning rate (constant after warmup); 3e-3 stalls on the default task."""
    warmup_steps: int = 50
    """Linear learning-rate warmup."""
    batch_size: int = 64
    """Sequences per SFT step."""
    max_steps: int = 3000
    """Give up (and save what there is) after this many steps."""
    target_low: float = 0.25
    """Stop once sampled held-out accuracy reaches this."""
    target_high: float = 0.6
    """Upper end of the band; an overshoot is saved with a warning (evaluate more often to avoid it)."""
    eval_every: int = 50
    """Steps between evaluations while accuracy is ~0."""
    eval_every_fine: int = 10
    """Steps between evaluations once sampled accuracy reaches a third of target_low."""
    eval_items: int = 128
    """Held-out items per evaluation (sampled once each at temperature 1)."""
    max_new_tokens: int = 40
    """Completion budget for the evaluation samples."""
    threads: int = 1
    """torch CPU threads of the SFT (the caller's count is restored after; 0 = 1). One thread trains the same
    bits whatever the caller's setting; another count can round differently, so it enters the cache key."""
    direct_answer_fraction: float = 0.0
    """Fraction of SFT targets written as the bare answer line ("#### 50") instead of the worked solution,
    chosen per question by a hash. The warm start then knows two behaviours, showing its work (mostly right)
    and answering directly (mostly wrong for a model this small), and picks between them at its first
    token: reward can teach it which to prefer, the kind of gain RL gives a pretrained model (reasoning
    style, format) rather than a new skill."""

    def key(self) -> str:
        d = dataclasses.asdict(self) | {"version": VERSION}
        threads = d.pop("threads")
        if threads not in (0, 1):  # one thread (the suites' setting) keeps the keys made before threads counted
            d["threads"] = threads
        if not d["direct_answer_fraction"]:
            d.pop("direct_answer_fraction")  # keys of warm starts from before the field existed stay valid
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def from_run_config(run: RunConfig) -> WarmStartConfig:
    """The warm start matching a run: same base model, task and seed, ignoring any init_from."""
    model = dataclasses.replace(run.model, init_from="")
    task = dataclasses.replace(run.task, eval_items=TaskConfig().eval_items)  # RL eval size is not an SFT input
    return WarmStartConfig(model=model, task=task, seed=run.seed, max_new_tokens=run.rollout.max_new_tokens)


def warm_start(cfg: WarmStartConfig | RunConfig) -> Path:
    """Folder of the warm-started model: the shipped one for this key, else the cached one, else trained
    once (reproducibly) and cached."""
    cfg = from_run_config(cfg) if isinstance(cfg, RunConfig) else cfg
    found = find_warm_start(cfg)
    if found is not None:
        return found
    folder = cache_root() / "warmstart" / cfg.key()
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    with reproducible_cpu(cfg.seed, max(cfg.threads, 1)):
        report = _train(cfg, tmp)
    (tmp / "warmstart.json").write_text(json.dumps(report, indent=1))
    if folder.exists():  # another process finished first: keep its result
        shutil.rmtree(tmp)
    else:
        tmp.replace(folder)
    return folder


def find_warm_start(cfg: WarmStartConfig) -> Path | None:
    """The shipped (manifest verified) or cached folder of this warm start; None when it would be trained."""
    for name in ("max_steps", "batch_size", "eval_every", "eval_every_fine", "eval_items", "max_new_tokens"):
        if getattr(cfg, name) < 1:
            raise ConfigError(name, f"must be >= 1, got {getattr(cfg, name)}", "use a positive value")
    if cfg.threads < 0:
        raise ConfigError("threads", f"must be >= 0, got {cfg.threads}", "use 1 (reproducible) or a thread count")
    shipped = shipped_folder(cfg.key())
    if shipped is not None:
        return shipped
    folder = cache_root() / "warmstart" / cfg.key()
    return folder if (folder / "warmstart.json").exists() else None


def _train(cfg: WarmStartConfig, out: Path) -> dict:
    source = model_source(cfg.model, cfg.seed)
    tokenizer = load_tokenizer(source)
    model = load_policy(dataclasses.replace(cfg.model, dtype="float32"), source, torch.device("cpu"))
    task = TASKS.get(cfg.task.name)(cfg.task, cfg.seed + SFT_SEED_OFFSET)
    held_out = [task.item("train", HELD_OUT_START + k) for k in range(cfg.eval_items)]
    start = time.perf_counter()
    report = _sft_until_band(cfg, model, tokenizer, task, held_out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    report["greedy_accuracy"] = sampled_accuracy(model, tokenizer, task, held_out, cfg.max_new_tokens, 0, 0.0)
    report |= {"seconds": round(time.perf_counter() - start, 1), "torch_threads": torch.get_num_threads()}
    return report | {"key": cfg.key(), "config": dataclasses.asdict(cfg)}


def _sft_until_band(cfg: WarmStartConfig, model, tokenizer, task, held_out) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)))
    history, accuracy, next_eval, losses = [], 0.0, cfg.eval_every, []
    torch.manual_seed(cfg.seed)
    for step in range(1, cfg.max_steps + 1):
        items = [sft_target(item, cfg.direct_answer_fraction) for item in task.train_items(step - 1, cfg.batch_size)]
        losses.append(sft_step(model, tokenizer, task, items, optimizer))
        schedule.step()
        if step < next_eval and step < cfg.max_steps:
            continue
        accuracy = sampled_accuracy(model, tokenizer, task, held_out, cfg.max_new_tokens, seed=step)
        history.append({"step": step, "loss": losses[-1], "sampled_accuracy": accuracy})
        log.info("warm start step %d: loss %.3f, sampled accuracy %.3f", step, losses[-1], accuracy)
        if accuracy >= cfg.target_low:
            break
        # Accuracy jumps within tens of steps once it starts rising: watch closely from a third of the band.
        next_eval = step + (cfg.eval_every_fine if accuracy >= cfg.target_low / 3 else cfg.eval_every)
    if accuracy > cfg.target_high:
        log.warning("warm start overshot: sampled accuracy %.3f > %.3f", accuracy, cfg.target_high)
    in_band = cfg.target_low <= accuracy <= cfg.target_high
    return {"sampled_accuracy": accuracy, "in_band": in_band, "steps": len(losses), "initial_loss": losses[0],
            "history": history}


def sft_target(item, direct_answer_fraction: float):
    """The item with its SFT target: the worked solution, or for a hashed `direct_answer_fraction` of the
    questions only its last line (the answer)."""
    if direct_answer_fraction <= 0:
        return item
    digest = int.from_bytes(hashlib.sha256(("direct:" + item.question).encode()).digest()[:4], "big")
    if digest / 2**32 >= direct_answer_fraction:
        return item
    return dataclasses.replace(item, solution=item.solution.strip().splitlines()[-1])


def sft_batch(tokenizer, prompts: list[str], completions: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded input ids with labels -100 everywhere except on completion tokens and their EOS."""
    rows, labels = [], []
    for prompt, completion in zip(prompts, completions):
        p = encode_prompt(tokenizer, prompt)
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    label_ids = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (r, lab) in enumerate(zip(rows, labels)):
        input_ids[b, : len(r)], label_ids[b, : len(r)], mask[b, : len(r)] = torch.tensor(r), torch.tensor(lab), 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": label_ids}


def sft_step(model, tokenizer, task, items, optimizer) -> float:
    if not all(item.solution for item in items):
        raise ValueError(f"task `{task.cfg.name}` has items without worked solutions; SFT needs them")
    batch = sft_batch(tokenizer, [task.prompt(item) for item in items], [item.solution for item in items])
    model.train()
    loss = model(**batch).loss  # mean over completion tokens (labels -100 elsewhere)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())


def sampled_accuracy(model, tokenizer, task, items, max_new_tokens: int, seed: int, temperature: float = 1.0) -> float:
    """Mean task reward of one completion per item, generated by the project's HF rollout engine."""
    engine = ENGINES.get("hf")(RunConfig(), "", tokenizer, model)
    prompt_ids = [encode_prompt(tokenizer, task.prompt(item)) for item in items]
    rollout = engine.generate(
        prompt_ids, SamplingSettings(n=1, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    )
    texts = tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
    return sum(task.score(item, text) for item, text in zip(items, texts)) / max(len(items), 1)


def main(argv: list[str] | None = None) -> int:
    """`isopo-bench warmstart [--flags] [--export [--export-dir DIR]]`: train (or find) and print the folder
    and its accuracy; with --export, also copy it (with its manifest) into the shipped warm starts."""
    import argparse
    import sys

    from isopo_bench.cli_config import parse_config

    shipping = argparse.ArgumentParser(add_help=False)
    shipping.add_argument("--export", action="store_true")
    shipping.add_argument("--export-dir", default=str(SHIPPED_ROOT))
    ship, rest = shipping.parse_known_args(sys.argv[1:] if argv is None else argv)
    description = (__doc__.split("\n")[0] + f" --export [--export-dir DIR] also copies the result into DIR/<key>/ "
                   f"with a SHA256 manifest (default DIR: the package's shipped warm starts, {SHIPPED_ROOT}).")
    cfg = parse_config(WarmStartConfig, WarmStartConfig(), rest, prog="isopo-bench warmstart", description=description)
    folder = warm_start(cfg)
    report = json.loads((folder / "warmstart.json").read_text())
    print(
        f"{folder}\nsampled accuracy {report['sampled_accuracy']:.3f}, greedy {report['greedy_accuracy']:.3f}, "
        f"{report['steps']} steps, {report['seconds']} s; use --model.init_from {folder}"
    )
    if ship.export:
        print(f"exported to {export(folder, Path(ship.export_dir))}")
    return 0
