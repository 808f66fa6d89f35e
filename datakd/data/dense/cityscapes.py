"""Cityscapes semantic segmentation: `leftImg8bit/{train,val}/<city>/*_leftImg8bit.png` with
`gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png` (the 19 train ids, 255 = ignore).

The train-id maps are what cityscapesScripts' createTrainIdLabelImgs.py writes; they must exist (this
reader does not convert the raw label ids). A root may carry `classes.json` (a JSON list of class names,
index = train id) for another label set in the same layout, such as the scenes test bed (11 classes).
Pairing is checked when the split is read; a label map's size and values are checked when it is decoded.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.io import ImageReadMode, decode_image, read_file

from datakd.data.base import DatasetBundle, register_dataset, require_root
from datakd.data.dense.coco import IMAGENET_MEAN, IMAGENET_STD, loader_options
from datakd.errors import DatakdError

CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelTrainIds.png"
IGNORE = 255


@dataclass
class SegmentationSplit:
    """Image files and their label-map files; `labels` is zeros (one per image) for the subset code."""

    images: list[Path]
    label_maps: list[Path]
    num_classes: int

    @property
    def labels(self) -> torch.Tensor:
        return torch.zeros(len(self.images), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: torch.Tensor) -> SegmentationSplit:
        idx = indices.tolist()
        return SegmentationSplit(
            [self.images[i] for i in idx], [self.label_maps[i] for i in idx], self.num_classes
        )


def read_label_map(path: Path, height: int, width: int, num_classes: int) -> torch.Tensor:
    """A train-id PNG as uint8 H×W, checked: single channel, the image's size, values < K or 255."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
            label = decode_image(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
    except RuntimeError as exc:
        raise DatakdError(f"cannot decode label map {str(path)!r}: {str(exc).splitlines()[0]}") from None
    if label.shape[0] != 1 or label.dtype != torch.uint8:
        raise DatakdError(
            f"label map {str(path)!r} has {label.shape[0]} channels of {label.dtype}; valid: an 8-bit "
            "single-channel PNG of train ids"
        )
    if tuple(label.shape[1:]) != (height, width):
        raise DatakdError(
            f"label map {str(path)!r} is {label.shape[2]}×{label.shape[1]}, its image {width}×{height}; "
            "valid: the same size as the image"
        )
    bad = (label >= num_classes) & (label != IGNORE)
    if bad.any():
        value = int(label[bad][0])
        raise DatakdError(
            f"label map {str(path)!r} holds label {value} ({int(bad.sum())} pixels); "
            f"valid: 0..{num_classes - 1} or {IGNORE} (ignore)"
        )
    return label[0]


def load_cityscapes(root: str | Path, split: str, num_classes: int = len(CLASSES)) -> SegmentationSplit:
    """Pair every image of `leftImg8bit/<split>` with its train-id map under `gtFine/<split>`."""
    root = Path(root)
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    if not image_dir.is_dir():
        raise DatakdError(
            f"Cityscapes folder {str(image_dir)!r} does not exist; valid: "
            f"root/leftImg8bit/{{train,val}}/<city>/*{IMAGE_SUFFIX} and "
            f"root/gtFine/{{train,val}}/<city>/*{LABEL_SUFFIX}"
        )
    images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
    if not images:
        raise DatakdError(f"Cityscapes folder {str(image_dir)!r} holds no <city>/*{IMAGE_SUFFIX} images")
    labels = []
    for image in images:
        name = image.name[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX
        label = label_dir / image.parent.name / name
        if not label.is_file():
            raise DatakdError(
                f"Cityscapes label map {str(label)!r} (for image {str(image)!r}) does not exist; valid: a "
                "train-id map per image (cityscapesScripts' createTrainIdLabelImgs.py writes them)"
            )
        labels.append(label)
    return SegmentationSplit(images, labels, num_classes)


def read_class_names(root: Path) -> tuple[str, ...]:
    """`root/classes.json` when present (a list of names, index = train id), else the 19 Cityscapes ones."""
    path = root / "classes.json"
    if not path.is_file():
        return CLASSES
    try:
        names: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = str(exc).splitlines()[0]
        raise DatakdError(f"class list {str(path)!r} is not valid JSON ({reason})") from None
    valid = isinstance(names, list) and 0 < len(names) < IGNORE and all(isinstance(n, str) for n in names)
    if not valid:
        raise DatakdError(
            f"class list {str(path)!r} must be a JSON list of 1..254 class names (index = train id)"
        )
    return tuple(names)


@register_dataset("cityscapes")
def cityscapes(
    root: str | None = None,
    download: bool = False,
    scale_range: list[float] | None = None,
    crop_size: int | list[int] | None = None,
    cache: bool | None = None,
) -> DatasetBundle:
    """Cityscapes fine semantic labels (train / val as test), 19 train ids, 255 ignore."""
    if download:
        raise DatakdError("cityscapes is read from a local root (registration needed); pass --data-root DIR")
    path = require_root("cityscapes", root)
    names = read_class_names(path)
    train, test = load_cityscapes(path, "train", len(names)), load_cityscapes(path, "val", len(names))
    first = decode_size(train.images[0])
    return DatasetBundle(
        name="cityscapes",
        train=train,  # type: ignore[arg-type]
        test=test,  # type: ignore[arg-type]
        num_classes=len(names),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=names,
        image_size=first,
        default_augment="crop_flip",
        attribution="Cityscapes (cityscapes-dataset.com): registration and its licence terms required",
        extra={
            "task": "segmentation",
            "ignore_index": IGNORE,
            "loader": loader_options(scale_range=scale_range, crop_size=crop_size, cache=cache),
        },
    )


def decode_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file (decodes it: called once per dataset, for the nominal size)."""
    from datakd.data.file_loader import decode

    image = decode(path)
    return int(image.shape[1]), int(image.shape[2])
