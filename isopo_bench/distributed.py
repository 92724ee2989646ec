"""Data-parallel updates (DDP and FSDP2) that equal a 1-process run over the same microbatches.

The rule (SCALE_OUT.md): microbatches are defined globally, exactly as the 1-process trainer cuts the
optimizer batch (minibatch) of B sequences into B / b microbatches of b sequences, trimmed of all-padding
columns. Rank r processes the whole global microbatches r, r + W, r + 2W, ... Every rank computes its
additive share of the global gradient with the GLOBAL denominators (`BatchTotals` of the whole minibatch:
tokens, sequences, microbatches), and the ranks' shares are combined with a SUM. We never "multiply the loss
by the world size to undo DDP's mean" (the TRL/verl trick): ISOPO's per-layer weight gradient sum_i w_i G_i
is invariant to the loss scale (w_i = A_i / O_i and O_i scales with G_i), so that trick leaves ISOPO's
gradient divided by W (tests/test_distributed.py shows it).

Why microbatches, not sequences, are the unit. ISOPO's per-layer transform is computed per microbatch:
- `isopo-interacting` and `npg_rank1` build the layer NTK K_ij = <G_i, G_j> over the sequences of one
  microbatch (and npg_rank1 `fisher=one` draws its Fisher sequence per microbatch);
- non-interacting `isopo` draws its S Fisher probes from the real tokens of one microbatch, seeded by
  (run seed, optimizer step, microbatch index, layer);
- the EMA statistics collect per-sequence values (N, O, R) and per-microbatch values (tr K / B).
So the microbatch grouping is part of the algorithm: the honest equivalence is "W ranks == 1 rank
accumulating over the same microbatches", not "== one big microbatch". To keep it exact we (1) hand the
algorithm the GLOBAL microbatch index (the `index` of `backward_context`, which seeds the probes) and
(2) give the step's StepContext the cross-rank SUM (`reducer=all_reduce_sum`), with which the layer-wise
engine all-reduces its EMA statistics' (sum, count) pairs at the end of each optimizer step; without (2)
the ranks' EMAs, hence their damping and normalisers, drift apart.

Implementations. ISOPO produces its weight gradient inside autograd (a custom autograd Function per Linear,
option A of SCALE_OUT.md), so DDP and FSDP2 communicate it as any gradient:
- `ddp`: torch DDP with a SUM comm hook; `no_sync()` encloses the forward AND the backward of every local
  microbatch but the last (DDP decides at forward time whether the next backward syncs; a SUM hook that ran
  on every microbatch would count earlier microbatches again). Ranks may hold unequal numbers of
  microbatches: each syncs exactly once per optimizer step. Buffers are not broadcast (none change).
- `fsdp2`: `fully_shard` on every decoder layer and on the root, gradient divide factor 1 set on EACH
  FSDP module (the setting is not recursive), force-sum reduction (gloo has no AVG / PREMUL_SUM). Every
  microbatch reduce-scatters its gradient (sharded gradients accumulate): we do not use
  `set_requires_gradient_sync(False)`, whose unsynced unsharded gradients are added again at the next synced
  step. Hence under FSDP2 every rank must hold the same number of microbatches (B / b divisible by W).
Gradient clipping with `torch.nn.utils.clip_grad_norm_` works on both (DTensor gradients give the global
norm; `float(norm.full_tensor())` under FSDP2, see `grad_norm_value`).

Launching on N GPUs (one process per GPU; nccl is picked on CUDA, gloo on CPU):
    torchrun --standalone --nproc_per_node N your_train_script.py ...
    (several nodes: torchrun --nnodes M --nproc_per_node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT ...)
The trainer does all of this when launched under torchrun with --parallel.world-size N (isopo_bench.trainer);
by hand: `ctx = DataParallel.setup(model, algorithm, mode="ddp" | "fsdp2")`, then per optimizer step
`ctx.accumulate(algorithm, minibatch, microbatch_size, max_len, step=k)` (finalize_grads included),
clip, `optimizer.step()` (build the optimizer AFTER `setup`: FSDP2 replaces parameters by DTensors).
Rollouts: each rank generates for its share of prompts (`rollout_share`), whole groups only.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from isopo_bench.algorithm_api import StepContext, no_reduction
from isopo_bench.batch import BatchTotals, TrainBatch
from isopo_bench.step_driver import MicrobatchWork, step_gradients

Mode = Literal["ddp", "fsdp2"]


# ------------------------------------------------------------------------------------------ planning
def global_microbatches(num_seqs: int, microbatch_size: int) -> list[slice]:
    """Row slices of the global microbatches, as the 1-process trainer cuts the minibatch."""
    if num_seqs % microbatch_size:
        raise ValueError(f"minibatch of {num_seqs} sequences is not a multiple of microbatch_size={microbatch_size}")
    return [slice(s, s + microbatch_size) for s in range(0, num_seqs, microbatch_size)]


def rank_share(num_microbatches: int, world_size: int, rank: int) -> range:
    """Global indices of the microbatches rank `rank` processes: r, r + W, ..."""
    if num_microbatches < world_size:
        raise ValueError(f"{num_microbatches} microbatches cannot feed {world_size} ranks: every rank needs at least "
                         "one (raise the minibatch or lower optim.microbatch_size)")
    return range(rank, num_microbatches, world_size)


def plan_microbatches(num_seqs: int, microbatch_size: int, world_size: int, rank: int) -> list[tuple[int, slice]]:
    """(global microbatch index, row slice) of the microbatches rank `rank` processes."""
    slices = global_microbatches(num_seqs, microbatch_size)
    return [(g, slices[g]) for g in rank_share(len(slices), world_size, rank)]


def all_microbatches(minibatch: TrainBatch, microbatch_size: int) -> list[TrainBatch]:
    """Every global microbatch of the minibatch, trimmed of all-padding columns, on the minibatch's device:
    cut once per optimizer step, handed whole to `begin_step` and shared out by `DataParallel.local_work`."""
    return [minibatch.select(rows).trimmed()[0] for rows in global_microbatches(minibatch.size, microbatch_size)]


def rollout_share(num_prompts: int, samples_per_prompt: int, world_size: int, rank: int) -> tuple[slice, slice]:
    """(prompt slice, sequence slice) this rank generates: contiguous whole groups, so a group never spans
    ranks and group-relative advantages need no communication. Prompts are split as evenly as possible."""
    if num_prompts < world_size:
        raise ValueError(f"{num_prompts} prompts cannot be shared by {world_size} ranks (each needs a whole group)")
    base, extra = divmod(num_prompts, world_size)
    start = rank * base + min(rank, extra)
    stop = start + base + (rank < extra)
    return slice(start, stop), slice(start * samples_per_prompt, stop * samples_per_prompt)


# ------------------------------------------------------------------------------------------ reductions
def all_reduce_sum(local: torch.Tensor) -> torch.Tensor:
    """SUM over ranks of a small tensor (on the backend's device), returned on the input's device."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    buf = local.to(device).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(local.device)


def _sum_comm_hook(state, bucket):
    # Unannotated on purpose: DDP checks the annotation object, which `from __future__ import annotations`
    # would turn into a string.
    fut = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def grad_norm_value(norm: torch.Tensor) -> float:
    """clip_grad_norm_'s result as a float (a DTensor under FSDP2)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


# ------------------------------------------------------------------------------------------ the context
@dataclass
class DataParallel:
    mode: Mode
    module: nn.Module
    """The model the algorithm sees (hooks, parameter names, optimizer): DDP's inner module, or the
    FSDP2-sharded model itself."""
    forward_model: nn.Module
    """What microbatches are run through: the DDP wrapper, or the FSDP2 model."""
    rank: int
    world_size: int

    @staticmethod
    def setup(model: nn.Module, algorithm=None, mode: Mode = "ddp") -> "DataParallel":
        """Wrap `model` (already on this rank's device) for `mode` in the default process group.
        (`algorithm` is unused: statistics are reduced through the StepContext's reducer.)"""
        rank, world = dist.get_rank(), dist.get_world_size()
        if mode == "ddp":
            device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
            ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
            ddp.register_comm_hook(None, _sum_comm_hook)
            ctx = DataParallel(mode, model, ddp, rank, world)
        elif mode == "fsdp2":
            _shard_fsdp2(model, world)
            ctx = DataParallel(mode, model, model, rank, world)
        else:
            raise ValueError(f"unknown data-parallel mode `{mode}`: use ddp or fsdp2")
        return ctx

    def local_work(self, microbatches: list[TrainBatch],
                   device: torch.device | str = "cpu") -> list[tuple[int, TrainBatch, contextlib.AbstractContextManager]]:
        """(global microbatch index, microbatch on `device`, sync context) for this rank's share of one
        optimizer step's global `microbatches` (`all_microbatches`). Under DDP only the last local microbatch
        syncs; under FSDP2 every one does (see the module doc)."""
        num_micro = len(microbatches)
        if self.mode == "fsdp2" and num_micro % self.world_size:
            raise ValueError(f"FSDP2 syncs every microbatch: the {num_micro} microbatches of a minibatch must be "
                             f"divisible by the world size {self.world_size} (change optim.microbatch_size)")
        share = rank_share(num_micro, self.world_size, self.rank)
        return [(g, microbatches[g].to(device), self._sync_context(i == len(share) - 1)) for i, g in enumerate(share)]

    def accumulate(self, algorithm, minibatch: TrainBatch, microbatch_size: int, max_len: int,
                   device: torch.device | str = "cpu", loss_scale: float = 1.0, step: int = 0,
                   reduce_stats: bool = True) -> dict[str, float]:
        """Optimizer step `step`'s gradient summed over ranks into .grad (step_driver.step_gradients: zero_grad,
        begin_step, this rank's microbatches with global denominators, finalize_grads). Returns finalize's
        metrics and this rank's loss sum (a local share). `loss_scale` (the loss-times-world-size trick) and
        `reduce_stats=False` (statistics left per rank) exist only for the control tests."""
        microbatches = all_microbatches(minibatch, microbatch_size)
        totals = BatchTotals.of(minibatch, len(microbatches), max_len)
        ctx = StepContext(step, microbatches, totals, reducer=all_reduce_sum if reduce_stats else no_reduction)
        work = [MicrobatchWork(g, mb, sync) for g, mb, sync in self.local_work(microbatches, device)]
        result = step_gradients(algorithm, self.module, ctx, work, forward_model=self.forward_model,
                                loss_scale=loss_scale)
        return {"loss_local": sum(r.loss for r in result.microbatches)} | result.metrics

    def _sync_context(self, last: bool):
        if self.mode == "ddp" and not last:
            return self.forward_model.no_sync()
        return contextlib.nullcontext()


def _shard_fsdp2(model: nn.Module, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    device_type = "cuda" if next(model.parameters()).is_cuda else "cpu"
    mesh = init_device_mesh(device_type, (world,))
    layers = getattr(getattr(model, "model", model), "layers", [])
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            # Per unit (not recursive): a SUM of the ranks' shares, never their mean.
            m.set_gradient_divide_factor(1.0)
            if device_type == "cpu":
                m.set_force_sum_reduction_for_comms(True)


def init_process_group_from_env() -> tuple[int, int]:
    """Initialise the default group from torchrun's environment (nccl on CUDA, else gloo); (rank, world)."""
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


# ------------------------------------------------------------------------------------------ FSDP2 states
def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict of an FSDP2 model on every rank (a collective: all ranks call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))


def full_states(module: nn.Module, optimizer) -> tuple[dict, dict]:
    """(model, optimizer) state dicts gathered from the shards, keyed by parameter name (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    return full_model_state(module), get_optimizer_state_dict(module, optimizer, options=options)


def restore_full_states(module: nn.Module, optimizer):
    """A function scattering gathered (model, optimizer) states back into this rank's shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)

    def restore(model_state: dict, optimizer_state: dict) -> None:
        set_model_state_dict(module, model_state, options=options)
        set_optimizer_state_dict(module, optimizer, optim_state_dict=optimizer_state, options=options)
    return restore
