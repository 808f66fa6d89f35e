#!/usr/bin/env bash
# SIGTERM in the middle of a quick-start-sized run, then the same requeue command; prints whether the final
# weights equal those of an uninterrupted run bit for bit (docs/reliability.md).
#
# The run is the quick start's student_ce stage (resnet8 on the 6,000 embedded Fashion-MNIST training images,
# batch 128, 47 steps per epoch, cosine schedule) for EPOCHS epochs on the CPU; the signal arrives SECONDS
# after the first epoch ended.
#   bash benchmarks/preemption_quickstart.sh [OUT=runs/preemption-check] [EPOCHS=3] [SECONDS=7]
set -u
OUT=${1:-runs/preemption-check}
EPOCHS=${2:-3}
WAIT=${3:-7}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
rm -rf "$OUT/reference" "$OUT/preempted"
$PY - "$OUT" "$EPOCHS" <<'PYEOF'
import sys
from pathlib import Path

import yaml

from datakd.quickstart import stage_config

out, epochs = Path(sys.argv[1]), int(sys.argv[2])
values = stage_config("student_ce", out, 0, "cpu", None, epochs, True)
values.pop("out")
(out / "recipe.yaml").write_text(yaml.safe_dump(values))
PYEOF
CMD=($PY -m datakd train --config "$OUT/recipe.yaml" --quiet)
"${CMD[@]}" --out "$OUT/reference" > /dev/null || exit 1
"${CMD[@]}" --out "$OUT/preempted" --resume auto > /dev/null &
PID=$!
while [ ! -f "$OUT/preempted/metrics.csv" ]; do sleep 0.2; done
sleep "$WAIT"
kill -TERM "$PID"
wait "$PID"
echo "preempted run: exit code $? (75 = preempted)"
"${CMD[@]}" --out "$OUT/preempted" --resume auto > /dev/null
echo "resumed run: exit code $?"
$PY - "$OUT" <<'PYEOF'
import sys

import torch

from datakd.checkpoint import load_checkpoint

out = sys.argv[1]
a = load_checkpoint(f"{out}/reference/last.pt")["model"]
b = load_checkpoint(f"{out}/preempted/last.pt")["model"]
print(f"final weights bit-identical to the uninterrupted run: {all(torch.equal(a[k], b[k]) for k in a)}")
PYEOF
