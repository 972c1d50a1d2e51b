#!/usr/bin/env bash
# NMI-2022's split CIFAR-100 on a lent GPU: the conv layers pre-trained on CIFAR-10 for every seed in one
# program, then the table's cells, each step within a time budget and continued by the next call.
#
#   bash benchmarks/gpu_split_cifar100.sh OUT_DIR
#
# Before it, the data travel in parts (64 MiB a call; .devdata/ is git-ignored): here
# `python benchmarks/stage_cifar.py`; then one device call per part with carry [".devdata/part-K"] and the
# command `true`. This script puts the parts together, writes the official binary layouts with the
# project's prepare.py, and keeps everything it makes under .devdata/ (ignored, so it stays on the machine
# between calls while the machine is warm): pre-training continues from its checkpoints and the table from
# its finished cells when the script is run again.
#
# Settings through the environment: SEEDS (2-11), EPOCHS (100), SCENARIOS (class), METHODS (all),
# PRETRAIN_SECONDS (300), TABLE_SECONDS (240), PYTHON (python3), DEVICE (gpu; cpu only to try the script).
# OUT_DIR receives environment.txt, pretrain.log, table.log, pretrained-1.tgz and pretrained-2.tgz (the
# sets with their records; unpack into ~/.cache/cljax/) and table.tgz (table.md/.json/.csv and the runs).
set -euo pipefail

OUT_DIR=${1:?usage: bash benchmarks/gpu_split_cifar100.sh OUT_DIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
SEEDS=${SEEDS:-2-11}
WORK="$ROOT/.devdata"
DATA="$WORK/data"
mkdir -p "$OUT_DIR" "$DATA/shared"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 CLJAX_CACHE_DIR="$WORK/cache"
cd "$ROOT"

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    DEVICE=${DEVICE:-gpu} "$PYTHON" -c '
import os, platform, jax, flax, optax
print("python", platform.python_version(), "jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__)
print("jax devices:", jax.devices())
assert os.environ["DEVICE"] != "gpu" or jax.default_backend() == "gpu", "JAX sees no GPU"'
} 2>&1 | tee "$OUT_DIR/environment.txt"

if [[ ! -f "$DATA/cifar-100-binary/test.bin" ]]; then
    for part in "$WORK"/part-*; do cp -r "$part"/. "$DATA/shared/"; done
    "$PYTHON" "$DATA/shared/prepare.py" "$DATA" cifar10 cifar100
fi

# Pre-training: every seed in one program; an interrupted one continues from its last checkpoint.
EPOCHS=${EPOCHS:-100}
first=${SEEDS%%[-,]*}
finished() { ls "$CLJAX_CACHE_DIR/pretrained" 2>/dev/null | grep -E "^cifar10-.*-e$EPOCHS-s[0-9]+\$" | sort -V; }
set +e
timeout --kill-after 10 "${PRETRAIN_SECONDS:-300}" "$PYTHON" -m cljax.cli pretrain --seeds "$SEEDS" \
    --epochs "$EPOCHS" --data-dir "$DATA" 2>&1 | tee -a "$OUT_DIR/pretrain.log"
set -e
mapfile -t folders < <(finished)
echo "pre-trained sets: ${folders[*]:-none}" | tee -a "$OUT_DIR/pretrain.log"
(( ${#folders[@]} > 0 )) || exit 0
paths=("${folders[@]/#/pretrained/}")
half=$(( (${#paths[@]} + 1) / 2 ))  # two archives, each under the 16 MiB a returned file may have
tar czf "$OUT_DIR/pretrained-1.tgz" -C "$CLJAX_CACHE_DIR" "${paths[@]:0:$half}"
(( ${#paths[@]} > half )) && tar czf "$OUT_DIR/pretrained-2.tgz" -C "$CLJAX_CACHE_DIR" "${paths[@]:$half}"

# The table: its cells for the consecutive seeds from the first that have a set; finished cells are kept,
# and a cell cut by the budget continues from its last finished context.
seeds=0
while finished | grep -q -- "-s$((first + seeds))\$"; do seeds=$((seeds + 1)); done
methods=()
[[ -n "${METHODS:-}" ]] && methods=(--methods "$METHODS")
set +e
timeout --kill-after 10 "${TABLE_SECONDS:-240}" "$PYTHON" -m cljax.cli table nmi2022-split-cifar100 \
    --seeds "$seeds" --first-seed "$first" --scenarios "${SCENARIOS:-class}" "${methods[@]}" \
    --data-dir "$DATA" --out-dir "$WORK/table" 2>&1 | tee -a "$OUT_DIR/table.log"
set -e
# the running cell's checkpoints stay on the machine for the next call (they are far over what returns)
[[ -d "$WORK/table" ]] && tar czf "$OUT_DIR/table.tgz" --exclude=table/checkpoints -C "$WORK" table
exit 0
