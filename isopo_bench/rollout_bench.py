"""Rollout benchmark: tokens/s of HF `generate` vs vLLM on the same model folder, prompts and sampling
settings, measured in one process and printed as a markdown table with the vLLM / HF ratio.

Each engine gets one untimed warm-up call, then `repeats` timed calls, alternating between the engines
so load changes on a shared machine hit both alike (different seeds per call, the same for both
engines); tokens/s counts the generated tokens (EOS included) of the timed calls. The vLLM row also
reports its start-up time (the first one includes importing vllm) and the mean time of a full weight
sync (its per-step cost in training; HF shares the policy's weights).

    isopo-bench rollout-bench --model tiny --prompts 16 --n 4 --max-new-tokens 64 --threads 1
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass

import torch

from isopo_bench.config import RunConfig, replace
from isopo_bench.models import encode_prompt, load_policy, load_tokenizer, model_source, resolve_device
from isopo_bench.plugins import ENGINES
from isopo_bench.rollout.api import SamplingSettings


@dataclass
class BenchRow:
    engine: str
    start_s: float
    generate_s: float
    tokens: int
    sync_s: float | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.generate_s


def bench_prompts(tokenizer, count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    texts = [f"What is {rng.randint(10, 999)} + {rng.randint(10, 999)}?" for _ in range(count)]
    return [encode_prompt(tokenizer, t) for t in texts]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn) -> tuple[float, object]:
    _sync()
    start = time.perf_counter()
    result = fn()
    _sync()
    return time.perf_counter() - start, result


def run_rollout_bench(cfg: RunConfig, num_prompts: int, sampling: SamplingSettings, repeats: int) -> list[BenchRow]:
    """Rows for `hf` then `vllm`: both engines stay alive and their timed calls alternate."""
    source = model_source(cfg.model, seed=0)
    tokenizer = load_tokenizer(source)
    policy = load_policy(cfg.model, source, resolve_device(cfg.model.device))
    prompts = bench_prompts(tokenizer, num_prompts, cfg.seed)
    engines, rows = {}, {}
    try:
        for name in ("hf", "vllm"):
            start_s, engines[name] = _timed(lambda: ENGINES.get(name)(cfg, source, tokenizer, policy))
            engines[name].generate(prompts, replace(sampling, seed=sampling.seed + 10_000))  # warm-up
            rows[name] = BenchRow(name, start_s, 0.0, 0)
        for k in range(repeats):
            for name, engine in engines.items():
                seconds, rollout = _timed(lambda: engine.generate(prompts, replace(sampling, seed=sampling.seed + k)))
                rows[name].generate_s += seconds
                rows[name].tokens += rollout.num_tokens
        sync_s, _ = _timed(lambda: [engines["vllm"].sync_weights(policy) for _ in range(repeats)])
        rows["vllm"].sync_s = sync_s / repeats
    finally:
        for engine in engines.values():
            engine.close()
    return list(rows.values())


def format_table(rows: list[BenchRow], title: str) -> str:
    lines = [f"### {title}", "", "| engine | start (s) | generate (s) | tokens | tokens/s | weight sync (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        sync = "shared" if r.sync_s is None else f"{r.sync_s:.3f}"
        cells = [r.engine, f"{r.start_s:.1f}", f"{r.generate_s:.2f}", str(r.tokens), f"{r.tokens_per_s:.0f}", sync]
        lines.append("| " + " | ".join(cells) + " |")
    ratio = rows[1].tokens_per_s / rows[0].tokens_per_s
    return "\n".join(lines + ["", f"vLLM / HF tokens/s: **{ratio:.2f}x**"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="isopo-bench rollout-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="`tiny`, a save_pretrained folder or a hub id")
    p.add_argument("--prompts", type=int, default=16, help="P prompts per generate call")
    p.add_argument("--n", type=int, default=4, help="G samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--repeats", type=int, default=3, help="timed generate calls per engine")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--kv-cache-bytes", type=int, default=0, help="vLLM KV cache; 0 = engine default")
    p.add_argument("--batch-size", type=int, default=64, help="HF generation batch size")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = replace(RunConfig(), **{
        "model.name_or_path": a.model, "model.dtype": a.dtype, "model.device": a.device,
        "rollout.max_new_tokens": a.max_new_tokens, "rollout.generation_batch_size": a.batch_size,
        "rollout.vllm.kv_cache_bytes": a.kv_cache_bytes, "eval.max_new_tokens": a.max_new_tokens,
    })
    sampling = SamplingSettings(n=a.n, temperature=a.temperature, max_new_tokens=a.max_new_tokens)
    rows = run_rollout_bench(cfg, a.prompts, sampling, a.repeats)
    title = (f"Rollouts: {a.model}, {a.prompts} prompts x {a.n}, {a.max_new_tokens} new tokens, "
             f"T={a.temperature}, {a.dtype}, torch threads {torch.get_num_threads()}")
    print(format_table(rows, title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
