"""Any ImageNet-style tree: ``root/train/<class>/…`` and ``root/<test_dir>/<class>/…``, as file lists.

Class indices are the sorted train folder names (plain ``sorted``, case-sensitive), the order torchvision's
ImageFolder uses, so teachers trained with torchvision keep their label meaning. Files are found
recursively with the same extension list, case-insensitively. Test classes must be train classes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from datakd.data.base import DatasetBundle, ImageFiles, register_dataset, require_root
from datakd.errors import DatakdError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DatakdError(f"image folder split {str(split_dir)!r} does not exist")
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise DatakdError(
            f"image folder split {str(split_dir)!r} has no class sub-folders (expected <class>/<image>)"
        )
    return classes


def image_files(folder: Path) -> list[Path]:
    found = [
        Path(parent) / name
        for parent, _, names in os.walk(folder, followlinks=True)
        for name in names
        if name.lower().endswith(EXTENSIONS)
    ]
    return sorted(found)


def read_split(split_dir: Path, index: dict[str, int]) -> ImageFiles:
    """All images under each class folder; a class folder without images is an error."""
    paths: list[Path] = []
    labels: list[int] = []
    for name in class_folders(split_dir):
        if name not in index:
            raise DatakdError(
                f"class folder {str(split_dir / name)!r} has no matching folder in the train split"
            )
        files = image_files(split_dir / name)
        if not files:
            raise DatakdError(
                f"class folder {str(split_dir / name)!r} holds no images ({', '.join(EXTENSIONS)})"
            )
        paths += files
        labels += [index[name]] * len(files)
    return ImageFiles(paths, torch.tensor(labels, dtype=torch.int64))


@register_dataset("imagefolder")
def imagefolder(
    root: str | None = None, download: bool = False, test_dir: str = "val", image_size: int = 224
) -> DatasetBundle:
    """ImageNet-layout folders root/train/<class>/* and root/<test_dir>/<class>/*, read by workers."""
    if download:
        raise DatakdError("dataset 'imagefolder' reads local folders only; data.download is not supported")
    path = require_root("imagefolder", root)
    classes = class_folders(path / "train")
    index = {name: i for i, name in enumerate(classes)}
    return DatasetBundle(
        name="imagefolder",
        train=read_split(path / "train", index),
        test=read_split(path / test_dir, index),
        num_classes=len(classes),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=tuple(classes),
        image_size=(image_size, image_size),
        default_augment="imagenet",
        extra={"root": str(path)},
    )
