"""`isopo-bench dashboard`: serve the Streamlit dashboard (dashboards/app.py) on 127.0.0.1.

The app gets its settings through environment variables rather than script arguments, because Streamlit's
AppTest (the tests) can set those but not argv: MLFLOW_TRACKING_URI (the store to read) and
ISOPO_OVERHEAD_FILE (results of `isopo-bench overhead` saved as CSV or JSON).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from isopo_bench.errors import IsopoBenchError
from isopo_bench.tracking import resolve_uri

OVERHEAD_FILE_ENV = "ISOPO_OVERHEAD_FILE"


def app_path() -> Path:
    """dashboards/app.py, found through the installed package so it works from any working directory."""
    spec = importlib.util.find_spec("isopo_bench.dashboards")
    if spec is None or not spec.submodule_search_locations:
        raise IsopoBenchError("the dashboard package isopo_bench.dashboards is not installed. Fix: reinstall isopo-bench")
    return Path(list(spec.submodule_search_locations)[0]) / "app.py"


def absolute_uri(uri: str) -> str:
    """A relative sqlite path names a file in the launcher's folder, whatever folder the server later uses."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def streamlit_command(host: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(app_path()),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        # no file watcher: a served dashboard is not being edited, and polling costs CPU on shared machines
        "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
    ]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="isopo-bench dashboard", description="Serve the Streamlit dashboard.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: local machine only)")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--tracking-uri", default="",
                        help="MLflow store to read; default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db here")
    parser.add_argument("--overhead-file", default="",
                        help="CSV or JSON rows written from `isopo-bench overhead` results, shown on the Overhead tab")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if importlib.util.find_spec("streamlit") is None or importlib.util.find_spec("plotly") is None:
        raise IsopoBenchError("the dashboard needs streamlit and plotly. Fix: pip install 'isopo-bench[dashboard]'")
    env = dict(os.environ, MLFLOW_TRACKING_URI=absolute_uri(resolve_uri(args.tracking_uri)))
    if args.overhead_file:
        env[OVERHEAD_FILE_ENV] = str(Path(args.overhead_file).resolve())
    url = f"http://{args.host}:{args.port}"
    print(f"dashboard for {env['MLFLOW_TRACKING_URI']} at {url}  (Ctrl+C stops it)", flush=True)  # noqa: T201 - CLI
    return serve(streamlit_command(args.host, args.port), env)


STOP_TIMEOUT_S = 10.0


def serve(command: list[str], env: dict) -> int:
    """Run Streamlit as a child and pass SIGTERM / SIGINT on to it, then wait for it to exit (killing it
    after STOP_TIMEOUT_S), so stopping the launcher never leaves a server holding the port."""
    import signal

    received: list[int] = []
    children: list[subprocess.Popen] = []

    def forward(signum, _frame):
        received.append(signum)
        if children and children[0].poll() is None:
            children[0].send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}  # before the child starts
    child = None
    try:
        child = subprocess.Popen(command, env=env)
        children.append(child)
        if received:  # a signal arrived while it was starting
            child.send_signal(received[0])
        while True:
            try:
                code = child.wait(timeout=STOP_TIMEOUT_S if received else None)
                break
            except subprocess.TimeoutExpired:  # asked to stop but still running
                child.kill()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child is not None and child.poll() is None:  # the launcher itself is failing: never orphan the server
            child.kill()
            child.wait()
    return 0 if received else code
