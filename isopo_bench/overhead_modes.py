"""Two more modes of `isopo-bench overhead`:

- `--memory`: the peak memory of one update step (forward, backward, AdamW) at the paper's vocabulary
  (151,936) and hidden size (1024) with a reduced depth, T 2048, microbatch 2: the full-logits log-prob path
  (`before`) against the chunked LM head (`after`, isopo_bench.chunked_logprobs), side by side in one run.
  Every (variant, algorithm) runs in its own subprocess. CPU: the peak RSS during the step minus the RSS
  before it (the kernel's high-water mark, reset through /proc/self/clear_refs; a 2 ms RSS sampler where
  that is refused); CUDA: max_memory_allocated minus memory_allocated before the step. AdamW's state is
  allocated by a warm-up step on a short batch first, so the figure is a steady-state step's.
- `--per-rollout`: what each algorithm does per batch of rollouts, as a ratio to REINFORCE's: algorithms
  that need pi_old (GRPO, CISPO, GSPO) run the pi_old forward over the rollout batch and then
  `--minibatches` optimizer steps on its parts; REINFORCE and ISOPO one step on the whole batch (their
  pass). The FLOP floor of each is printed beside it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

from isopo_bench import flop_floor as F
from isopo_bench import overhead as O
from isopo_bench.batch import BatchTotals, sequence_logprobs

MEMORY_SHAPE = dataclasses.replace(O.QWEN3_06B, name="paper-vocab", layers=2, vocab=151936, seq_len=2048,
                                   microbatch=2, microbatches=1)
"""The paper's vocabulary and hidden size (Qwen3-0.6B widths), reduced depth, T 2048, microbatch 2."""
VARIANTS = {"before (full logits)": "full", "after (chunked head)": "auto"}


# ------------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _hwm_bytes() <= _rss_bytes() + (64 << 20)
    except OSError:
        return False


class _Sampler:
    """Peak RSS by polling (where the high-water mark cannot be reset)."""

    def __init__(self, period_s: float = 0.002):
        self.peak, self.period, self._stop = _rss_bytes(), period_s, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def measure_step_memory(shape: O.Shape, algorithm: str, logprobs_mode: str, device: str = "cpu",
                        dtype: str = "float32") -> dict:
    """Peak extra bytes of one update step (in this process: call it in a fresh one)."""
    from isopo_bench import chunked_logprobs

    chunked_logprobs.set_mode(logprobs_mode)
    dev, dt = torch.device(device), getattr(torch, dtype)
    from isopo_bench.plugin_settings import build_algorithm

    (_, cfg), = O.variants([algorithm], False)
    model = O.build_model(shape, dev, dt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-9)
    algo = build_algorithm(O.with_probes(cfg, shape.num_probes))
    algo.attach(model)
    warm = O.build_microbatches(dataclasses.replace(shape, seq_len=16), dev)
    mbs = O.build_microbatches(shape, dev)
    if algo.needs_old_logp:
        with torch.no_grad():
            for mb in warm + mbs:
                mb.old_logp_BT = sequence_logprobs(model, mb).float()

    def totals(batches):
        return BatchTotals(num_tokens=float(sum(mb.response_mask_BT.sum() for mb in batches)),
                           num_seqs=sum(mb.size for mb in batches), num_microbatches=len(batches),
                           max_len=shape.seq_len)

    O.update_step(model, optimizer, algo, warm, totals(warm))  # allocates AdamW's state
    model.zero_grad(set_to_none=False)  # keep .grad allocated: a steady-state step's starting point
    start = time.process_time()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        O.update_step(model, optimizer, algo, mbs, totals(mbs))
        torch.cuda.synchronize(dev)
        peak, how = torch.cuda.max_memory_allocated(dev) - before, "cuda max_memory_allocated"
    else:
        import gc

        gc.collect()
        before = _rss_bytes()
        if _reset_hwm():
            O.update_step(model, optimizer, algo, mbs, totals(mbs))
            peak, how = _hwm_bytes() - before, "peak RSS (VmHWM reset)"
        else:
            with _Sampler() as s:
                O.update_step(model, optimizer, algo, mbs, totals(mbs))
            peak, how = s.peak - before, "peak RSS (2 ms sampler)"
    resp = int(sum(mb.response_mask_BT.sum() for mb in mbs))
    return {"shape": shape.name, "layers": shape.layers, "vocab": shape.vocab, "hidden": shape.hidden,
            "T": shape.seq_len, "B": shape.microbatch, "response_tokens": resp, "algorithm": algorithm,
            "logprobs": logprobs_mode, "peak_step_bytes": int(peak), "measured_by": how,
            "step_cpu_s": time.process_time() - start, "chunked": chunked_logprobs.applies(model)}


