"""Images/second of the input pipeline alone (no model): datakd's loaders against torchvision's.

* device: the device-resident loader (uint8 split on the device, batched crop/flip/normalise);
* workers: datakd's DataLoader path (per-sample crop/flip on workers, normalisation on the device);
* reference: torchvision DataLoader with per-sample PIL RandomCrop(pad 4) + flip + ToTensor + Normalize.
With --imagefolder DIR the ImageNet path is measured instead (RandomResizedCrop 224 + flip, decoding JPEG/PNG
files) for datakd's worker loader and torchvision's ImageFolder.

    python benchmarks/data_throughput.py --batch-size 128 --batches 50 --workers 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from datakd.config import DataConfig
from datakd.data.build import load_dataset, make_normalizer, train_loader


def timed(batches, limit: int, device: torch.device) -> float:
    images, start = 0, None
    for i, batch in enumerate(batches):
        if i == 2:  # skip start-up (worker spawn, first transfers)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        elif i > 2:
            images += len(batch[1]) if isinstance(batch, (tuple, list)) else len(batch)
        if i >= limit + 2:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def loop(make, epochs: int = 1000):
    for epoch in range(epochs):
        yield from make(epoch)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--imagefolder", help="an ImageNet-layout folder to measure the file path on")
    args = parser.parse_args()
    device = torch.device(args.device)
    import torchvision.transforms as T
    from torch.utils.data import DataLoader

    result: dict = {"device": str(device), "batch_size": args.batch_size, "workers": args.workers}
    if args.imagefolder:
        cfg = DataConfig(
            dataset="imagefolder",
            root=args.imagefolder,
            batch_size=args.batch_size,
            loader="workers",
            workers=args.workers,
            augment="imagenet",
        )
        bundle, _ = load_dataset(cfg, seed=0)
        ours = train_loader(cfg, bundle, make_normalizer(bundle, device), device, seed=0)
        result["workers_images_per_sec"] = timed(loop(ours.epoch), args.batches, device)
        from torchvision.datasets import ImageFolder

        ref = ImageFolder(
            str(Path(args.imagefolder) / "train"),
            T.Compose(
                [
                    T.RandomResizedCrop(224),
                    T.RandomHorizontalFlip(),
                    T.ToTensor(),
                    T.Normalize(bundle.mean, bundle.std),
                ]
            ),
        )
        ref_loader = DataLoader(
            ref,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
        )
        result["reference_images_per_sec"] = timed(loop(lambda _e: iter(ref_loader)), args.batches, device)
        result["ratio"] = result["workers_images_per_sec"] / result["reference_images_per_sec"]
    else:
        cfg = DataConfig(
            dataset="quickstart",
            options={"pad_to_32": True, "rgb": True},
            batch_size=args.batch_size,
            augment="crop_flip",
            crop_padding=4,
            workers=args.workers,
        )
        bundle, _ = load_dataset(cfg, seed=0)
        norm = make_normalizer(bundle, device)
        device_loader = train_loader(cfg, bundle, norm, device, seed=0)
        result["device_images_per_sec"] = timed(loop(device_loader.epoch), args.batches, device)
        worker_cfg = DataConfig(**{**cfg.__dict__, "loader": "workers"})
        worker_loader = train_loader(worker_cfg, bundle, norm, device, seed=0)
        result["workers_images_per_sec"] = timed(loop(worker_loader.epoch), args.batches, device)
        ref_loader = common.reference_loader(
            bundle.train.images, bundle.train.labels, bundle.mean, bundle.std, args.batch_size, args.workers
        )
        result["reference_images_per_sec"] = timed(loop(lambda _e: iter(ref_loader)), args.batches, device)
        result["device_ratio"] = result["device_images_per_sec"] / result["reference_images_per_sec"]
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
