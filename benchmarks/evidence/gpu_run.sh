#!/usr/bin/env bash
# The evidence protocol's default regime on one GPU inside a fixed wall-clock budget, then the short GPU
# throughput benchmark, packed into one archive (a lent GPU is held for minutes, not hours).
#
#   bash benchmarks/evidence/gpu_run.sh DATA_ROOT OUTDIR REVISION [EVIDENCE_SECONDS [BENCH_SECONDS]]
#
# Default protocol (run.py's defaults: full-split teacher, 2,000-image student subset, 60 epochs, every
# epoch tested on the 10,000 test images), the arms of the claims and their controls (kd_tstloss,
# kd_dpkloss; non-claim arms are cut first; iikd/iikd_pba need a search that can choose, README "Design"),
# at the design's fixed seeds (10 on a GPU, arms.SEEDS_PER_CLAIM; no adaptive seeds, so no looks). Seed-major
# order: a call cut by its time limit leaves every arm at the same seeds, and a second call with the same
# OUTDIR runs the rest (finished runs skipped). About 130 runs: two calls of ~9 minutes on one H200.
# No run is launched in the last 90 s of EVIDENCE_SECONDS; a run still going when it ends is killed.
# Environment: DEVICE (cuda), JOBS (14), ARMS, EXTRA (more run.py flags; a CPU dry run uses them).
set -u
data="${1:?usage: gpu_run.sh DATA_ROOT OUTDIR REVISION [EVIDENCE_SECONDS [BENCH_SECONDS]]}"
out="${2:?OUTDIR}"
rev="${3:?REVISION}"
ev_seconds="${4:-410}"
bench_seconds="${5:-110}"
device="${DEVICE:-cuda}"
arms="${ARMS:-ce,kd,kd_cutmix,tlcutmix,tlcutmix_pick,tst,tst_fixed,kd_tstloss,wsl,wsl_ckm_cheap,dpk,dpk_fixed,kd_dpkloss}"
cd "$(dirname "$0")/../.."
data="$(cd "$data" && pwd)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
    "$PYTHON" -c "import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, \
torchvision.__version__, 'cuda' if torch.cuda.is_available() else 'no cuda')"
    echo "cpus $(nproc)"
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

evidence() {  # arms, seconds
    local deadline
    deadline=$("$PYTHON" -c "print(max(0.5, ($2 - 90) / 60))")
    # shellcheck disable=SC2086
    timeout -k 15 "$2" "$PYTHON" benchmarks/evidence/run.py --data-root "$data" --out "$out/ev" \
        --device "$device" --jobs "${JOBS:-14}" --threads 1 --revision "$rev" --arms "$1" \
        --deadline-minutes "$deadline" ${EXTRA:-} >> "$out/ev.log" 2>&1
    echo "runner exit $?" >> "$out/ev.log"
    pkill -f '[-]m datakd' 2> /dev/null
    sleep 2
}

start=$SECONDS
evidence "$arms" "$ev_seconds"
if [ ! -s "$out/ev/runs.csv" ] && grep -q "tst_fit failed" "$out/ev.log"; then
    # TST Stage I failed before any run: the other claims still get the time that is left.
    left=$((ev_seconds - (SECONDS - start)))
    [ "$left" -gt 120 ] && evidence "$(echo "$arms" | tr ',' '\n' | grep -v '^tst' | paste -sd,)" "$left"
fi
tail -n 40 "$out/ev.log"

if [ "$bench_seconds" -gt 0 ] && [ "$device" = cuda ]; then
    timeout -k 10 "$bench_seconds" bash benchmarks/gpu.sh "$out/bench" --budget $((bench_seconds - 35)) \
        > "$out/bench.log" 2>&1
    echo "gpu.sh exit $?" >> "$out/bench.log"
    tail -n 30 "$out/bench.log"
fi

# Everything but checkpoints, in one file (the device tool returns at most 8 files).
tar -C "$out" --exclude='*.pt' -czf "$out/../evidence_gpu.tgz" . && ls -la "$out/../evidence_gpu.tgz"
