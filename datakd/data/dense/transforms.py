"""Joint geometric transforms of an image and its boxes, instance masks or label map.

Everything goes through torchvision.transforms.v2's functional ops on tv_tensors (Image, BoundingBoxes in
XYXY, Mask), so boxes and masks follow the image by construction. The random parameters are drawn from an
explicit `torch.Generator` (seeded by the loader from (seed, epoch, index)), never from the global RNG:
a sample's augmentation does not depend on workers, ranks or what ran before, and resuming is exact.
Every call draws the same number of values, so enabling one option does not shift another's draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from datakd.errors import ConfigError

IGNORE = 255


@dataclass(frozen=True)
class DenseAugment:
    """What the training loader does to a sample: flip (p = 0.5), scale jitter, crop.

    `scale_range` resizes by a factor drawn uniformly from [lo, hi]; `crop_size` (h, w) takes a random
    window of at most that size (detection) or exactly that size, padding first (segmentation).
    `random=False` makes the crop central and disables flip and jitter (augment `none`).
    """

    flip: bool = True
    scale_range: tuple[float, float] | None = None
    crop_size: tuple[int, int] | None = None
    random: bool = True


def parse_size(value: Any, name: str) -> tuple[int, int] | None:
    """An int or [h, w] of positive ints -> (h, w)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    raise ConfigError(f"data.options.{name} must be a positive int or [height, width], got {value!r}")


def parse_scale_range(value: Any) -> tuple[float, float] | None:
    """[lo, hi] with 0 < lo <= hi -> (lo, hi)."""
    if value is None:
        return None
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and 0 < value[0] <= value[1]
    ):
        return float(value[0]), float(value[1])
    raise ConfigError(f"data.options.scale_range must be [lo, hi] with 0 < lo <= hi, got {value!r}")


def _draws(generator: torch.Generator | None) -> list[float]:
    """Four uniforms: scale, crop top, crop left, flip (fixed count: options do not shift each other)."""
    if generator is None:
        return [0.5, 0.5, 0.5, 1.0]
    return torch.rand(4, generator=generator, dtype=torch.float64).tolist()


def _each(fn: Callable[..., Any], items: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Apply a v2 functional to every tv_tensor of `items` (plain tensors such as labels pass through)."""
    return {k: fn(v, *args, **kwargs) if isinstance(v, tv_tensors.TVTensor) else v for k, v in items.items()}


def _scaled_size(height: int, width: int, factor: float) -> tuple[int, int]:
    return max(1, round(height * factor)), max(1, round(width * factor))


def _offset(u: float, room: int) -> int:
    return min(math.floor(u * (room + 1)), room)


def detection_sample(
    image: torch.Tensor,
    target: dict[str, torch.Tensor],
    spec: DenseAugment,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Transform uint8 3×H×W `image` and its target (boxes xyxy, labels, iscrowd, area, optional masks).

    Boxes are clamped to the new image and those that degenerate (side or area below 1 px) are dropped
    with their labels, masks and flags (SanitizeBoundingBoxes). A crop that cuts an object leaves its box
    clamped, which over-covers a non-rectangular object: with masks, such a box is replaced by the tight
    box of the cropped mask (and an object whose mask left the crop is dropped). `area` becomes the mask
    area when masks exist, else the box area, in the transformed image.
    """
    u_scale, u_top, u_left, u_flip = _draws(generator)
    height, width = image.shape[-2:]
    cut = torch.zeros(len(target["boxes"]), dtype=torch.bool)
    items: dict[str, Any] = {
        "image": tv_tensors.Image(image),
        "boxes": tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(height, width)),
        "labels": target["labels"],
        "iscrowd": target["iscrowd"],
        "area": target["area"],
    }
    if "masks" in target:
        items["masks"] = tv_tensors.Mask(target["masks"])
    if spec.random and spec.scale_range is not None:
        lo, hi = spec.scale_range
        size = _scaled_size(height, width, lo + (hi - lo) * u_scale)
        items = _each(F.resize, items, list(size), antialias=True)
        height, width = size
    if spec.crop_size is not None:
        ch, cw = min(spec.crop_size[0], height), min(spec.crop_size[1], width)
        top = _offset(u_top if spec.random else 0.5, height - ch)
        left = _offset(u_left if spec.random else 0.5, width - cw)
        b = items["boxes"]
        cut = (b[:, 0] < left) | (b[:, 1] < top) | (b[:, 2] > left + cw) | (b[:, 3] > top + ch)
        items = _each(F.crop, items, top, left, ch, cw)  # clamps the boxes to the window
    if spec.random and spec.flip and u_flip < 0.5:
        items = _each(F.horizontal_flip, items)
    boxes = F.clamp_bounding_boxes(items["boxes"])
    if "masks" in items and spec.crop_size is not None and cut.any():
        boxes = boxes.clone()
        boxes[cut] = tight_boxes(items["masks"][cut].as_subclass(torch.Tensor))
    items["boxes"] = boxes
    items = _sanitize(items)
    out = {k: v.as_subclass(torch.Tensor) for k, v in items.items() if k != "image"}
    if "masks" in out:
        out["area"] = out["masks"].flatten(1).sum(1).float()
    else:
        b = out["boxes"]
        out["area"] = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).float()
    return items["image"].as_subclass(torch.Tensor), out


