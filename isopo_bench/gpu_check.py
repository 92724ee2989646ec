"""The steps of scripts/gpu_check.sh (one CUDA GPU, no network), each writing its figures under OUT:

  overhead   `isopo-bench overhead` at Qwen3-0.6B widths and full depth 28 (vocabulary 151,936) in bfloat16,
             T 2048, B 8: median update-step ratios to REINFORCE with their FLOP floors -> overhead.csv
  memory     the --memory mode at the paper's shape (depth 28, T 2048, microbatch 2): peak of one update step,
             full logits vs the chunked head -> memory.csv
  train      a 20-step tiny training run on CUDA with the HF engine -> train.json (final metrics, step times)
  summary    everything above plus the environment -> gpu_check.json

`--dry`: the same steps on CPU at toy sizes (what the test runs; minutes, not the figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from isopo_bench import overhead as O

ALGORITHMS = ["reinforce", "grpo", "gspo", "isopo", "isopo-interacting"]
FULL = dataclasses.replace(O.QWEN3_06B, name="qwen3-0.6b-d28", layers=28, vocab=151936, seq_len=2048, microbatch=8)
DRY = dataclasses.replace(O.TINY, name="dry", layers=1, seq_len=24, microbatch=2, num_probes=8)
DRY_MEMORY = dataclasses.replace(O.TINY, name="dry-memory", layers=1, vocab=2048, seq_len=64, microbatch=2,
                                 microbatches=1)


def step_overhead(out: Path, dry: bool) -> None:
    device, dtype = ("cpu", "float32") if dry else ("cuda", "bfloat16")
    rows = O.run_overhead([DRY if dry else FULL], ALGORITHMS, repeats=1 if dry else 5, warmup=0 if dry else 2,
                          faithful=False, device=device, dtype=dtype)
    _csv(out / "overhead.csv", rows)
    print(O.markdown_table(rows))  # noqa: T201


def step_memory(out: Path, dry: bool) -> None:
    from isopo_bench import overhead_modes as OM

    shape = DRY_MEMORY if dry else dataclasses.replace(OM.MEMORY_SHAPE, name="paper-shape", layers=28)
    rows = OM.run_memory(shape, ["reinforce"], "cpu" if dry else "cuda", "float32" if dry else "bfloat16")
    _csv(out / "memory.csv", rows)
    print(OM.memory_table(rows))  # noqa: T201


def step_train(out: Path, dry: bool) -> None:
    from isopo_bench.config import OptimConfig, TrackingConfig, replace
    from isopo_bench.presets import run_preset
    from isopo_bench.trainer import train

    cfg = run_preset("tiny-smoke")
    cfg = replace(cfg, tracking=TrackingConfig(uri=f"sqlite:///{out / 'mlflow.db'}", output_dir=str(out / "runs"),
                                               checkpoint_every=0, log_samples=0),
                  optim=dataclasses.replace(cfg.optim, steps=2 if dry else 20),
                  **{"model.device": "cpu" if dry else "cuda", "rollout.engine": "hf"})
    result = train(cfg)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking.uri)
    metrics = client.get_run(result.run_id).data.metrics if result.run_id else {}
    row = {"status": result.status, "steps_done": result.steps_done, "final_accuracy": result.final_accuracy,
           "device": cfg.model.device} | {k: v for k, v in metrics.items() if k.startswith(("time", "cost/", "reward"))}
    (out / "train.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row))  # noqa: T201


def step_summary(out: Path, dry: bool) -> None:
    import pandas as pd

    env = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "dry": dry,
           "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    summary = {"env": env}
    for name in ("overhead", "memory"):
        path = out / f"{name}.csv"
        summary[name] = pd.read_csv(path).to_dict("records") if path.exists() else f"missing ({name} step failed)"
    path = out / "train.json"
    summary["train"] = json.loads(path.read_text()) if path.exists() else "missing (train step failed)"
    steps = out / "steps.log"
    summary["steps"] = steps.read_text().splitlines() if steps.exists() else []
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"wrote {out / 'gpu_check.json'}")  # noqa: T201


def _csv(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)


STEPS = {"overhead": step_overhead, "memory": step_memory, "train": step_train, "summary": step_summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m isopo_bench.gpu_check")
    p.add_argument("step", choices=sorted(STEPS))
    p.add_argument("out")
    p.add_argument("--dry", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1 if args.dry else torch.get_num_threads())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    STEPS[args.step](out, args.dry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
