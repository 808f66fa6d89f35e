"""Training throughput of datakd's CE and KD steps against a RepDistiller-style reference loop.

Both sides run in the same process on the same data, models and device, so the ratio is meaningful:

* datakd: the real trainer (`build_trainer` + `Trainer.train_step`) fed by the device-resident loader
  (uint8 split on the device, batched crop/flip/normalise), optionally with bf16 autocast,
  channels_last and torch.compile (`--fast`, CUDA only).
* reference: what RepDistiller does: torchvision DataLoader over PIL images with per-sample
  RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize on worker processes, then a plain
  fp32 loop (teacher forward under no_grad, student forward, 0.1·CE + 0.9·KD, backward, SGD step).

Data: CIFAR-100 when --data-root holds it, else the embedded Fashion-MNIST subset padded to 32×32 RGB
(CIFAR geometry; the throughput does not depend on the pixel values). Teachers are randomly initialised:
throughput does not depend on the weights either.

    python benchmarks/throughput.py --teacher resnet56 --student resnet20 --batch-size 128 \
        --device cpu --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datakd.checkpoint import atomic_save
from datakd.config import config_from_dict
from datakd.engine.build import build_trainer
from datakd.losses import functional as LF
from datakd.models import create


def data_section(args: argparse.Namespace) -> dict:
    if args.data_root:
        return {
            "dataset": args.dataset,
            "root": args.data_root,
            "batch_size": args.batch_size,
            "augment": "crop_flip",
        }
    return {
        "dataset": "quickstart",
        "options": {"pad_to_32": True, "rgb": True},
        "batch_size": args.batch_size,
        "augment": "crop_flip",
        "crop_padding": 4,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_trainer(args: argparse.Namespace, mode: str, teacher_ckpt: Path, workdir: Path, fast: bool) -> float:
    values = {
        "name": f"bench-{mode}",
        "device": args.device,
        "out": str(workdir / f"{mode}-{fast}"),
        "epochs": 1000,
        "quiet": True,
        "data": data_section(args),
        "student": {"name": args.student},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "constant"},
        "loss": {"ce": {"weight": 1.0}}
        if mode == "train"
        else {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}},
        "engine": {
            "tensorboard": False,
            "nan_guard": False,
            "amp": fast,
            "channels_last": fast,
            "compile": fast,
        },
    }
    if mode == "distill":
        values["teacher"] = {"checkpoint": str(teacher_ckpt)}
    trainer = build_trainer(config_from_dict(values), mode)
    trainer.student.train()
    device = trainer.device
    warmup, steps, done, images = args.warmup, args.steps, 0, 0
    start = None
    epoch = 0
    while done < warmup + steps:
        for batch in trainer.loader.epoch(epoch):
            if done == warmup:
                sync(device)
                start = time.perf_counter()
            trainer.train_step(batch)
            done += 1
            if done > warmup:
                images += len(batch)
            if done >= warmup + steps:
                break
        epoch += 1
    sync(device)
    return images / (time.perf_counter() - start)


def time_reference(args: argparse.Namespace, device: torch.device) -> float:
    """RepDistiller's loop: PIL transforms on DataLoader workers, fp32, teacher no_grad, CE + KD."""
    import torchvision.transforms as T
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    from datakd.config import DataConfig
    from datakd.data.build import load_dataset

    bundle, _ = load_dataset(DataConfig(**{k: v for k, v in data_section(args).items()}), seed=0)
    arrays = bundle.train.images.permute(0, 2, 3, 1).contiguous().numpy()
    labels = bundle.train.labels.tolist()
    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(bundle.mean, bundle.std),
        ]
    )

    class PILDataset(Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i: int):
            return transform(Image.fromarray(arrays[i])), labels[i]

    loader = DataLoader(
        PILDataset(),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=args.workers > 0,
    )
    teacher = create(args.teacher, bundle.num_classes).to(device).eval()
    student = create(args.student, bundle.num_classes).to(device).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    done, images, start = 0, 0, None
    while done < args.warmup + args.steps:
        for x, y in loader:
            if done == args.warmup:
                sync(device)
                start = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.no_grad():
                t_logits = teacher(x)
            s_logits = student(x)
            loss = 0.1 * F.cross_entropy(s_logits, y) + 0.9 * LF.kd(s_logits, t_logits, 4.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done > args.warmup:
                images += len(y)
            if done >= args.warmup + args.steps:
                break
    sync(device)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader workers of the reference loop",
    )
    parser.add_argument("--dataset", default="cifar100")
    parser.add_argument("--data-root", help="folder with CIFAR (default: embedded data at CIFAR geometry)")
    parser.add_argument("--fast", action="store_true", help="also time bf16 + channels_last + compile (CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        num_classes = 100 if args.data_root and args.dataset == "cifar100" else 10
        teacher_ckpt = workdir / "teacher.pt"
        atomic_save(
            {
                "model": create(args.teacher, num_classes).state_dict(),
                "model_name": args.teacher,
                "num_classes": num_classes,
            },
            teacher_ckpt,
        )
        result = {
            "device": str(device),
            "teacher": args.teacher,
            "student": args.student,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "threads": torch.get_num_threads(),
            "reference_workers": args.workers,
        }
        result["ce_images_per_sec"] = time_trainer(args, "train", teacher_ckpt, workdir, fast=False)
        result["kd_images_per_sec"] = time_trainer(args, "distill", teacher_ckpt, workdir, fast=False)
        result["reference_kd_images_per_sec"] = time_reference(args, device)
        result["ratio"] = result["kd_images_per_sec"] / result["reference_kd_images_per_sec"]
        if args.fast and device.type == "cuda":
            result["fast_kd_images_per_sec"] = time_trainer(args, "distill", teacher_ckpt, workdir, fast=True)
            result["fast_ratio"] = result["fast_kd_images_per_sec"] / result["reference_kd_images_per_sec"]
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
