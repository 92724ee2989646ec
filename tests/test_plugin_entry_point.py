"""A third-party algorithm with its own settings, installed through the `isopo_bench.algorithms` entry-point
group (a test-local package on PYTHONPATH with its dist-info): it shows in `--help`, its settings are
flags, it leaves every built-in run's config hash unchanged, and a suite that names it runs it and shows
it on the leaderboard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = textwrap.dedent('''
    """Sign-of-advantage REINFORCE: l_t = -scale * sign(A_i) * logp_t (a loss-only method in one file)."""
    from dataclasses import dataclass

    import torch

    from isopo_bench.aggregation import aggregate
    from isopo_bench.algorithm_api import Algorithm, AlgorithmPreset
    from isopo_bench.errors import ConfigError


    @dataclass(frozen=True)
    class SignSettings:
        scale: float = 1.0
        """Multiplies the sign of the advantage."""


    class SignReinforce(Algorithm):
        Settings = SignSettings
        presets = {"sign-reinforce": AlgorithmPreset(description="REINFORCE on sign(A)")}

        @classmethod
        def validate(cls, setup):
            if not setup.settings.scale > 0:
                raise ConfigError("algorithm.scale", f"must be > 0, got {setup.settings.scale}", "use 1.0")

        def loss(self, logp_BT, mb, totals):
            per_token = -self.settings.scale * torch.sign(mb.advantages_B)[:, None] * logp_BT
            return aggregate(per_token, mb.response_mask_BT, self.setup.loss_agg, totals), {}
''')

HASHES_SCRIPT = textwrap.dedent('''
    import json
    from isopo_bench.suites import SUITES, get_suite
    out = {}
    for name in SUITES.names():
        for cfg in get_suite(name).configs():
            out[f"{name}:{cfg.tracking.run_name}"] = cfg.config_hash()
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    (root / "sign_plugin.py").write_text(PLUGIN)
    info = root / "sign_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sign-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[isopo_bench.algorithms]\nsign-reinforce = sign_plugin:SignReinforce\n")
    return root


def run(args: list[str], cwd: Path, plugin: Path | None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{cwd / 'mlflow.db'}", ISOPO_BENCH_CACHE=str(cwd / "cache"))
    env.pop("PYTHONPATH", None)
    if plugin is not None:
        env["PYTHONPATH"] = str(plugin)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_plugin_leaves_builtin_hashes_unchanged(plugin_path, tmp_path):
    without = run(["-c", HASHES_SCRIPT], tmp_path, None)
    with_plugin = run(["-c", HASHES_SCRIPT], tmp_path, plugin_path)
    assert without.returncode == 0 and with_plugin.returncode == 0, without.stderr + with_plugin.stderr
    before, after = json.loads(without.stdout), json.loads(with_plugin.stdout)
    assert len(before) > 20 and before == after


def test_plugin_settings_are_flags_with_help(plugin_path, tmp_path):
    cli = ["-m", "isopo_bench.cli", "train", "--algorithm.name", "sign-reinforce"]
    shown = run([*cli, "--help"], tmp_path, plugin_path)
    assert shown.returncode == 0 and "--algorithm.scale" in shown.stdout
    assert "Multiplies the sign of the advantage." in shown.stdout
    dry = run([*cli, "--algorithm.scale", "2.5", "--dry-run"], tmp_path, plugin_path)
    assert dry.returncode == 0, dry.stderr
    assert '"scale": 2.5' in dry.stdout
    bad = run([*cli, "--algorithm.scale", "-1", "--dry-run"], tmp_path, plugin_path)
    assert bad.returncode == 1 and "algorithm.scale" in bad.stderr and "Traceback" not in bad.stderr
    # Without the plug-in installed the name is unknown, and the error lists what is known.
    missing = run([*cli, "--dry-run"], tmp_path, None)
    assert missing.returncode == 1 and "sign-reinforce" in missing.stderr and "reinforce" in missing.stderr


@pytest.mark.slow
def test_suite_runs_the_plugin_and_the_leaderboard_shows_it(plugin_path, tmp_path):
    out = run(["-m", "isopo_bench.cli", "suite", "smoke", "--algorithms", "reinforce", "sign-reinforce"],
              tmp_path, plugin_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    csv = tmp_path / "board.csv"
    board = run(["-m", "isopo_bench.cli", "leaderboard", "--suite", "smoke@v2", "--csv", str(csv)], tmp_path, plugin_path)
    assert board.returncode == 0, board.stderr
    import pandas as pd

    table = pd.read_csv(csv)
    assert set(table["algorithm"]) == {"reinforce", "sign-reinforce"}
    assert (table["n_finished"] == 2).all()  # both seeds of both methods, on one board
