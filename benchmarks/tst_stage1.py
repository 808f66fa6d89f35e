"""TST Stage I at full length: fit all 11 meta-encoders and print seconds and MSE per op.

The test suite only runs a few dozen iterations per op; this is the long fit (the authors' CIFAR schedule,
STN 10 epochs and CN 20 epochs at batch 64, unless --epochs-* say otherwise). Data: CIFAR-100 when
--data-root holds it, else the embedded Fashion-MNIST subset padded to 32×32 RGB.

    python benchmarks/tst_stage1.py --device cpu --epochs-spatial 2 --epochs-color 2
    python benchmarks/tst_stage1.py --data-root DATA --device cuda --out tst_encoders/cifar100.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datakd.augmenters.tst.encoder_file import FitConfig
from datakd.config import DataConfig
from datakd.engine.build import resolve_device
from datakd.jobs.tst_fit import fit_or_load, format_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="CIFAR-100 folder (default: embedded Fashion-MNIST, 32×32 RGB)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs-spatial", type=int, default=10)
    parser.add_argument("--epochs-color", type=int, default=20)
    parser.add_argument("--subset", type=float, help="count or fraction of the training split")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--out", help="keep the encoders file here (default: a temporary file)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data_root:
        data = DataConfig(dataset="cifar100", root=args.data_root, augment="crop_flip", crop_padding=4)
    else:
        data = DataConfig(dataset="quickstart", options={"pad_to_32": True, "rgb": True}, augment="crop_flip")
    fit = FitConfig(epochs_spatial=args.epochs_spatial, epochs_color=args.epochs_color, subset=args.subset)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "encoders.pt"
        started = time.perf_counter()
        payload, cached = fit_or_load(out, data, fit, device, force=not args.out, say=print)
        seconds = time.perf_counter() - started
    print(format_report(payload))
    summary = {
        "data": payload["data"]["dataset"],
        "images": payload["data"]["num_train"],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seconds_total": round(seconds, 1),
        "cached": cached,
        "mse": {op: [round(r["mse_init"], 4), round(r["mse_final"], 4), round(r["mse_identity"], 4)]
                for op, r in payload["report"].items()},
    }  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
