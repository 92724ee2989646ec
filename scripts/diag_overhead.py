"""Overhead of the per-step diagnostics on the quick tier's run shape (cpu-tier preset: tiny Qwen3, 8 x 8
rollouts, microbatch 8, one thread). Paired runs, diagnostics at the default cadence vs off, alternating
order; reports the diagnostics' share of the training step time and the paired wall-time ratio.

    python scripts/diag_overhead.py --steps 20 --repeats 3 --algorithms reinforce isopo-interacting
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from isopo_bench import metric_names as M
from isopo_bench.config import EvalConfig, TrackingConfig, replace
from isopo_bench.diagnostics import DiagnosticsConfig
from isopo_bench.plugin_settings import algorithm_preset
from isopo_bench.presets import run_preset
from isopo_bench.trainer import Trainer


def one_run(algo: str, steps: int, diag: DiagnosticsConfig, folder: Path, lr: float) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = replace(run_preset("cpu-tier"), algorithm=algorithm_preset(algo), diagnostics=diag,
                  eval=EvalConfig(every=0, at_start=False), tracking=TrackingConfig(
                      uri=f"sqlite:///{folder}/mlflow.db", output_dir=str(folder / "runs"), checkpoint_every=0))
    cfg = replace(cfg, **{"optim.steps": steps, "optim.lr": lr, "task.eval_items": 8})
    trainer = Trainer(cfg)
    rows = []
    orig = trainer._train_step
    trainer._train_step = lambda step: rows.append(orig(step)) or rows[-1]
    start = time.perf_counter()
    trainer.run()
    wall = time.perf_counter() - start
    return {"wall": wall, "step_s": sum(r[M.TIME_STEP] for r in rows), "update_s": sum(r[M.TIME_UPDATE] for r in rows),
            "diag_s": sum(r.get(M.TIME_DIAGNOSTICS, 0.0) for r in rows), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lr", type=float, default=6e-5)
    ap.add_argument("--algorithms", nargs="+", default=["reinforce", "isopo-interacting"])
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algo in args.algorithms:
            on, off = [], []
            for r in range(args.repeats):
                order = [True, False] if r % 2 == 0 else [False, True]
                for flag in order:
                    diag = DiagnosticsConfig() if flag else DiagnosticsConfig(proximity_every=0, alignment_every=0)
                    res = one_run(algo, args.steps, diag, Path(tmp) / f"{algo}-{r}-{flag}", args.lr)
                    (on if flag else off).append(res)
            share = [x["diag_s"] / x["step_s"] for x in on]
            paired = [a["wall"] / b["wall"] - 1 for a, b in zip(on, off)]
            results[algo] = {
                "diag_share_of_step_median": statistics.median(share), "diag_share_all": share,
                "paired_wall_overhead_median": statistics.median(paired), "paired_wall_overhead_all": paired,
                "step_s_on": [x["step_s"] for x in on], "step_s_off": [x["step_s"] for x in off],
                "diag_s": [x["diag_s"] for x in on],
                "last_run_diag": [{k: v for k, v in row.items() if k.startswith("diag/")} for row in on[-1]["rows"]],
            }
            print(algo, json.dumps({k: v for k, v in results[algo].items() if k != "last_run_diag"}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
