"""torchrun worker for tests/test_vllm_distributed.py (not collected: the name starts with `_`).

    torchrun --standalone --nproc_per_node 2 tests/_vllm_dist_worker.py MODEL_DIR OUT_DIR

What the trainer does under data parallelism, on the tiny Qwen3 folder (float32, CPU, gloo): the process
group first, then one colocated VllmEngine per rank. Each rank
1. generates its own share of the prompts (greedy and sampled) while the other rank generates different
   ones, then rank 0 alone generates every prompt while rank 1 waits (evaluation runs on rank 0 only):
   the shares must equal rank 0's full generation, and nothing may hang;
2. wraps its policy in DDP (SUM of the ranks' gradients), takes two AdamW steps on rank-dependent data and
   syncs its engine after each; the weights read back from the engine must equal the trainer's exactly,
   agree across ranks (a hash), and the engine's log-probs must equal the trainer's;
3. does the same for one step of an FSDP2-sharded policy (sync gathers the DTensor shards);
4. closes the engine: the trainer's default process group must survive vLLM's shutdown.
Writes OUT_DIR/rank{r}.json.
"""

from __future__ import annotations

import datetime
import faulthandler
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from isopo_bench.batch import TrainBatch, pad_and_stack, sequence_logprobs
from isopo_bench.config import RunConfig, replace
from isopo_bench.distributed import DataParallel, rollout_share
from isopo_bench.models import encode_prompt, load_policy, load_tokenizer
from isopo_bench.rollout import SamplingSettings
from isopo_bench.rollout.vllm_engine import VllmEngine

TEXTS = ["1+2=", "hello world", "What is 7*8?", "x", "Name a prime.", "2*3*4="]
GREEDY = SamplingSettings(n=1, temperature=0.0, max_new_tokens=8)
SAMPLED = SamplingSettings(n=2, temperature=1.0, max_new_tokens=8, seed=5)
HANG_S = 240
"""Every thread's stack is dumped and the rank exits after this long (the test's own timeout is 300 s)."""


def vllm_config() -> RunConfig:
    # As tests/test_vllm_engine.py: a 64 MiB KV cache on CPU, short prompts and completions.
    return replace(RunConfig(), **{"rollout.engine": "vllm", "rollout.vllm.kv_cache_bytes": 64 << 20,
                                   "rollout.max_prompt_tokens": 64, "rollout.max_new_tokens": 16,
                                   "model.device": "cpu"})


