#!/usr/bin/env bash
# One-command GPU benchmark: bash benchmarks/gpu.sh OUTDIR [extra gpu.py flags]
# Runs from the repository root without installing datakd; writes OUTDIR/gpu.json and prints a short table
# last. Finishes within 3 minutes (sections past the 150 s budget are skipped and listed in the JSON; a
# hard 180 s timeout keeps the partial JSON, which is rewritten after every section).
set -u
out="${1:?usage: bash benchmarks/gpu.sh OUTDIR [gpu.py flags]}"
shift
cd "$(dirname "$0")/.."
mkdir -p "$out"
PYTHON="${PYTHON:-python3}"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 180 "$PYTHON" benchmarks/gpu.py --out "$out/gpu.json" "$@" \
    2> "$out/gpu.stderr.log"
status=$?
if [ "$status" -ne 0 ]; then
    echo "gpu.py exited with status $status; see $out/gpu.stderr.log (partial results in $out/gpu.json)"
    tail -n 5 "$out/gpu.stderr.log"
    [ -f "$out/gpu.json" ] && PYTHONPATH="$PWD" "$PYTHON" benchmarks/gpu.py --table "$out/gpu.json"
fi
exit "$status"
