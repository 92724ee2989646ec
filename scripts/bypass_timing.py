"""GRPO's step time with pi_old recomputed vs taken from the sampler (algorithm.old_logp_source), one
process, the two trainers' steps interleaved; medians over steps 2.. (step 1 of `sampler` runs its check):
wall seconds per phase (time/*) and the main thread's CPU seconds (time_thread/*, which other jobs on a
shared machine inflate less).

    .venv/bin/python scripts/bypass_timing.py [--steps 12] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import torch

from isopo_bench import metric_names as M
from isopo_bench.config import TrackingConfig, replace
from isopo_bench.presets import compose
from isopo_bench.timing import thread_metric
from isopo_bench.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="bypass_timing_")
    torch.set_num_threads(1)
    trainers = {}
    for source in ("recompute", "sampler"):
        cfg = replace(compose("cpu-tier", "grpo"), **{"algorithm.old_logp_source": source, "optim.steps": args.steps})
        cfg = replace(cfg, tracking=TrackingConfig(uri=f"sqlite:///{out}/mlflow.db", output_dir=f"{out}/runs",
                                                   experiment="bypass-timing"))
        trainers[source] = Trainer(cfg)
        trainers[source].algorithm.attach(trainers[source].model)
    keys = [M.TIME_STEP, M.TIME_OLD_LOGP, M.TIME_UPDATE, thread_metric(M.TIME_OLD_LOGP), thread_metric(M.TIME_UPDATE),
            thread_metric(M.TIME_ROLLOUT)]
    times = {s: {k: [] for k in keys} for s in trainers}
    for step in range(1, args.steps + 1):
        for source, trainer in trainers.items():
            metrics = trainer._train_step(step)
            if step > 1:
                for key in times[source]:
                    times[source][key].append(metrics.get(key, 0.0))
    print(f"load average {os.getloadavg()}, {args.steps - 1} steps each (median s)")  # noqa: T201
    print("| old_logp_source | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys))  # noqa: T201
    for source, t in times.items():
        print(f"| {source} | " + " | ".join(f"{statistics.median(v):.3f}" for v in t.values()) + " |")  # noqa: T201


if __name__ == "__main__":
    main()
