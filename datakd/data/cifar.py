"""CIFAR-10 and CIFAR-100 from the python-pickle release, read by our own small reader.

torchvision's CIFAR classes check md5 sums, which rejects any locally generated or re-packed copy, so we
only borrow torchvision's downloader (``download=True``) and parse the batches ourselves. Each batch is a
pickled dict with bytes keys: ``b'data'`` is uint8 N×3072 (red, green, blue 32×32 planes, row-major), labels
are under ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100). The files are pickles: only point
this reader at copies you trust.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datakd.data.base import DatasetBundle, ImageArrays, register_dataset
from datakd.errors import DatakdError


@dataclass(frozen=True)
class CifarLayout:
    name: str
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR10 = CifarLayout(
    "cifar10",
    "CIFAR-10",
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
    "batches.meta",
    "labels",
    "label_names",
    10,
    (0.4914, 0.4822, 0.4465),
    (0.2470, 0.2435, 0.2616),
)
CIFAR100 = CifarLayout(
    "cifar100",
    "CIFAR-100",
    "cifar-100-python",
    ("train",),
    ("test",),
    "meta",
    "fine_labels",
    "fine_label_names",
    100,
    (0.5071, 0.4867, 0.4408),
    (0.2675, 0.2565, 0.2761),
)
ATTRIBUTION = (
    "Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009 "
    "(https://www.cs.toronto.edu/~kriz/cifar.html)"
)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_pickle(path: Path, layout: CifarLayout) -> dict[str, Any]:
    """One pickled batch/meta dict with its keys as str (the release has bytes keys)."""
    if not path.is_file():
        raise DatakdError(
            f"{layout.title} file {str(path)!r} not found; point data.root at the folder holding "
            f"{layout.folder!r} or set data.download=true"
        )
    try:
        with open(path, "rb") as handle:
            raw = pickle.load(handle, encoding="bytes")
    except Exception as exc:  # corrupt or non-pickle file: report it on one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatakdError(
            f"{layout.title} file {str(path)!r} is not a readable pickle ({reason}); it is truncated or "
            "corrupt: download it again (valid: the python-pickle release)"
        ) from None
    if not isinstance(raw, dict):
        raise DatakdError(f"{layout.title} file {str(path)!r} does not hold a dict")
    return {_text(k): v for k, v in raw.items()}


def read_batches(folder: Path, files: tuple[str, ...], layout: CifarLayout) -> ImageArrays:
    """Concatenate pickled batches into uint8 N×3×32×32 images and int64 labels."""
    images, labels = [], []
    for file in files:
        batch = load_pickle(folder / file, layout)
        if "data" not in batch or layout.label_key not in batch:
            raise DatakdError(
                f"{layout.title} file {str(folder / file)!r} lacks 'data' or {layout.label_key!r}"
            )
        data = np.asarray(batch["data"], dtype=np.uint8)
        target = np.asarray(batch[layout.label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or target.shape != (data.shape[0],):
            raise DatakdError(
                f"{layout.title} file {str(folder / file)!r}: data {data.shape} and labels {target.shape} "
                "do not match the N×3072 layout"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(target)
    label_array = np.concatenate(labels)
    if label_array.size and (label_array.min() < 0 or label_array.max() >= layout.num_classes):
        limit = layout.num_classes - 1
        bad = int(label_array.min()) if label_array.min() < 0 else int(label_array.max())
        raise DatakdError(f"{layout.title} files in {str(folder)!r} hold label {bad}; valid: 0..{limit}")
    return ImageArrays(torch.from_numpy(np.concatenate(images)), torch.from_numpy(label_array))


def find_folder(root: Path, layout: CifarLayout) -> Path:
    """`root/<folder>` when present, else `root` itself if it already is that folder."""
    nested = root / layout.folder
    if nested.is_dir():
        return nested
    if (root / layout.meta_file).is_file() or root.name == layout.folder:
        return root
    return nested


def fetch(root: Path, layout: CifarLayout) -> None:
    """Download and extract the release into `root` with torchvision's downloader."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if layout is CIFAR10 else datasets.CIFAR100
    root.mkdir(parents=True, exist_ok=True)
    try:
        cls(str(root), train=True, download=True)
    except Exception as exc:  # network or archive failures surface as one line
        raise DatakdError(f"downloading {layout.title} into {str(root)!r} failed: {exc}") from exc


def build(layout: CifarLayout, root: str | None, download: bool) -> DatasetBundle:
    if root is None:
        raise DatakdError(
            f"dataset {layout.name!r} needs a data root: pass --data-root DIR (or data.root=DIR)"
        )
    path = Path(root).expanduser()
    folder = find_folder(path, layout)
    if download and not (folder / layout.meta_file).is_file():
        fetch(path, layout)
        folder = find_folder(path, layout)
    meta = load_pickle(folder / layout.meta_file, layout)
    names = tuple(_text(n) for n in meta.get(layout.names_key, ()))
    if len(names) != layout.num_classes:
        raise DatakdError(
            f"{layout.title} meta file {str(folder / layout.meta_file)!r} lists {len(names)} "
            f"{layout.names_key}, expected {layout.num_classes}"
        )
    return DatasetBundle(
        name=layout.name,
        train=read_batches(folder, layout.train_files, layout),
        test=read_batches(folder, layout.test_files, layout),
        num_classes=layout.num_classes,
        mean=layout.mean,
        std=layout.std,
        class_names=names,
        image_size=(32, 32),
        default_augment="crop_flip",
        attribution=ATTRIBUTION,
    )


@register_dataset("cifar10")
def cifar10(root: str | None = None, download: bool = False) -> DatasetBundle:
    """CIFAR-10 (50,000 train / 10,000 test, 32×32 RGB, 10 classes) from the python-pickle batches."""
    return build(CIFAR10, root, download)


@register_dataset("cifar100")
def cifar100(root: str | None = None, download: bool = False) -> DatasetBundle:
    """CIFAR-100 (50,000 train / 10,000 test, 32×32 RGB, 100 fine classes) from the python pickles."""
    return build(CIFAR100, root, download)
