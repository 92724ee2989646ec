"""torchrun worker for tests/test_distributed.py (not collected: the name starts with `_`).

    torchrun --standalone --nproc_per_node 2 tests/_dist_worker.py {ddp|fsdp2} OUT_DIR

For every registered algorithm: a 1-process reference (this rank alone, accumulating over all global
microbatches in order) and a data-parallel run over the same microbatches, two AdamW steps each, on a random
tiny untied Qwen3 in float32. Writes OUT_DIR/rank{r}.json with, per run, the max |param - param_ref| after
the two steps, the max relative gradient difference per step, and the EMA statistics' spread across ranks.
Under ddp it also runs the controls that must fail: the loss-times-world-size trick, unreduced EMAs.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from transformers import Qwen3Config, Qwen3ForCausalLM

from isopo_bench.algorithm_api import StepContext
from isopo_bench.algorithms.isopo import IsopoSettings
from isopo_bench.algorithms.seq_norm import SeqNormSettings
from isopo_bench.batch import BatchTotals, TrainBatch, pad_and_stack, sequence_logprobs
from isopo_bench.config import AlgorithmConfig
from isopo_bench.errors import ConfigError
from isopo_bench.distributed import DataParallel, all_microbatches, grad_norm_value
from isopo_bench.plugin_settings import algorithm_setup, build_algorithm
from isopo_bench.plugins import ALGORITHMS
from isopo_bench.step_driver import step_gradients

VOCAB, MICRO, MINI, STEPS, MAX_LEN = 40, 2, 8, 2, 16


def tiny_model() -> nn.Module:
    torch.manual_seed(1)
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=32, max_position_embeddings=64, tie_word_embeddings=False,
                      pad_token_id=0, initializer_range=0.2)
    model = Qwen3ForCausalLM(cfg).float().train()
    with torch.no_grad():  # norm weights start at 1: make their gradients generic
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def make_data() -> list[TrainBatch]:
    """STEPS minibatches of MINI sequences: unequal lengths, random advantages, old_logp perturbed from the
    initial policy's so that GRPO / CISPO / GSPO clipping is active."""
    gen = torch.Generator().manual_seed(2)
    n = MINI * STEPS
    lengths = [(int(torch.randint(1, 5, (), generator=gen)), int(torch.randint(1, 8, (), generator=gen))) for _ in range(n)]
    seqs = [torch.randint(1, VOCAB, (p + c,), generator=gen).tolist() for p, c in lengths]
    ids, attn, resp, _ = pad_and_stack([s[:p] for s, (p, _) in zip(seqs, lengths)],
                                       [s[p:] for s, (p, _) in zip(seqs, lengths)], 0, "right")
    batch = TrainBatch(ids, attn, resp, torch.randn(n, generator=gen), group_ids_B=torch.arange(n) // 4)
    with torch.no_grad():
        logp = sequence_logprobs(tiny_model().eval(), batch)
    batch.old_logp_BT = (logp + 0.3 * torch.randn(logp.shape, generator=gen)) * resp
    return [batch.select(slice(i * MINI, (i + 1) * MINI)) for i in range(STEPS)]


def run_cfg(name: str, reg_o: float = 1.0) -> AlgorithmConfig:
    # Few probes, so that the probe draw (seeded by the global microbatch index) matters. reg_o > 0: the
    # default unregularised s_i = 1 / O_i is ill-conditioned on this random model (some O_i ~ 1e-7 at step 2,
    # where merely reordering the 1-process sum of microbatches moves the gradient by 50%); the regulariser
    # also puts non-interacting ISOPO's EMA statistics (EMA[O^2]) under test.
    settings = IsopoSettings(num_probes=4, reg_o=reg_o) if name in ("isopo", "isopo-interacting") else None
    if name == "seq-norm":
        # eps well above rounding: some sequences' k_proj gradients are zero up to rounding (a query attending
        # to one key), and w_i = A_i / (||G_i|| + 1e-8) turns that rounding into a full-size step (reordering the
        # 1-process microbatch sum then moves the second step's gradient by 5%; by 7e-7 with eps = 0.05).
        settings = SeqNormSettings(eps=0.05)
    return AlgorithmConfig(name=name, settings=settings)


def build(name: str, reg_o: float = 1.0, world_size: int = 1, mode: str = "ddp"):
    return build_algorithm(run_cfg(name, reg_o), seed=0, world_size=world_size,
                           sharded_parameters=world_size > 1 and mode == "fsdp2")


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def train(name: str, data: list[TrainBatch], dp: DataParallel | None = None, model=None, algo=None,
          loss_scale: float = 1.0, reg_o: float = 1.0, reduce_stats: bool = True) -> tuple[dict, list[dict], object]:
    """Two optimizer steps; returns final params, per-step grads (before clipping) and the algorithm."""
    model = model if model is not None else tiny_model()
    algo = algo if algo is not None else build(name, reg_o)
    module = dp.module if dp is not None else model
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.01)
    grads = []
    for step, minibatch in enumerate(data):
        optimizer.zero_grad(set_to_none=True)
        if dp is not None:
            dp.accumulate(algo, minibatch, MICRO, MAX_LEN, loss_scale=loss_scale, step=step, reduce_stats=reduce_stats)
        else:  # this rank alone, over every global microbatch in order
            totals = BatchTotals.of(minibatch, MINI // MICRO, MAX_LEN)
            step_gradients(algo, model, StepContext(step, all_microbatches(minibatch, MICRO), totals))
        grads.append({n: full(p.grad) for n, p in module.named_parameters() if p.grad is not None})
        grad_norm_value(torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0))
        optimizer.step()
    return {n: full(p) for n, p in module.named_parameters()}, grads, algo


