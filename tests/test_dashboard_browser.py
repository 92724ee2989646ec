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


def test_dashboard_renders_in_headless_chromium(tmp_path):
    require_tools()
    from test_dashboard import SUITE, make_store

    uri = make_store(tmp_path, algorithms=("reinforce", "grpo"), seeds=(0,), steps=2)
    screenshot = tmp_path / "dashboard.png"
    with served(uri, tmp_path / "server.log") as url:
        out = subprocess.run(["node", "check.js", url, str(screenshot), CHROMIUM], cwd=BROWSER_TEST,
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["title"] == "isopo-bench dashboard"
    assert result["tabs"] == ["Leaderboard", "Curves", "Overhead", "Run details", "Diagnostics"]
    assert result["exceptions"] == 0
    assert result["dataframes"] >= 1 and result["plotly"] >= 1
    assert [h for h in result["leaderboard_headings"] if SUITE in h and "arithmetic" in h]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
