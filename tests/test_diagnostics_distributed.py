"""A 2-rank DDP run gives the same per-step diagnostics as one process over the same microbatches
(tests/_diag_dist_worker.py under `torchrun --standalone --nproc_per_node 2`, gloo on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_diag_dist_worker.py")


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_give_the_one_process_diagnostics(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    proc = subprocess.run([*launcher, "--standalone", "--nproc_per_node=2", str(WORKER), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for results in ranks:
        for name, r in results.items():
            assert r["ref"].keys() == r["dp"].keys() and "diag/kl_tok" in r["ref"], name
            assert any(k.startswith("diag/cos_") for k in r["ref"]), name
            for key, value in r["ref"].items():
                assert r["dp"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
    assert ranks[0] == ranks[1] or all(
        ranks[0][n]["dp"][k] == pytest.approx(v, rel=1e-12) for n in ranks[1] for k, v in ranks[1][n]["dp"].items())
