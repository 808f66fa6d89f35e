"""Fashion-MNIST from its four standard IDX .gz files, read directly (no torchvision download needed)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datakd.data.base import DatasetBundle, ImageArrays, register_dataset, require_root
from datakd.errors import DatakdError

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Statistics of the 60k training images in [0, 1] units.
MEAN, STD = (0.2860,), (0.3530,)
ATTRIBUTION = "Fashion-MNIST, Copyright (c) 2017 Zalando SE, MIT License (https://github.com/zalandoresearch/fashion-mnist)"


def _open(path: Path) -> bytes:
    for candidate in (path.with_name(path.name + ".gz"), path):
        if candidate.is_file():
            opener = gzip.open if candidate.suffix == ".gz" else open
            try:
                with opener(candidate, "rb") as handle:
                    return handle.read()
            except (OSError, EOFError, zlib.error) as exc:  # truncated or not gzip at all
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DatakdError(
                    f"Fashion-MNIST file {str(candidate)!r} cannot be read ({reason}); it is truncated or "
                    "corrupt: download it again (valid: the gzip-compressed IDX file as released)"
                ) from None
    raise DatakdError(f"Fashion-MNIST file {path.name}(.gz) not found in {str(path.parent)!r}")


def read_idx(data: bytes, name: str = "IDX file") -> np.ndarray:
    """Decode an IDX byte string (magic 0x0000 08 NDIM, big-endian dims, uint8 payload)."""
    if len(data) < 4:
        raise DatakdError(f"{name} is truncated: {len(data)} bytes, shorter than the 4-byte IDX magic")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatakdError(f"{name}: not a uint8 IDX file (magic {data[:4].hex()}; valid: 000008xx)")
    if len(data) < 4 + 4 * ndim:
        raise DatakdError(f"{name} is truncated: {len(data)} bytes cannot hold the {ndim} IDX dimensions")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(dims)):
        expected = int(np.prod(dims))
        raise DatakdError(f"{name}: expected {expected} values for shape {dims}, found {payload.size}")
    return payload.reshape(dims)


def read_split(root: Path, split: str) -> ImageArrays:
    image_file, label_file = FILES[split]
    images = read_idx(_open(root / image_file), image_file)
    labels = read_idx(_open(root / label_file), label_file)
    if images.ndim != 3 or labels.ndim != 1:
        raise DatakdError(
            f"Fashion-MNIST {split}: {image_file} has shape {images.shape} and {label_file} {labels.shape}; "
            "valid: N×H×W images and N labels"
        )
    if labels.shape[0] != images.shape[0]:
        raise DatakdError(f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and labels.max() >= len(CLASSES):
        raise DatakdError(
            f"Fashion-MNIST {split}: {label_file} holds label {int(labels.max())}; "
            f"valid: 0..{len(CLASSES) - 1}"
        )
    return ImageArrays(
        torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
    )


def to_cifar_geometry(split: ImageArrays, pad_to_32: bool, rgb: bool) -> ImageArrays:
    """Zero-pad 28×28 to 32×32 and/or replicate to 3 channels so CIFAR models run unchanged."""
    images = split.images
    if pad_to_32:
        images = F.pad(images, (2, 2, 2, 2))
    if rgb:
        images = images.expand(-1, 3, -1, -1).contiguous()
    return ImageArrays(images, split.labels)


def bundle_from_splits(
    name: str, train: ImageArrays, test: ImageArrays, pad_to_32: bool = True, rgb: bool = True
) -> DatasetBundle:
    train = to_cifar_geometry(train, pad_to_32, rgb)
    test = to_cifar_geometry(test, pad_to_32, rgb)
    channels = train.images.shape[1]
    return DatasetBundle(
        name=name,
        train=train,
        test=test,
        num_classes=10,
        mean=MEAN * channels,
        std=STD * channels,
        class_names=CLASSES,
        image_size=tuple(train.images.shape[2:]),
        attribution=ATTRIBUTION,
    )


@register_dataset("fashion-mnist")
def fashion_mnist(
    root: str | None = None, download: bool = False, pad_to_32: bool = True, rgb: bool = True
) -> DatasetBundle:
    """Fashion-MNIST from the four IDX(.gz) files in `root`; padded to 32×32 RGB by default."""
    if download:
        raise DatakdError("fashion-mnist is read from local IDX files; download it and pass --data-root DIR")
    path = require_root("fashion-mnist", root)
    train, test = read_split(path, "train"), read_split(path, "test")
    return bundle_from_splits("fashion-mnist", train, test, pad_to_32, rgb)
