"""Pieces the benchmark scripts share: the data section they time on and the RepDistiller-style input loop.

Kept in one place so every script compares against the same reference pipeline; the scripts import it as
`benchmarks.common` after putting the repository root on `sys.path`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from datakd.checkpoint import atomic_write_text


def data_section(data_root: str | None, batch_size: int, dataset: str = "cifar100") -> dict[str, Any]:
    """`dataset` under `data_root` when given, else the embedded Fashion-MNIST subset at CIFAR geometry.

    Throughput depends on the image size and channel count, not on the pixels, so the embedded subset padded
    to 32×32 RGB stands in for CIFAR on a machine without it.
    """
    if data_root:
        return {"dataset": dataset, "root": data_root, "batch_size": batch_size, "augment": "crop_flip"}
    return {
        "dataset": "quickstart",
        "options": {"pad_to_32": True, "rgb": True},
        "batch_size": batch_size,
        "augment": "crop_flip",
        "crop_padding": 4,
    }


class _PILImages(Dataset):
    """uint8 NCHW images served one at a time as PIL images through torchvision transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Any) -> None:
        self.arrays = images.permute(0, 2, 3, 1).contiguous().numpy()
        if self.arrays.shape[-1] == 1:
            self.arrays = self.arrays[..., 0]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.arrays[index])), self.labels[index]


def reference_loader(
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """RepDistiller's CIFAR input pipeline: per-sample PIL RandomCrop(32, pad 4) + flip + ToTensor + Normalize
    on DataLoader worker processes. The baseline every datakd loader is measured against."""
    import torchvision.transforms as T

    transform = T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
    )
    return DataLoader(
        _PILImages(images, labels, transform),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=workers > 0,
    )


# ----------------------------------------------------------------- benchmark runners (fmnist, evidence)
def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def content_hash(cfg: dict[str, Any], data_root: Path) -> str:
    """A cached run's identity: its config without the data path (or device), plus the dataset files' bytes.

    A teacher trained on another machine with the same config and data is the same teacher.
    """
    keyed = copy.deepcopy(cfg)
    keyed["data"].pop("root")
    keyed.pop("device", None)
    files = sorted(p for p in data_root.iterdir() if "ubyte" in p.name)
    payload = json.dumps(keyed, sort_keys=True) + "".join(f"{p.name}:{file_digest(p)}" for p in files)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def write_yaml(values: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(yaml.safe_dump(values, sort_keys=False), path)
    return path


def run_logged(cmd: list[str], log: Path, threads: int, env: dict[str, str] | None = None) -> int:
    """Run one datakd process with its own thread budget; its output goes to a log file, not the console."""
    env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        handle.write(f"$ {shlex.join(cmd)}\n")
        handle.flush()
        return subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
