"""scripts/gpu_check.sh --dry: the GPU check's steps on CPU at toy sizes, writing the same files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry(tmp_path):
    out = tmp_path / "out"
    env = os.environ | {"PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["env"]["dry"] is True
    assert {r["algorithm"] for r in summary["overhead"]} >= {"reinforce", "isopo (fast)", "isopo-interacting (fast)"}
    assert all(r["floor"] >= 1.0 for r in summary["overhead"])
    variants = [r["variant"] for r in summary["memory"]]
    assert variants == ["before (full logits)", "after (chunked head)"]
    assert summary["train"]["status"] == "FINISHED" and summary["train"]["steps_done"] == 2
    assert [line.split()[0] for line in summary["steps"]] == ["overhead", "memory", "train"]