def compare(ref, run, algo, ref_algo) -> dict:
    params, grads = run[0], run[1]
    out = {"param_diff": max(float((params[n] - ref[0][n]).abs().max()) for n in ref[0])}
    for step, (g, g_ref) in enumerate(zip(grads, ref[1])):
        scale = max(float(v.abs().max()) for v in g_ref.values())
        out[f"grad_rel_diff_step{step}"] = max(float((g[n] - g_ref[n]).abs().max()) for n in g_ref) / scale
        out[f"grad_keys_equal_step{step}"] = sorted(g) == sorted(g_ref)
        out[f"grad_norm_ratio_step{step}"] = float(torch.linalg.vector_norm(torch.cat([v.flatten() for v in g.values()])) /
                                                   torch.linalg.vector_norm(torch.cat([v.flatten() for v in g_ref.values()])))
    ema = ema_of(algo)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, ema)
    ema_ref = ema_of(ref_algo)
    out["ema_rank_spread"] = max([abs(e[k] - ema[k]) / abs(ema[k]) for e in everyone for k in ema] or [0.0])
    out["ema_ref_diff"] = max([abs(ema[k] - ema_ref[k]) / abs(ema_ref[k]) for k in ema_ref] or [0.0])
    out["num_ema_keys"] = len(ema)
    return out


def ema_of(algo) -> dict[str, float]:
    """The EMA statistics an algorithm checkpoints (layer-wise engine, npg_rank1_model; none elsewhere)."""
    return {k: float(v) for k, v in algo.state_dict().get("stats", {}).get("ema", {}).items()}


def refused_mode(name: str, mode: str, world: int) -> str:
    setup = algorithm_setup(run_cfg(name), world_size=world, sharded_parameters=mode == "fsdp2")
    try:
        ALGORITHMS.get(name).validate(setup)
    except ConfigError as exc:
        return str(exc)
    return ""


def main(mode: str, out_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))  # a hang fails fast, with a trace
    rank, world = dist.get_rank(), dist.get_world_size()
    data = make_data()
    results = {}
    for name in ALGORITHMS.names():
        refusal = refused_mode(name, mode, world)
        if refusal:  # the algorithm's own validation refuses this mode (the trainer never runs it so)
            results[name] = {"refused": refusal}
            continue
        ref = train(name, data)
        model = tiny_model()
        algo = build(name, world_size=world, mode=mode)
        dp = DataParallel.setup(model, mode)
        run = train(name, data, dp, model, algo)
        results[name] = compare(ref, run, algo, ref[2])
    if mode == "ddp":
        for name in ("reinforce", "isopo"):
            # Control: plain DDP (mean over ranks) with the loss multiplied by the world size. ISOPO in its
            # default form (s_i = 1 / O_i, no regulariser) is invariant to the loss scale.
            ref = train(name, data, reg_o=0.0)
            model, algo = tiny_model(), build(name, reg_o=0.0, world_size=world)
            ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
            # isolate the trick: EMAs are reduced (dp.accumulate's reducer) as in the correct setup
            run = train(name, data, DataParallel("ddp", model, ddp, rank, world), model, algo, loss_scale=world, reg_o=0.0)
            results[f"control_loss_times_world/{name}"] = compare(ref, run, algo, ref[2])
        for name in ("isopo", "isopo-interacting"):
            # Control: EMA statistics left per rank.
            ref = train(name, data)
            model, algo = tiny_model(), build(name, world_size=world)
            run = train(name, data, DataParallel.setup(model, "ddp"), model, algo, reduce_stats=False)
            results[f"control_unreduced_ema/{name}"] = compare(ref, run, algo, ref[2])
    (out_dir / f"rank{rank}.json").write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