def _weights_in_use(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Runs inside the vLLM worker. vLLM's CPU backend moves every Linear weight into a packed kernel
    handle (oneDNN / sgl) and leaves an empty parameter behind, so a Linear's weight is read back through
    the kernel itself: the identity through x W^T gives W^T exactly (each output sums one weight and zeros).
    Other parameters (embedding, norms) are read as they are."""
    from vllm.model_executor.layers.linear import LinearBase

    weights = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.numel() > 0}
    with torch.no_grad():
        for name, layer in model.named_modules():
            if isinstance(layer, LinearBase):
                eye = torch.eye(layer.input_size, dtype=layer.params_dtype, device=layer.weight.device)
                weights[f"{name}.weight"] = layer.quant_method.apply(layer, eye).T.cpu().contiguous()
    return weights


def engine_params(engine: VllmEngine) -> dict[str, torch.Tensor]:
    """The weights the engine actually computes with, read back from its worker's model (vLLM names)."""
    return engine.llm.apply_model(_weights_in_use)[0]


def as_engine_layout(name: str, trainer: dict[str, torch.Tensor], used: set[str]) -> torch.Tensor:
    """The trainer's tensor for vLLM parameter `name` (vLLM fuses q/k/v and gate/up); `used` collects the
    trainer names consumed."""
    names = [name]
    for fused, parts in (("qkv_proj", ("q_proj", "k_proj", "v_proj")), ("gate_up_proj", ("gate_proj", "up_proj"))):
        if f".{fused}." in name:
            names = [name.replace(fused, part) for part in parts]
    used.update(names)
    return torch.cat([trainer[n] for n in names])


def compare_weights(engine: VllmEngine, model: torch.nn.Module) -> dict:
    """Max |engine - trainer| over every engine parameter, and a hash of the engine's weights."""
    trainer = {n: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach() for n, t in model.state_dict().items()}
    digest, diff, used = hashlib.sha256(), 0.0, set()
    for name, held in sorted(engine_params(engine).items()):
        ref = as_engine_layout(name, trainer, used)
        held = held[: ref.shape[0]]  # vLLM pads the vocabulary rows of the embedding
        assert held.shape == ref.shape, (name, held.shape, ref.shape)
        diff = max(diff, float((held - ref).abs().max()))
        digest.update(name.encode() + held.contiguous().numpy().tobytes())
    # Every trainer parameter must have been compared (the tied lm_head is the embedding).
    unchecked = sorted({n for n, _ in model.named_parameters()} - used)
    return {"engine_vs_trainer_max_abs": diff, "engine_hash": digest.hexdigest(), "unchecked": unchecked}


def trainer_logp_gap(model: torch.nn.Module, tokenizer, rollout) -> float:
    """Max |sampler log-prob - trainer log-prob| over the rollout's completion tokens."""
    ids, attn, resp, sampler = pad_and_stack(rollout.prompt_ids, rollout.completion_ids, tokenizer.pad_token_id,
                                             sampler_logps=rollout.sampler_logps)
    with torch.no_grad():
        logp = sequence_logprobs(model, TrainBatch(ids, attn, resp, torch.zeros(len(ids))))
    return float(((logp - sampler).abs() * resp).max())


def train_step(forward_model, optimizer, tokenizer, rank: int, step: int) -> None:
    """One AdamW step on a rank-dependent sequence: DDP / FSDP2 sum the ranks' gradients."""
    text = TEXTS[(2 * step + rank) % len(TEXTS)]
    ids = torch.tensor([encode_prompt(tokenizer, text) + tokenizer(str(7 * step + rank))["input_ids"]
                        + [tokenizer.eos_token_id]])
    optimizer.zero_grad(set_to_none=True)
    forward_model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


def check_after_sync(engine, model, plain, tokenizer, prompts, sync_s: float) -> dict:
    """Engine weights vs trainer weights, and engine log-probs vs the trainer's (`plain`: unwrapped)."""
    out = compare_weights(engine, model) | {"sync_s": sync_s}
    plain.eval()
    out["logp_gap"] = max(trainer_logp_gap(plain, tokenizer, engine.generate(prompts, s)) for s in (GREEDY, SAMPLED))
    plain.train()
    return out


def main(model_dir: str, out_dir: Path) -> None:
    faulthandler.dump_traceback_later(HANG_S, exit=True)  # a hang fails with every thread's stack
    torch.set_num_threads(1)
    # As the trainer: the process group exists before the engine (vLLM adopts it).
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = vllm_config()
    tokenizer = load_tokenizer(model_dir)
    policy = load_policy(cfg.model, model_dir, torch.device("cpu"))
    res: dict = {"rank": rank}

    start = time.perf_counter()
    engine = VllmEngine(cfg, model_dir, tokenizer, policy)
    res["build_s"] = time.perf_counter() - start
    from vllm.distributed import parallel_state as ps

    res["vllm_groups"] = {"world": ps.get_world_group().world_size, "tp": ps.get_tp_group().world_size,
                          "pp": ps.get_pp_group().world_size, "dp": ps.get_dp_group().world_size,
                          "tp_ranks": ps.get_tp_group().ranks}
    res["executor"] = engine.llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend

    # 1. Each rank its own share (unequal: 3 and 3 prompts of different lengths, then 4 / 2 below).
    all_prompts = [encode_prompt(tokenizer, t) for t in TEXTS]
    share = rollout_share(len(TEXTS), 1, world, rank)[0]
    mine = all_prompts[share]
    greedy, sampled = engine.generate(mine, GREEDY), engine.generate(mine, SAMPLED)
    res["share"] = [share.start, share.stop]
    res["share_rows_are_mine"] = greedy.prompt_ids == mine and sampled.prompt_ids == [p for p in mine for _ in range(2)]
    res["share_greedy"] = {"completion_ids": greedy.completion_ids, "sampler_logps": greedy.sampler_logps}
    res["share_sampled"] = sampled.completion_ids
    uneven = engine.generate(all_prompts[:4] if rank == 0 else all_prompts[4:], SAMPLED)  # different batch sizes
    res["uneven_rows"] = len(uneven.completion_ids)
    if rank == 0:  # rank 0 alone, as evaluation does; rank 1 waits at the barrier
        full = engine.generate(all_prompts, GREEDY)
        res["full_greedy"] = {"completion_ids": full.completion_ids, "sampler_logps": full.sampler_logps}
    dist.barrier()

    # 2. DDP: two steps, a sync after each.
    res["initial"] = compare_weights(engine, policy)
    dp = DataParallel.setup(policy, "ddp")
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-2)
    res["ddp"] = []
    for step in range(2):
        train_step(dp.forward_model, optimizer, tokenizer, rank, step)
        start = time.perf_counter()
        engine.sync_weights(policy)
        sync_s = time.perf_counter() - start
        res["ddp"].append(check_after_sync(engine, policy, policy, tokenizer, mine, sync_s))

    # 3. FSDP2: a fresh policy sharded across the ranks, one step, then a sync (gathers the shards).
    sharded = load_policy(cfg.model, model_dir, torch.device("cpu"))
    fsdp = DataParallel.setup(sharded, "fsdp2")
    optimizer = torch.optim.AdamW(sharded.parameters(), lr=3e-2)
    train_step(fsdp.forward_model, optimizer, tokenizer, rank, 2)
    start = time.perf_counter()
    engine.sync_weights(sharded)
    sync_s = time.perf_counter() - start
    plain = load_policy(cfg.model, model_dir, torch.device("cpu"))  # the gathered weights, unsharded
    plain.load_state_dict({n: t.full_tensor() for n, t in sharded.state_dict().items()})
    res["fsdp2"] = check_after_sync(engine, sharded, plain, tokenizer, mine, sync_s)

    # 4. vLLM's shutdown must leave the trainer's process group alone.
    engine.close()
    total = torch.tensor([rank + 1])
    dist.all_reduce(total)
    res["group_alive_after_close"] = dist.is_initialized() and int(total) == world * (world + 1) // 2

    (out_dir / f"rank{rank}.json").write_text(json.dumps(res, indent=1))
    dist.barrier()
    dist.destroy_process_group()
    faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
