#!/usr/bin/env bash
# The detection + segmentation evidence (benchmarks/evidence/dense.py) on one GPU inside a fixed wall-clock
# budget: it generates the scenes test bed, trains its own teachers, then the student arms at the protocol's
# fixed seeds, and writes OUTDIR/dense/RESULTS.md + runs.csv (nothing large has to be copied to the GPU
# machine: only the Fashion-MNIST IDX files).
#
#   bash benchmarks/evidence/gpu_dense.sh FMNIST_DIR OUTDIR [SECONDS]
#
# Environment: DEVICE (cuda), JOBS (8 processes on the one GPU), PROTOCOL (gpu), ARMS (dense.py's ARMS).
# A call cut by its time limit leaves finished runs in place; the same command continues (runs resume).
set -u
fmnist="${1:?usage: gpu_dense.sh FMNIST_DIR OUTDIR [SECONDS]}"
out="${2:?OUTDIR}"
seconds="${3:-540}"
cd "$(dirname "$0")/../.."
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
extra=()
[ -n "${ARMS:-}" ] && extra+=(--arms "$ARMS")
timeout -k 15 "$seconds" "$PYTHON" benchmarks/evidence/dense.py --fmnist "$fmnist" --out "$out/dense" \
    --protocol "${PROTOCOL:-gpu}" --device "${DEVICE:-cuda}" --jobs "${JOBS:-8}" "${extra[@]}" \
    > "$out/dense.log" 2>&1
echo "runner exit $?" >> "$out/dense.log"
pkill -f '[-]m datakd' 2> /dev/null
"$PYTHON" benchmarks/evidence/dense.py --out "$out/dense" --report-only >> "$out/dense.log" 2>&1
tail -n 40 "$out/dense.log"
tar -czf "$out/dense-results.tar.gz" -C "$out" dense/RESULTS.md dense/runs.csv dense/meta.json dense.log 2>/dev/null
