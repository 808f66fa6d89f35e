#!/usr/bin/env bash
# A first look at a GPU machine (about 2 minutes): software versions, that datakd trains on CUDA from the
# repository root without an install, and the wall time of the run sizes the evidence benchmark uses.
#   bash benchmarks/gpu_probe.sh DATA_ROOT          # DATA_ROOT: the four Fashion-MNIST IDX files
# Prints each run's summary.json; no results are written outside /tmp.
set -u
data="${1:?usage: bash benchmarks/gpu_probe.sh DATA_ROOT}"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
"$PYTHON" -c "import torch, torchvision; print('torch', torch.__version__, torchvision.__version__, torch.cuda.is_available())"
run() {  # name, then datakd arguments
    local name=$1; shift
    local t0; t0=$(date +%s.%N)
    timeout 120 "$PYTHON" -m datakd "$@" --data-root "$data" --device cuda --quiet > "/tmp/probe-$name.log" 2>&1
    echo "$name rc=$? wall $("$PYTHON" -c "import sys, time; print(round(time.time() - float(sys.argv[1]), 1))" "$t0") s"
}
run teacher train --config recipes/tiny/teacher.yaml --out /tmp/probe-t --overwrite \
    data.train_subset=null data.test_subset=null epochs=1
cat /tmp/probe-t/summary.json
run kd distill --config recipes/tiny/kd.yaml --out /tmp/probe-s --overwrite --teacher-checkpoint /tmp/probe-t/last.pt \
    data.train_subset=2000 data.test_subset=null epochs=5
cat /tmp/probe-s/summary.json
run kd_fast distill --config recipes/tiny/kd.yaml --out /tmp/probe-s2 --overwrite \
    --teacher-checkpoint /tmp/probe-t/last.pt data.train_subset=2000 data.test_subset=null epochs=5 \
    engine.compile=true engine.amp=true engine.channels_last=true
cat /tmp/probe-s2/summary.json
t0=$(date +%s)
for i in $(seq 0 11); do
    timeout 120 "$PYTHON" -m datakd distill --config recipes/tiny/kd.yaml --out "/tmp/probe-p$i" --overwrite \
        --teacher-checkpoint /tmp/probe-t/last.pt --data-root "$data" --device cuda --quiet \
        data.train_subset=2000 data.test_subset=null epochs=5 seed="$i" > "/tmp/probe-p$i.log" 2>&1 &
done
wait
echo "12 KD runs in parallel: $(( $(date +%s) - t0 )) s"
grep -h '"wall_seconds"\|"images_per_sec"' /tmp/probe-p*/summary.json