def _per_object(items: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """The per-object plain tensors SanitizeBoundingBoxes must filter with the boxes (masks it finds)."""
    return items["labels"], items["iscrowd"], items["area"]


_SANITIZE = v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_per_object)


def _sanitize(items: dict[str, Any]) -> dict[str, Any]:
    return _SANITIZE(items)


def segmentation_sample(
    image: torch.Tensor,
    label: torch.Tensor,
    spec: DenseAugment,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transform uint8 3×H×W `image` and uint8 H×W `label` map to the crop size (padding: image 0, label 255).

    Scale jitter resizes the label map with nearest neighbour (v2 does that for a Mask); the pad goes on
    the bottom/right so the original pixels keep their coordinates before the crop.
    """
    u_scale, u_top, u_left, u_flip = _draws(generator)
    img, mask = tv_tensors.Image(image), tv_tensors.Mask(label)
    height, width = image.shape[-2:]
    if spec.random and spec.scale_range is not None:
        lo, hi = spec.scale_range
        size = _scaled_size(height, width, lo + (hi - lo) * u_scale)
        img, mask = F.resize(img, list(size), antialias=True), F.resize(mask, list(size))
        height, width = size
    if spec.crop_size is not None:
        ch, cw = spec.crop_size
        pad_h, pad_w = max(0, ch - height), max(0, cw - width)
        if pad_h or pad_w:
            img = F.pad(img, [0, 0, pad_w, pad_h], fill=0)
            mask = F.pad(mask, [0, 0, pad_w, pad_h], fill=IGNORE)
            height, width = height + pad_h, width + pad_w
        top = _offset(u_top if spec.random else 0.5, height - ch)
        left = _offset(u_left if spec.random else 0.5, width - cw)
        img, mask = F.crop(img, top, left, ch, cw), F.crop(mask, top, left, ch, cw)
    if spec.random and spec.flip and u_flip < 0.5:
        img, mask = F.horizontal_flip(img), F.horizontal_flip(mask)
    return img.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """xyxy float boxes (pixel edges) around each of n H×W masks; an empty mask gives a zero box."""
    n = masks.shape[0]
    if n == 0:
        return torch.zeros((0, 4))
    masks = masks.bool()
    rows, cols = masks.any(2), masks.any(1)  # n×H, n×W
    height, width = masks.shape[1:]
    ys, xs = torch.arange(height), torch.arange(width)
    y1 = torch.where(rows, ys, height).amin(1)
    y2 = torch.where(rows, ys + 1, 0).amax(1)
    x1 = torch.where(cols, xs, width).amin(1)
    x2 = torch.where(cols, xs + 1, 0).amax(1)
    out = torch.stack([x1, y1, x2, y2], 1).float()
    return torch.where(rows.any(1, keepdim=True), out, torch.zeros_like(out))


def tight_box(mask: torch.Tensor) -> torch.Tensor:
    """xyxy float box around the non-zero pixels of an H×W mask (pixel edges: x2 = last column + 1)."""
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    if len(rows) == 0:
        return torch.zeros(4)
    return torch.tensor(
        [cols[0].item(), rows[0].item(), cols[-1].item() + 1, rows[-1].item() + 1], dtype=torch.float32
    )
