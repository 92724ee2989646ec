"""Every registered algorithm trains end to end through the spine and moves every trainable parameter."""

from __future__ import annotations

import pytest
import torch

from conftest import smoke_config
from isopo_bench.config import replace
from isopo_bench.plugins import ALGORITHMS
from isopo_bench.trainer import Trainer


def noisy_advantages(rewards_PG: torch.Tensor) -> torch.Tensor:
    # The random tiny model earns no reward; seeded noise gives every algorithm a gradient to follow.
    return torch.randn(rewards_PG.shape, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_two_steps_move_every_trainable_parameter(workdir, name):
    cfg = replace(smoke_config(workdir), **{"algorithm.name": name, "optim.steps": 2, "optim.weight_decay": 0.0,
                                            "eval.at_start": False, "tracking.checkpoint_every": 0})
    trainer = Trainer(cfg)
    trainer.advantage_fn = noisy_advantages
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    result = trainer.run()
    assert result.status == "FINISHED" and result.steps_done == 2
    unmoved = [n for n, p in trainer.model.named_parameters() if p.requires_grad and torch.equal(p.detach(), before[n])]
    assert unmoved == []
