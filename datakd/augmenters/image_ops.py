"""The one library of image operations the policy augmenters share (PBA's 15 ops, TST's 14 sub-policies).

Every op takes a uint8 batch N×C×H×W and one parameter for the whole batch and returns a new uint8 batch,
on the batch's device (torchvision.transforms.v2.functional), nearest-neighbour for geometry. The methods
differ only in how a policy level or magnitude becomes the parameter (their own tables, `pba_ops.py` and
`tst/ops.py`) and in the fill colour; the pixel work is here, once.

Conventions (tests/test_image_ops.py checks each against PIL):
* ``translate(images, dx, dy)`` moves the content by (+dx, +dy) pixels: right and down for positive values.
  PIL's ``AFFINE (1, 0, t, 0, 1, 0)`` reads the input at x + t, i.e. is ``translate(images, -t, 0)``;
  PBA's table is written in PIL's convention and negates, TST's magnitude is the content shift itself.
* ``shear(images, axis, m)`` is PIL's ``AFFINE (1, m, 0, 0, 1, 0)`` (axis "x") or ``(1, 0, 0, m, 1, 0)``
  (axis "y"): output (x, y) reads input (x + m·y, y), a shear by atan(m) about the top-left corner.
* ``rotate(images, degrees)`` turns counter-clockwise about the centre, as PIL's ``Image.rotate``.
* ``enhance(images, kind, factor)`` is PIL's ImageEnhance (1 = unchanged) for Color, Contrast, Brightness
  and Sharpness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from datakd.errors import DatakdError

NEAREST = InterpolationMode.NEAREST
ENHANCE = {
    "Color": TF.adjust_saturation,
    "Contrast": TF.adjust_contrast,
    "Brightness": TF.adjust_brightness,
    "Sharpness": TF.adjust_sharpness,
}
Fill = float | Sequence[float]


def translate(images: torch.Tensor, dx: int, dy: int, fill: Fill = 0) -> torch.Tensor:
    """Move the content by (dx, dy) whole pixels (right/down positive); uncovered pixels get `fill`."""
    return TF.affine(
        images,
        angle=0.0,
        translate=[dx, dy],
        scale=1.0,
        shear=[0.0, 0.0],
        interpolation=NEAREST,
        fill=fill,
    )


def shear(images: torch.Tensor, axis: str, factor: float, fill: Fill = 0) -> torch.Tensor:
    """PIL's shear by coefficient `factor` along `axis` ("x" or "y") about the top-left corner."""
    if axis not in ("x", "y"):
        raise DatakdError(f"shear axis must be 'x' or 'y', got {axis!r}")
    # torchvision's shear is an angle; atan(m) gives the shear factor m, with the centre at the origin.
    angle = math.degrees(math.atan(factor))
    return TF.affine(
        images,
        angle=0.0,
        translate=[0, 0],
        scale=1.0,
        shear=[angle, 0.0] if axis == "x" else [0.0, angle],
        interpolation=NEAREST,
        fill=fill,
        center=[0, 0],
    )


def rotate(images: torch.Tensor, degrees: float, fill: Fill = 0) -> torch.Tensor:
    """Counter-clockwise rotation about the image centre."""
    return TF.rotate(images, degrees, interpolation=NEAREST, fill=fill)


def enhance(images: torch.Tensor, kind: str, factor: float) -> torch.Tensor:
    """PIL ImageEnhance `kind` (Color, Contrast, Brightness, Sharpness) with enhancement `factor`."""
    if kind not in ENHANCE:
        raise DatakdError(f"unknown enhancement {kind!r}; valid choices: {', '.join(ENHANCE)}")
    return ENHANCE[kind](images, factor)


def posterize(images: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the `bits` most significant bits of every channel."""
    return TF.posterize(images, bits)


def solarize(images: torch.Tensor, threshold: float) -> torch.Tensor:
    """Invert every pixel value at or above `threshold`."""
    return TF.solarize(images, threshold)


def equalize(images: torch.Tensor) -> torch.Tensor:
    return TF.equalize(images)


def invert(images: torch.Tensor) -> torch.Tensor:
    return TF.invert(images)


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    return TF.autocontrast(images)
