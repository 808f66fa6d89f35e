"""Train the quick-start teacher and write its weights into the package (`datakd quickstart` ships them).

The teacher is the quick start's own `teacher` stage (ResNet-20, 15 epochs, seed 0, embedded Fashion-MNIST
subset), so `datakd quickstart --train-teacher` reproduces it. After a retrain, paste the printed SHA-256
into `datakd/quickstart.py::TEACHER_SHA256`; the quick start refuses weights whose hash differs.

    PYTHONPATH=. python scripts/train_quickstart_teacher.py [--out runs/quickstart-teacher]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datakd.quickstart import TEACHER_WEIGHTS, export_teacher, train_teacher


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/quickstart-teacher", help="run directory of the training")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    out = Path(args.out)
    summary = train_teacher(out, seed=0, device=args.device)
    target = Path(__file__).resolve().parents[1] / "datakd" / "data" / "embedded" / TEACHER_WEIGHTS
    digest = export_teacher(out / "last.pt", target)
    print(f"teacher top-1 {summary['top1_last']:.2f}% after {summary['epochs']} epochs")
    print(f"wrote {target}")
    print(f"sha256 {digest}")


if __name__ == "__main__":
    main()
