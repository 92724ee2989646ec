"""Overhead benchmark: the wall-clock of one policy-update step for every registered algorithm.

One step = zero_grad, forward + backward over the microbatches (inside the algorithm's backward context),
finalize_grads, gradient clipping and an AdamW step, exactly the trainer's update. All algorithms run in
one process on the same model and the same batches (algorithms that need pi_old get the current log-probs,
detached, computed before timing), interleaved round-robin and repeated; the table reports the median and
its ratio to REINFORCE's median. ISOPO runs in both fast and faithful mode.

Shapes: `tiny` (the project's tiny Qwen3), `qwen3-0.6b` (Qwen3-0.6B layer widths: hidden 1024, MLP 3072,
16 query heads x head_dim 128 with 8 KV heads, reduced to depth 2 and an 8192-token vocabulary, T = 512,
B = 8), `cpu-tier` (the quick and cpu suites' update: tiny Qwen3, short sequences, 4 microbatches of 8) and a
sweep varying width, sequence length, microbatch size and probe count around a smaller base.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from dataclasses import dataclass

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from isopo_bench.batch import BatchTotals, TrainBatch, pad_and_stack, sequence_logprobs
from isopo_bench.config import AlgorithmConfig
from isopo_bench.plugin_settings import algorithm_presets, build_algorithm, resolved
from isopo_bench.plugins import ALGORITHMS
from isopo_bench.flop_floor import floor_columns
from isopo_bench.step_driver import accumulate

BASELINE = "reinforce"


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    vocab: int
    seq_len: int
    """Longest sequence T; lengths are spread over [T/2, T] so that padding is realistic."""
    microbatch: int
    """Sequences per microbatch B."""
    microbatches: int = 1
    num_probes: int = 250
    prompt_fraction: float = 0.25
    """Share of each sequence that is prompt (the rest is response: the chunked head's rows)."""


TINY = Shape("tiny", 128, 256, 4, 2, 32, 4, 99, 96, 8, microbatches=2)
QWEN3_06B = Shape("qwen3-0.6b", 1024, 3072, 16, 8, 128, 2, 8192, 512, 8)
SWEEP_BASE = Shape("sweep", 512, 1536, 8, 4, 64, 2, 4096, 256, 8)
CPU_TIER = Shape("cpu-tier", 128, 256, 4, 2, 32, 4, 99, 40, 8, microbatches=4, prompt_fraction=0.65)
"""The quick and cpu suites' update (isopo_bench.suites.cpu_tier_base): the tiny Qwen3, 26-token chat prompts
with completions of ~8 tokens (<= 32), 64 samples per rollout in 2 minibatches of 4 microbatches of 8, so
that their in-suite update-time ratios have a benchmark of the same shape (lengths here: 20-40)."""


def sweep_shapes(base: Shape = SWEEP_BASE) -> list[Shape]:
    """One factor at a time around `base`: width, sequence length, microbatch size, probe count."""
    def vary(label: str, **changes) -> Shape:
        return dataclasses.replace(base, name=f"{base.name}:{label}", **changes)

    return [
        vary("base"),
        vary("width=256", hidden=256, intermediate=768, heads=4, kv_heads=2),
        vary("width=1024", hidden=1024, intermediate=3072, heads=16, kv_heads=8),
        vary("T=128", seq_len=128),
        vary("T=1024", seq_len=1024),
        vary("B=4", microbatch=4),
        vary("B=16", microbatch=16),
        vary("S=50", num_probes=50),
        vary("S=1000", num_probes=1000),
    ]


ISOPO_AND_BASELINE = ["reinforce", "isopo", "isopo-interacting"]
SUITES = {
    # name: (shapes, default algorithms (None = all registered), include ISOPO's faithful mode)
    "tiny": (lambda: [TINY], None, True),
    "main": (lambda: [QWEN3_06B], None, True),
    "sweep": (sweep_shapes, ISOPO_AND_BASELINE, False),
    "tier": (lambda: [CPU_TIER], None, True),
}


def build_model(shape: Shape, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    config = Qwen3Config(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim, max_position_embeddings=max(2048, shape.seq_len), tie_word_embeddings=True,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).to(device=device, dtype=dtype).train()


def build_microbatches(shape: Shape, device: torch.device, seed: int = 0) -> list[TrainBatch]:
    gen = torch.Generator().manual_seed(seed)
    n = shape.microbatch * shape.microbatches
    lengths = torch.randint(shape.seq_len // 2, shape.seq_len + 1, (n,), generator=gen).tolist()
    lengths[0] = shape.seq_len
    seqs = [torch.randint(1, shape.vocab, (L,), generator=gen).tolist() for L in lengths]
    cut = [int(len(s) * shape.prompt_fraction) for s in seqs]
    prompts = [s[:c] for s, c in zip(seqs, cut)]
    completions = [s[c:] for s, c in zip(seqs, cut)]
    ids, attn, resp, _ = pad_and_stack(prompts, completions, pad_token_id=0)
    adv = torch.randn(n, generator=gen)
    batch = TrainBatch(ids, attn, resp, adv).to(device)
    return [batch.select(slice(i, i + shape.microbatch)) for i in range(0, n, shape.microbatch)]


def variants(names: list[str], faithful: bool) -> list[tuple[str, AlgorithmConfig]]:
    """(label, algorithm config) per name: the preset of that name when there is one (else the algorithm's
    defaults), plus its `<name>-faithful` preset when `faithful` and the algorithm declares one (ISOPO's
    reference-numerics mode)."""
    presets = algorithm_presets()
    out = []
    for name in names:
        cfg = presets.get(name) or resolved(AlgorithmConfig(name=name))
        has_faithful = f"{name}-faithful" in presets
        out.append((f"{name} (fast)" if has_faithful else name, cfg))
        if faithful and has_faithful:
            out.append((f"{name} (faithful)", presets[f"{name}-faithful"]))
    return out


def with_probes(cfg: AlgorithmConfig, num_probes: int) -> AlgorithmConfig:
    """The shape's probe count for algorithms whose settings have one (the non-interacting ISOPO axis)."""
    fields = {f.name for f in dataclasses.fields(cfg.settings)}
    if "num_probes" not in fields:
        return cfg
    return dataclasses.replace(cfg, settings=dataclasses.replace(cfg.settings, num_probes=num_probes))


def update_step(model, optimizer, algo, mbs: list[TrainBatch], totals: BatchTotals) -> None:
    """The trainer's policy update for one optimizer batch."""
    accumulate(algo, model, mbs, totals)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def timed(fn, device: torch.device) -> float:
    """Seconds for fn(). On CPU: this process's CPU time, which other jobs on a shared machine do not
    inflate (equal to wall time for a single-threaded run on an idle core); on CUDA: synchronised wall time."""
    if device.type != "cuda":
        start = time.process_time()
        fn()
        return time.process_time() - start
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def setup(shape: Shape, labels, device, dtype):
    """Model, optimizer, microbatches, totals and one attached algorithm per variant label."""
    model = build_model(shape, device, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-9)  # timing only: weights barely move
    mbs = build_microbatches(shape, device)
    totals = BatchTotals(
        num_tokens=float(sum(mb.response_mask_BT.sum() for mb in mbs)), num_seqs=shape.microbatch * len(mbs),
        num_microbatches=len(mbs), max_len=shape.seq_len,
    )
    with torch.no_grad():
        for mb in mbs:
            mb.old_logp_BT = sequence_logprobs(model, mb).float()
    algos = {}
    for label, algo_cfg in labels:
        algos[label] = build_algorithm(with_probes(algo_cfg, shape.num_probes))
        algos[label].attach(model)
    return model, optimizer, mbs, totals, algos


def bench_shape(shape: Shape, labels, repeats: int, warmup: int, device, dtype) -> list[dict]:
    model, optimizer, mbs, totals, algos = setup(shape, labels, device, dtype)
    times: dict[str, list[float]] = {label: [] for label in algos}
    for rep in range(warmup + repeats):
        for label, algo in algos.items():  # interleaved: drifts in machine load hit every algorithm alike
            seconds = timed(lambda: update_step(model, optimizer, algo, mbs, totals), device)
            if rep >= warmup:
                times[label].append(seconds)
    base = statistics.median(times[BASELINE]) if BASELINE in times else float("nan")
    base_min = min(times[BASELINE]) if BASELINE in times else float("nan")
    return [
        {"shape": shape.name, "T": shape.seq_len, "B": shape.microbatch, "hidden": shape.hidden,
         "probes": shape.num_probes, "algorithm": label, "median_s": statistics.median(t),
         "min_s": min(t), "ratio": statistics.median(t) / base, "ratio_min": min(t) / base_min,
         **floor_columns(shape, algos[label], mbs, dtype)}
        for label, t in times.items()
    ]


def breakdown(shape: Shape, labels, device, dtype, top: int = 8) -> list[dict]:
    """Where one update step's time goes: profiler seconds for every `isopo/*` stage (inclusive) and for the
    `top` operators whose self time differs most from REINFORCE's."""
    from torch.profiler import ProfilerActivity, profile

    model, optimizer, mbs, totals, algos = setup(shape, labels, device, dtype)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    per_label = {}
    for label, algo in algos.items():
        update_step(model, optimizer, algo, mbs, totals)  # warm-up
        with profile(activities=activities) as prof:
            timed(lambda: update_step(model, optimizer, algo, mbs, totals), device)
        attr = "device_time_total" if device.type == "cuda" else "cpu_time_total"
        self_attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        per_label[label] = {
            e.key: getattr(e, attr if e.key.startswith("isopo/") else self_attr) / 1e6 for e in prof.key_averages()
        }
    base = per_label.get(BASELINE, {})
    rows = []
    for label, ops in per_label.items():
        if label == BASELINE:
            continue
        # every engine stage, then the `top` operators whose time differs most from REINFORCE's: a cutoff
        # over both at once dropped short stages whenever an operator's difference happened to be larger
        stages = sorted((k for k in ops if k.startswith("isopo/")), key=lambda k: -ops[k])
        others = sorted((k for k in ops if not k.startswith("isopo/")), key=lambda k: -abs(ops[k] - base.get(k, 0.0)))
        for key in stages + others[:top]:
            rows.append({"algorithm": label, "op": key, "seconds": ops[key], "reinforce_seconds": base.get(key, 0.0)})
    return rows


def run_overhead(
    shapes: list[Shape], algorithms: list[str] | None = None, repeats: int = 3, warmup: int = 1,
    faithful: bool = True, device: str = "cpu", dtype: str = "float32",
) -> list[dict]:
    """Rows (one per shape and algorithm variant) with median seconds per update step and the ratio to
    REINFORCE measured in the same process."""
    names = algorithms or ALGORITHMS.names()
    if BASELINE not in names:
        names = [BASELINE] + list(names)
    dev, dt = torch.device(device), getattr(torch, dtype)
    rows = []
    for shape in shapes:
        rows += bench_shape(shape, variants(names, faithful), repeats, warmup, dev, dt)
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| shape | T | B | hidden | probes | algorithm | median s/step | ratio vs REINFORCE | ratio of minima "
             "| FLOP floor | measured / floor | S used | per-seq state MiB |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['T']} | {r['B']} | {r['hidden']} | {r['probes']} | {r['algorithm']} "
                     f"| {r['median_s']:.3f} | {r['ratio']:.3f} | {r['ratio_min']:.3f} "
                     f"| {r['floor']:.3f} | {r['ratio'] / r['floor']:.3f} | {r['probes_used']} | {r['state_mib']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isopo-bench overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", nargs="+", choices=sorted(SUITES), default=["tiny", "main", "sweep"])
    parser.add_argument("--algorithms", nargs="*", default=None, help="default: every registered algorithm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-faithful", action="store_true", help="skip ISOPO's faithful mode")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--breakdown", action="store_true", help="also profile the first shape's ISOPO steps")
    parser.add_argument("--out", default="", help="also write the rows as CSV (the dashboard's --overhead-file)")
    parser.add_argument("--memory", action="store_true", help="peak memory of one update step at the paper's "
                        "vocabulary and width, full logits vs the chunked head (isopo_bench.overhead_modes)")
    parser.add_argument("--memory-layers", type=int, default=2, help="--memory: model depth")
    parser.add_argument("--per-rollout", action="store_true", help="time each algorithm's work per rollout batch "
                        "(pi_old forward + minibatch steps where it needs pi_old) instead of per optimizer step")
    parser.add_argument("--minibatches", type=int, default=2, help="--per-rollout: optimizer steps per rollout "
                        "batch of the algorithms that need pi_old")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory or args.per_rollout:
        return _other_mode(args)
    rows, shapes = [], []
    for suite in args.suite:
        make_shapes, algorithms, faithful = SUITES[suite]
        shapes += make_shapes()
        rows += run_overhead(
            make_shapes(), args.algorithms or algorithms, args.repeats, args.warmup,
            faithful and not args.no_faithful, args.device, args.dtype,
        )
    print(markdown_table(rows))  # noqa: T201 - a CLI report
    if args.out:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.out, index=False)
    if args.breakdown:
        names = [BASELINE, "isopo", "isopo-interacting"]
        detail = breakdown(shapes[0], variants(names, False), torch.device(args.device), getattr(torch, args.dtype))
        print("\n| algorithm | op | seconds | REINFORCE seconds |\n|---|---|---:|---:|")  # noqa: T201
        for r in detail:
            print(f"| {r['algorithm']} | {r['op']} | {r['seconds']:.3f} | {r['reinforce_seconds']:.3f} |")  # noqa: T201
    return 0


def _other_mode(args) -> int:
    from isopo_bench import overhead_modes as OM

    if args.memory:
        shape = dataclasses.replace(OM.MEMORY_SHAPE, layers=args.memory_layers)
        rows = OM.run_memory(shape, args.algorithms or ["reinforce"], args.device, args.dtype, args.threads)
        print(OM.memory_table(rows))  # noqa: T201
    else:
        shapes = [s for suite in args.suite for s in SUITES[suite][0]()]
        rows = OM.run_per_rollout(shapes, args.algorithms, args.repeats, args.warmup, args.minibatches,
                                  args.device, args.dtype)
        print(OM.per_rollout_table(rows))  # noqa: T201
    if args.out:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
