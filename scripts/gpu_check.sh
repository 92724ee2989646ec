#!/usr/bin/env bash
# GPU readiness check (one CUDA GPU, no network, at most ~8 minutes). Writes figures to OUT (default
# gpu_check_out/): overhead.csv, memory.csv, train.json and their summary gpu_check.json.
#   bash scripts/gpu_check.sh [--dry] [OUT]
#   --dry                 the same steps on CPU at toy sizes (tests/test_gpu_check.py runs it)
#   ISOPO_WHEELS=DIR      a folder of wheels for the Python dependencies torch/transformers do not bring
#                         (pip install --no-index --find-links DIR; nothing is downloaded)
#   PYTHON=...            the interpreter with the preinstalled torch (default: python3)
# Steps (each under its own time limit, so one failing or slow step does not eat the others' time):
#   overhead  Qwen3-0.6B widths, depth 28, vocabulary 151,936, bfloat16, T 2048, B 8        (<= 200 s)
#   memory    peak of one update step at the paper's shape, full logits vs chunked head      (<= 120 s)
#   train     20-step tiny training run on CUDA with the HF engine                           (<= 120 s)
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=""
if [ "${1:-}" = "--dry" ]; then DRY="--dry"; shift; fi
OUT=${1:-gpu_check_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
: > "$OUT/steps.log"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 MLFLOW_ENABLE_ASYNC_LOGGING=false

if ! "$PY" -c "import isopo_bench.algorithms" 2>/dev/null; then
  if [ -n "${ISOPO_WHEELS:-}" ]; then
    "$PY" -m pip install -q --no-index --find-links "$ISOPO_WHEELS" -e . \
      || "$PY" -m pip install -q --no-index --find-links "$ISOPO_WHEELS" --no-deps --no-build-isolation -e .
  else
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e .
  fi
fi
"$PY" - <<'PYEOF' || { echo "gpu_check: missing Python dependencies (set ISOPO_WHEELS)" | tee -a "$OUT/steps.log"; exit 2; }
import torch, transformers, mlflow, pandas, tyro, isopo_bench.algorithms  # noqa: F401
print(f"torch {torch.__version__} (cuda {torch.cuda.is_available()}), transformers {transformers.__version__}")
PYEOF
if [ -z "$DRY" ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device (use --dry on CPU)" | tee -a "$OUT/steps.log"; exit 2
fi

run_step() {  # name, limit in seconds
  local start=$SECONDS
  timeout --signal=TERM --kill-after=10 "$2" "$PY" -m isopo_bench.gpu_check "$1" "$OUT" $DRY > "$OUT/$1.log" 2>&1
  local rc=$?
  echo "$1 rc=$rc seconds=$((SECONDS - start))" | tee -a "$OUT/steps.log"
  tail -n 20 "$OUT/$1.log"
}
run_step overhead 200
run_step memory 120
run_step train 120
run_step summary 30
grep -q "rc=0" "$OUT/steps.log" && ! grep -v "rc=0" "$OUT/steps.log" | grep -q rc=
