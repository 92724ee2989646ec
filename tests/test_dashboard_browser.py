"""The dashboard served by `isopo-bench dashboard` on 127.0.0.1 and loaded in headless Chromium (Debian's
package, driven by playwright-core from dashboards/browser_test; no browser is ever downloaded).

Needs: apt-get install -y chromium nodejs npm; (cd dashboards/browser_test && npm ci). Skips, saying which
is missing, otherwise. CHROMIUM=/path overrides the browser binary."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
BROWSER_TEST = Path(__file__).resolve().parents[1] / "dashboards" / "browser_test"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def require_tools() -> None:
    pytest.importorskip("streamlit", reason="the dashboard extra is not installed: pip install 'isopo-bench[dashboard]'")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium (or set CHROMIUM=/path)")
    if shutil.which("node") is None:
        pytest.skip("node is not installed: apt-get install -y nodejs npm")
    if not (BROWSER_TEST / "node_modules" / "playwright-core").is_dir():
        pytest.skip(f"playwright-core is not installed: cd {BROWSER_TEST} && npm ci")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the dashboard server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as resp:
                if resp.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the dashboard did not answer at {url} within {timeout_s} s:\n{log.read_text()[-3000:]}")


@contextmanager
def served(uri: str, log: Path):
    """`isopo-bench dashboard` in its own process group, so stopping it also stops Streamlit's server."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "isopo_bench.cli", "dashboard", "--port", str(port),
                                 "--tracking-uri", uri], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_dashboard_renders_every_tab_and_the_per_lr_curve_selector_in_headless_chromium(tmp_path):
    """A store of 2 algorithms x 2 learning rates x 2 seeds: every tab draws without an error, and adding an arm
    that is not a default (each algorithm at its best lr) to the Curves tab's selector adds exactly its curve.
    DASHBOARD_SCREENSHOT_TO=docs/dashboard.png copies the Leaderboard screenshot there (what the README shows)."""
    require_tools()
    from test_dashboard import SUITE, make_store

    from isopo_bench import leaderboard as lb
    from isopo_bench.dashboards import _arms

    uri = make_store(tmp_path, algorithms=("reinforce", "grpo"), seeds=(0, 1), steps=3, lrs=(1e-3, 3e-3))
    runs = lb.load_runs(uri)
    arms, default = list(_arms.arm_table(runs)[_arms.ARM]), _arms.best_arms(runs)
    assert len(arms) == 4 and len(default) == 2, (arms, default)  # one lr per algorithm by default
    added = next(a for a in arms if a not in default)
    screenshot = tmp_path / "dashboard.png"
    with served(uri, tmp_path / "server.log") as url:
        out = subprocess.run(["node", "check.js", url, str(screenshot), CHROMIUM], cwd=BROWSER_TEST,
                             capture_output=True, text=True, timeout=400, env=os.environ | {"SELECT_ARM": added})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    tabs = ["Leaderboard", "Curves", "Overhead", "Run details", "Diagnostics"]
    assert result["title"] == "isopo-bench dashboard"
    assert result["tabs"] == tabs
    assert result["exceptions"] == 0 and result["exceptions_per_tab"] == dict.fromkeys(tabs, 0)
    assert result["dataframes"] >= 1 and result["plotly"] >= 1
    # Leaderboard: accuracy bars and accuracy against lr; Curves: reward, accuracy, entropy (grad/norm when logged);
    # Run details: the mismatch chart; Diagnostics: the trade-off and at least the KL curve (tiny runs log diag/
    # at their first steps only, so not every diagnostic has a curve)
    charts = result["plotly_per_tab"]
    assert charts["Leaderboard"] >= 2 and charts["Curves"] >= 3 and charts["Overhead"] >= 1
    assert charts["Run details"] >= 1 and charts["Diagnostics"] >= 2
    assert [h for h in result["leaderboard_headings"] if SUITE in h and "arithmetic" in h]
    assert result["curve_legends_before"] == sorted(default)
    assert result["curve_legends_after"] == sorted([*default, added])
    assert result["selected_arms"] == [*default, added]
    for shot in (screenshot, tmp_path / "dashboard-curves.png"):
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("DASHBOARD_SCREENSHOT_TO"):
        shutil.copy(screenshot, os.environ["DASHBOARD_SCREENSHOT_TO"])


def test_start_point_selector_defaults_to_the_majority_and_switches_the_leaderboard_in_headless_chromium(tmp_path):
    """The hand-written store with two start hashes in one group (tests/_dash_store: 8 runs from START_HASH,
    4 from OTHER_START_HASH at lr 1e-3): the sidebar's selector starts on the majority hash and the Leaderboard
    tab draws numbers for it (not the refusal); picking the other hash redraws the table and the bars."""
    require_tools()
    import _dash_store as S
    from test_dashboard import OTHER_START_ARMS

    from isopo_bench import metric_names as M

    uri = S.make_synthetic_store(tmp_path, other_start_arms=OTHER_START_ARMS)
    with served(uri, tmp_path / "server.log") as url:
        out = subprocess.run(["node", "check.js", url, str(tmp_path / "shot.png"), CHROMIUM], cwd=BROWSER_TEST,
                             capture_output=True, text=True, timeout=400,
                             env=os.environ | {"START_POINT": f"{S.OTHER_START_HASH} (4 runs)"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["exceptions_per_tab"] == dict.fromkeys(result["tabs"], 0)
    assert (result["start_point_before"], result["start_point_after"]) == (f"{S.START_HASH} (8 runs)",
                                                                           f"{S.OTHER_START_HASH} (4 runs)")

    def final(algorithm: str, lr: float, start: str) -> float:
        return sum(S.final_accuracy((algorithm, lr, "adamw"), s, start) for s in (0, 1)) / 2

    # (model shown, runs finished, mean over lrs of the mean final accuracy, bar: the best lr's) per algorithm
    expected = {
        "before": (S.MODEL_DISPLAY, {a: (4, (final(a, 1e-4, S.START_HASH) + final(a, 1e-3, S.START_HASH)) / 2)
                                     for a in ("reinforce", "grpo")},
                   {"reinforce": final("reinforce", 1e-3, S.START_HASH), "grpo": final("grpo", 1e-4, S.START_HASH)}),
        "after": (S.DISPLAY[S.OTHER_START_HASH],
                  {a: (2, final(a, 1e-3, S.OTHER_START_HASH)) for a in ("reinforce", "grpo")},
                  {a: final(a, 1e-3, S.OTHER_START_HASH) for a in ("reinforce", "grpo")}),
    }
    for when, (model, rows, bars) in expected.items():
        drawn = result[f"leaderboard_{when}"]
        assert drawn["errors"] == 0 and drawn["headings"] == [
            f"Leaderboard: suite {S.SUITE}, task {S.TASK}, model {model}"]
        table = {r[M.LB_ALGORITHM]: r for r in (dict(zip(drawn["header"], row)) for row in drawn["rows"])}
        assert {r[M.LB_MODEL] for r in table.values()} == {model} and set(table) == set(rows)
        for algorithm, (finished, mean_over_lrs) in rows.items():
            assert int(table[algorithm][M.LB_N_FINISHED]) == finished
            assert float(table[algorithm][M.LB_ROBUST_MEAN]) == pytest.approx(mean_over_lrs)
        assert dict(zip(drawn["bars"]["x"], drawn["bars"]["y"])) == pytest.approx(bars)
