"""What a dataset provides to the loaders: whole splits as uint8 arrays, or lists of image files.

Small datasets (CIFAR, Fashion-MNIST, the quick-start subset) are read straight into uint8 tensors
(N×C×H×W) so the device-resident loader can keep them on the accelerator. Large ones (ImageNet layout,
Tiny-ImageNet) are lists of (path, label) read by DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from datakd.errors import DatakdError
from datakd.registry import Registry


@dataclass
class ImageArrays:
    """A split held in memory: images uint8 N×C×H×W, labels int64 N."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            shape = tuple(self.images.shape)
            raise ValueError(f"images must be uint8 N×C×H×W, got {self.images.dtype} {shape}")
        if self.labels.shape != (self.images.shape[0],):
            shape = tuple(self.labels.shape)
            raise ValueError(f"labels must have shape ({self.images.shape[0]},), got {shape}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> ImageArrays:
        return ImageArrays(self.images[indices], self.labels[indices])


@dataclass
class ImageFiles:
    """A split on disk: image paths and their labels, decoded on DataLoader workers."""

    paths: list[Path]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: torch.Tensor) -> ImageFiles:
        idx = indices.tolist()
        return ImageFiles([self.paths[i] for i in idx], self.labels[indices])


Split = ImageArrays | ImageFiles


@dataclass
class DatasetBundle:
    """A dataset's splits plus what the loaders need to normalise them."""

    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: Sequence[str] = ()
    # Spatial size of a training image after the loader (for files: the crop size).
    image_size: tuple[int, int] = (32, 32)
    # Default base augmentation for this dataset ("crop_flip" for CIFAR-like, "imagenet" for ImageFolder).
    default_augment: str = "crop_flip"
    attribution: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, ImageArrays)


# A dataset builder: (root, download, options) -> DatasetBundle
DatasetBuilder = Callable[..., DatasetBundle]

DATASETS: Registry[DatasetBuilder] = Registry("dataset", packages=("datakd.data",))


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    return DATASETS.register(name)


def require_root(name: str, root: str | Path | None) -> Path:
    """The dataset folder, or a one-line error saying how to provide it."""
    if root is None:
        raise DatakdError(f"dataset {name!r} needs a data root: pass --data-root DIR (or data.root=DIR)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatakdError(
            f"data root {str(path)!r} for dataset {name!r} does not exist or is not a directory"
        )
    return path


def per_channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std per channel of uint8 images, in [0, 1] units."""
    x = images.float().div_(255)
    dims = (0, 2, 3)
    return tuple(x.mean(dims).tolist()), tuple(x.std(dims).tolist())
