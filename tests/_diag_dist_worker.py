"""torchrun worker for tests/test_diagnostics_distributed.py (not collected: the name starts with `_`).

    torchrun --standalone --nproc_per_node 2 tests/_diag_dist_worker.py OUT_DIR

Per algorithm: one optimizer step of the per-step diagnostics (proximity and alignment) on a float64 tiny
untied Qwen3, once by this rank alone over every global microbatch (the 1-process reference) and once under
DDP with the step context's reducer (each rank its share of the microbatches). Writes OUT_DIR/rank{r}.json:
{algorithm: {"ref": metrics, "dp": metrics}}.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from _dist_worker import MAX_LEN, MICRO, MINI, make_data, tiny_model  # noqa: E402

from isopo_bench.algorithm_api import StepContext  # noqa: E402
from isopo_bench.batch import BatchTotals  # noqa: E402
from isopo_bench.config import AlgorithmConfig  # noqa: E402
from isopo_bench.diagnostics import DiagnosticsConfig  # noqa: E402
from isopo_bench.diagnostics.monitor import StepDiagnostics  # noqa: E402
from isopo_bench.distributed import DataParallel, all_microbatches  # noqa: E402
from isopo_bench.plugin_settings import build_algorithm  # noqa: E402
from isopo_bench.step_driver import MicrobatchWork, step_gradients  # noqa: E402

DIAG = DiagnosticsConfig(proximity_every=1, alignment_every=1)


def one_step(name: str, dp: bool, world: int) -> dict[str, float]:
    model = tiny_model().double()
    minibatch = make_data()[0]
    minibatch.response_mask_BT, minibatch.advantages_B = minibatch.response_mask_BT.double(), minibatch.advantages_B.double()
    algo = build_algorithm(AlgorithmConfig(name=name), seed=0, world_size=world if dp else 1)
    algo.attach(model)
    mbs = all_microbatches(minibatch, MICRO)
    totals = BatchTotals.of(minibatch, MINI // MICRO, MAX_LEN)
    monitor = StepDiagnostics(DIAG, model, "token-mean")
    if dp:
        par = DataParallel.setup(model, "ddp")
        ctx = StepContext(0, mbs, totals, reducer=par.reducer)
        work = par.local_work(mbs)
        step_gradients(algo, model, ctx, work, forward_model=par.forward_model)
    else:
        ctx = StepContext(0, mbs, totals)
        work = [MicrobatchWork(i, mb) for i, mb in enumerate(mbs)]
        step_gradients(algo, model, ctx, work)
    pending = monitor.prepare(model, ctx, work)
    torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01).step()
    return monitor.finish(model, pending)


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {name: {"ref": one_step(name, False, world), "dp": one_step(name, True, world)}
               for name in ("reinforce", "grpo", "isopo", "isopo-interacting")}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
