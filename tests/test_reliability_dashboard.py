"""Issue 13, item 7: the dashboard's MLflow reads end in an error with the fix (never an endless spinner),
and stopping `isopo-bench dashboard` stops its Streamlit child."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="the dashboard extra is not installed: pip install 'isopo-bench[dashboard]'")
pytest.importorskip("plotly", reason="the dashboard extra is not installed: pip install 'isopo-bench[dashboard]'")

from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "dashboards" / "app.py")


def test_unreachable_server_shows_an_error_with_the_fix_in_seconds(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    start = time.time()
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = " ".join(e.value for e in at.error)
    assert "127.0.0.1:9" in errors and "unreachable" in errors and "Fix:" in errors, errors
    assert time.time() - start < 60


def test_a_read_that_hangs_times_out_with_the_fix():
    from isopo_bench.dashboards._data import StoreTimeout, bounded

    with pytest.raises(StoreTimeout, match="no answer within 0 s. Fix: check that the tracking server"):
        bounded(time.sleep, 5, timeout_s=0.2)
    assert bounded(sum, [1, 2]) == 3


CHILD = """
import os, signal, sys, time
pid_file = sys.argv[1]
def stop(signum, frame):
    open(pid_file + ".signal", "w").write(str(signum))
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
open(pid_file, "w").write(str(os.getpid()))
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_launcher_forwards_the_signal_to_its_child_and_waits(tmp_path, sig):
    pid_file = tmp_path / "child.pid"
    launcher = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, sys
        from isopo_bench.dashboard_launcher import serve
        sys.exit(serve([sys.executable, "-c", {CHILD!r}, {str(pid_file)!r}], dict(os.environ)))
    """)])
    deadline = time.time() + 60
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    launcher.send_signal(sig)
    assert launcher.wait(timeout=30) == 0
    assert Path(f"{pid_file}.signal").read_text() == str(int(sig)), "the child got the same signal"
    assert not alive(child), "the Streamlit child outlived the launcher"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_to_the_dashboard_frees_its_port(workdir):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "isopo_bench.cli", "dashboard", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the dashboard never listened")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    time.sleep(0.5)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "an orphaned Streamlit still serves the port"