def run_memory(shape: O.Shape = MEMORY_SHAPE, algorithms=("reinforce",), device: str = "cpu",
               dtype: str = "float32", threads: int = 1, timeout_s: int = 1800) -> list[dict]:
    """One subprocess per (variant, algorithm); rows with the peak and its ratio to `before`."""
    rows = []
    for algorithm in algorithms:
        base = None
        for variant, mode in VARIANTS.items():
            spec = json.dumps({"shape": dataclasses.asdict(shape), "algorithm": algorithm, "mode": mode,
                               "device": device, "dtype": dtype, "threads": threads})
            out = subprocess.run([sys.executable, "-m", "isopo_bench.overhead_modes", "--memory-child", spec],
                                 capture_output=True, text=True, timeout=timeout_s)
            if out.returncode != 0:
                raise RuntimeError(f"memory child ({variant}, {algorithm}) failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1]) | {"variant": variant}
            base = base or row["peak_step_bytes"]
            row["vs_before"] = row["peak_step_bytes"] / base
            rows.append(row)
    return rows


def _markdown(columns: list[tuple[str, str, object]], rows: list[dict]) -> str:
    """A Markdown table from (header, alignment `---` or `---:`, cell function of a row) columns."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "|".join(a for _, a, _ in columns) + "|"]
    lines += ["| " + " | ".join(str(cell(r)) for _, _, cell in columns) + " |" for r in rows]
    return "\n".join(lines)


def memory_table(rows: list[dict]) -> str:
    return _markdown([
        ("shape", "---", lambda r: r["shape"]), ("layers", "---:", lambda r: r["layers"]),
        ("vocab", "---:", lambda r: r["vocab"]), ("hidden", "---:", lambda r: r["hidden"]), ("T", "---:", lambda r: r["T"]),
        ("B", "---:", lambda r: r["B"]), ("algorithm", "---", lambda r: r["algorithm"]), ("variant", "---", lambda r: r["variant"]),
        ("peak of one step (MiB)", "---:", lambda r: f"{r['peak_step_bytes'] / 2**20:.0f}"),
        ("vs before", "---:", lambda r: f"{r['vs_before']:.3f}"), ("measured by", "---", lambda r: r["measured_by"]),
        ("chunked head used", "---", lambda r: r["chunked"]),
    ], rows)


# ------------------------------------------------------------------------------------------------
def rollout_step(model, optimizer, algo, mbs, shape, minibatches: int) -> None:
    """One rollout batch's work: pi_old forward (when the algorithm needs it) and its optimizer steps."""
    if algo.needs_old_logp:
        with torch.no_grad():
            for mb in mbs:
                mb.old_logp_BT = sequence_logprobs(model, mb).float()
        k = max(1, min(minibatches, len(mbs)))
        per = len(mbs) // k
        parts = [mbs[i * per : (i + 1) * per] for i in range(k)]
    else:
        parts = [mbs]
    for part in parts:
        totals = BatchTotals(num_tokens=float(sum(mb.response_mask_BT.sum() for mb in part)),
                             num_seqs=sum(mb.size for mb in part), num_microbatches=len(part), max_len=shape.seq_len)
        O.update_step(model, optimizer, algo, part, totals)


def run_per_rollout(shapes, algorithms, repeats: int, warmup: int, minibatches: int, device: str = "cpu",
                    dtype: str = "float32") -> list[dict]:
    names = algorithms or ["reinforce", "grpo", "cispo", "isopo", "isopo-interacting"]
    if O.BASELINE not in names:
        names = [O.BASELINE] + list(names)
    dev, dt = torch.device(device), getattr(torch, dtype)
    rows = []
    for shape in shapes:
        shape = dataclasses.replace(shape, microbatches=max(shape.microbatches, minibatches))
        model, optimizer, mbs, _, algos = O.setup(shape, O.variants(names, False), dev, dt)
        times = {label: [] for label in algos}
        for rep in range(warmup + repeats):
            for label, algo in algos.items():
                seconds = O.timed(lambda: rollout_step(model, optimizer, algo, mbs, shape, minibatches), dev)
                if rep >= warmup:
                    times[label].append(seconds)
        base = statistics.median(times[O.BASELINE])
        linears = F.shape_linears(shape)
        shapes_mb = F.microbatch_shapes(mbs)
        for label, t in times.items():
            algo = algos[label]
            floor = F.shape_floor(shape, algo, mbs, dt)
            extra = floor.extra_flops
            if algo.needs_old_logp:
                extra += F.pi_old_forward_flops(linears, shape.heads, shape.head_dim, shape.layers, shapes_mb)
            rows.append({"shape": shape.name, "T": shape.seq_len, "B": shape.microbatch,
                         "rollout_seqs": shape.microbatch * shape.microbatches, "algorithm": label,
                         "optimizer_steps": min(minibatches, len(mbs)) if algo.needs_old_logp else 1,
                         "median_s": statistics.median(t), "ratio": statistics.median(t) / base,
                         "floor": (floor.base_flops + extra) / floor.base_flops})
    return rows


def per_rollout_table(rows: list[dict]) -> str:
    return _markdown([
        ("shape", "---", lambda r: r["shape"]), ("T", "---:", lambda r: r["T"]), ("B", "---:", lambda r: r["B"]),
        ("rollout seqs", "---:", lambda r: r["rollout_seqs"]), ("algorithm", "---", lambda r: r["algorithm"]),
        ("optimizer steps", "---:", lambda r: r["optimizer_steps"]),
        ("median s/rollout batch", "---:", lambda r: f"{r['median_s']:.3f}"),
        ("ratio vs REINFORCE", "---:", lambda r: f"{r['ratio']:.3f}"), ("FLOP floor", "---:", lambda r: f"{r['floor']:.3f}"),
        ("measured / floor", "---:", lambda r: f"{r['ratio'] / r['floor']:.3f}"),
    ], rows)


def _child(spec: str) -> None:
    s = json.loads(spec)
    if s.get("threads"):
        torch.set_num_threads(s["threads"])
    row = measure_step_memory(O.Shape(**s["shape"]), s["algorithm"], s["mode"], s["device"], s["dtype"])
    print(json.dumps(row))  # noqa: T201 - read by the parent


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-child":
        _child(sys.argv[2])
