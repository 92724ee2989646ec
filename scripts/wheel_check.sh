#!/usr/bin/env bash
# Builds the wheel, installs it (not editable) into a fresh virtualenv and runs the CLI from outside the
# source tree: what a user who `pip install`s the package gets. An editable checkout hides a package
# missing from pyproject.toml; this does not.
#   bash scripts/wheel_check.sh [WORKDIR]
# The fresh venv takes its third-party dependencies from .venv's site-packages through a .pth line (a
# directory named in a .pth file is not itself scanned for .pth files, so .venv's editable isopo-bench is
# invisible there); isopo-bench itself comes only from the wheel.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$(mktemp -d)}"
mkdir -p "$WORK"
PY="$ROOT/.venv/bin/python"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# setuptools >= 70.1 builds wheels itself (older ones need the `wheel` package for bdist_wheel).
"$PY" -m pip install -q "setuptools>=70.1"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$ROOT"
"$PY" - "$WORK"/dist/isopo_bench-*.whl <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
assert "isopo_bench/warm_starts/README.md" in names, "the shipped warm starts folder is missing from the wheel"
print("wheel ships warm starts:", sorted(n.split("/")[2] for n in names if n.count("/") == 3 and "/warm_starts/" in n))
PY
python3 -m venv "$WORK/venv"
FRESH_SITE="$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$SITE" > "$FRESH_SITE/isopo_deps.pth"
"$WORK/venv/bin/pip" install -q --no-deps "$WORK"/dist/isopo_bench-*.whl
cd "$WORK"  # outside the source tree: nothing can be imported from the checkout
BIN="$WORK/venv/bin/isopo-bench"
"$WORK/venv/bin/python" - "$ROOT" <<'PY'
import sys, isopo_bench
root = sys.argv[1]
assert not isopo_bench.__file__.startswith(root), f"isopo_bench imported from the checkout: {isopo_bench.__file__}"
print("installed package:", isopo_bench.__file__)
PY
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db" ISOPO_BENCH_CACHE="$WORK/cache"
"$BIN" train --preset tiny-smoke --tracking.output-dir "$WORK/runs" --threads 1
"$BIN" suite smoke --workers 1
"$BIN" control-train --dry-run
PORT=$("$WORK/venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" dashboard --port "$PORT" > "$WORK/dashboard.log" 2>&1 &
DASH=$!
trap 'kill $DASH 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do
  if "$WORK/venv/bin/python" -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$PORT/_stcore/health', timeout=2).status == 200 else 1)" 2>/dev/null; then
    echo "dashboard served on 127.0.0.1:$PORT"; exit 0
  fi
  sleep 1
done
echo "dashboard did not start; its log:" >&2; cat "$WORK/dashboard.log" >&2; exit 1
