#!/usr/bin/env bash
# cljax against the PyTorch reference on a GPU machine, in under 8 minutes, with nothing downloaded.
#
#   bash benchmarks/gpu.sh OUT_DIR [DATA_DIR [MORE_RUN_PY_FLAGS...]]
#
# Needs JAX with CUDA, flax, optax, tqdm and PyTorch with CUDA already installed; cljax itself is used
# from this checkout through PYTHONPATH (no pip install). OUT_DIR receives <machine>.json, <machine>.md,
# gpu.log and environment.txt. DATA_DIR holds mnist/ with the four IDX .gz files (or is that folder);
# default: $CLJAX_DATA_DIR, else ./shared/data, else ../shared/data.
#
# What runs (benchmarks/run.py, every measurement in a fresh process): for none, er, lwf and dgr in
# Class-IL at the full 2000 iterations per context, cljax with 1 seed and with 20 seeds in one program,
# the eager PyTorch reference, and torch.compile for `none`; a 4096 x 4096 float32 matmul in both
# frameworks for the FLOP/s comparison. Repeats are interleaved; no measurement starts after
# BUDGET_SECONDS, so a slow machine yields fewer repeats rather than a longer run.
# Settings through the environment: PYTHON (python3), REPEATS (3), ITERS (2000), SEEDS (20),
# STRATEGIES (none,er,lwf,dgr), TORCH_COMPILE (none; empty: skip), BUDGET_SECONDS (330),
# PRECISION (fp32: full float32 matmuls in both frameworks; tf32: TF32 in both), DEVICE (gpu; cpu only
# to try the script out: DEVICE=cpu ITERS=5 REPEATS=1 bash benchmarks/gpu.sh /tmp/out DIR --matmul-size 256).
set -euo pipefail

OUT_DIR=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [DATA_DIR [MORE_RUN_PY_FLAGS...]]}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA_DIR=${2:-${CLJAX_DATA_DIR:-}}
if [[ -z "$DATA_DIR" ]]; then
    for d in "$ROOT/shared/data" "$ROOT/../shared/data"; do
        [[ -d "$d" ]] && DATA_DIR=$d && break
    done
fi
if [[ -z "$DATA_DIR" || ! -d "$DATA_DIR" ]]; then
    echo "gpu.sh: no MNIST folder; pass DATA_DIR (a folder with mnist/*.gz) or set CLJAX_DATA_DIR" >&2
    exit 2
fi
DATA_DIR=$(cd "$DATA_DIR" && pwd)
shift $(($# < 2 ? $# : 2))
DEVICE=${DEVICE:-gpu}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$ROOT"

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
    DEVICE=$DEVICE "$PYTHON" - <<'EOF'
import os, platform, jax, torch, flax, optax
print("python", platform.python_version(), "jax", jax.__version__, "flax", flax.__version__,
      "optax", optax.__version__, "torch", torch.__version__)
print("jax devices:", jax.devices())
print("torch cuda:", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
if os.environ["DEVICE"] == "gpu":
    assert jax.default_backend() == "gpu", "JAX sees no GPU: install jax with CUDA"
    assert torch.cuda.is_available(), "PyTorch sees no GPU: install a CUDA build of torch"
EOF
} 2>&1 | tee "$OUT_DIR/environment.txt"

args=(
    --device "$DEVICE"
    --data-dir "$DATA_DIR"
    --out-dir "$OUT_DIR"
    --strategies "${STRATEGIES:-none,er,lwf,dgr}"
    --iters "${ITERS:-2000}"
    --repeats "${REPEATS:-3}"
    --seeds "${SEEDS:-20}"
    --precision "${PRECISION:-fp32}"
    --budget-seconds "${BUDGET_SECONDS:-330}"
    --timeout 120
)
TORCH_COMPILE=${TORCH_COMPILE-none}
[[ -n "$TORCH_COMPILE" ]] && args+=(--torch-compile "$TORCH_COMPILE")
args+=("$@")

# 450 s: the budget, plus the longest single measurement, plus writing; results are saved after every
# measurement, so even a stopped run leaves its tables.
set -o pipefail
timeout --kill-after 10 450 "$PYTHON" benchmarks/run.py "${args[@]}" 2>&1 | tee "$OUT_DIR/gpu.log"
