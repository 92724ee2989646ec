"""What the trainer needs to know about its rank: one object for one process and for N torchrun ranks.

The trainer's data flow under data parallelism (world size W, launched by torchrun):
- every rank draws the same P prompts, generates for its share `rollout_share` (whole groups), scores and
  computes advantages locally (a group never spans ranks), then `gather_rollouts` gives every rank the
  whole batch in prompt order, exactly the batch one process would have built from the same rollouts;
- pi_old / reference log-probs are computed only for the microbatches this rank will process;
- the update is isopo_bench.distributed.DataParallel: global microbatches, this rank's share, SUM;
- metrics are merged across ranks; rank 0 alone evaluates, logs to MLflow, checkpoints and exports;
- every checkpoint, the ranks compare a checksum of their parameters (replicas must never drift);
- the run's end has a deadline at every step (`shutdown_barrier`, `close`; isopo_bench.shutdown).
With W = 1 every method is the identity and no process group is created.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from isopo_bench.config import RunConfig
from isopo_bench.errors import ConfigError
from isopo_bench.shutdown import exit_watchdog, shutdown_timeout_s, store_barrier

GROUP_TIMEOUT = datetime.timedelta(minutes=30)
"""Collective timeout: rank 0 evaluates while the others wait at the next collective."""


@dataclass
class RankContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    """Whether this object created the process group (and so destroys it at the end)."""
    shutdown_timeout_s: float = 300.0
    """The deadline of each step of the run's end (isopo_bench.shutdown.shutdown_timeout_s)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @staticmethod
    def from_config(cfg: RunConfig) -> "RankContext":
        """Join torchrun's process group when cfg.parallel.world_size > 1; check the launch matches."""
        want = cfg.parallel.world_size
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if want == 1 and launched == 1:
            return RankContext()
        if launched != want:
            how = ("it was started without torchrun" if "WORLD_SIZE" not in os.environ
                   else f"torchrun started {launched} processes")
            raise ConfigError("parallel.world_size", f"is {want} but {how}",
                              f"launch `torchrun --standalone --nproc_per_node {want} -m isopo_bench.cli train ...` "
                              f"or pass --parallel.world-size {launched}")
        shutdown_s = shutdown_timeout_s()  # a bad value is an error now, not at the end of the run
        owns = not dist.is_initialized()
        if owns:
            backend = "nccl" if torch.cuda.is_available() and cfg.model.device != "cpu" else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group(backend, timeout=GROUP_TIMEOUT)
        return RankContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), owns, shutdown_s)

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: cuda:LOCAL_RANK when training on CUDA with several ranks."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first, the other ranks after it (writes to a shared cache)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    # -------------------------------------------------------------------------------- communication
    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank (small Python objects: token ids, rewards)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank's flag is true (so all ranks raise together, none hangs)."""
        if not self.distributed:
            return flag
        return any(self.gather(bool(flag)))

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def shutdown_barrier(self, stage: str) -> None:
        """Every rank has reached `stage` of the run's end, or ShutdownError names the missing ranks after
        shutdown_timeout_s (a barrier through the group's store, not a collective: isopo_bench.shutdown)."""
        if self.distributed:
            store_barrier(dist.distributed_c10d._get_default_store(), stage, self.rank, self.world_size,
                          self.shutdown_timeout_s)

    def close(self) -> None:
        """Destroy the group this object created; a destroy still blocked after shutdown_timeout_s dumps
        the stacks and exits the process (exit_watchdog)."""
        if self.owns_group and dist.is_initialized():
            disarm = exit_watchdog(f"rank {self.rank}: destroying the process group", self.shutdown_timeout_s)
            try:
                dist.destroy_process_group()
            finally:
                disarm()


def parameter_checksum(module: torch.nn.Module) -> float:
    """A float64 sum of |p| + p over all parameters: equal on every replica unless they drifted."""
    with torch.no_grad():
        return float(sum((p.detach().double().abs().sum() + p.detach().double().sum()) for p in module.parameters()))


def checksum_spread(ranks: RankContext, module: torch.nn.Module) -> float:
    """Largest relative difference of the ranks' parameter checksums (0.0 when the replicas agree)."""
    sums = ranks.gather(parameter_checksum(module))
    return (max(sums) - min(sums)) / max(abs(sums[0]), 1e-30)
