"""The 15 image operations of Population Based Augmentation (Ho et al. 2019) on uint8 image batches.

PBA applies them to PIL images one at a time; here each op runs once on a whole subset of a batch
(torchvision.transforms.v2.functional on uint8 tensors, on the batch's device). The level → parameter
table is PBA's (``PARAMETER_MAX = 10``, ``int()`` truncation), see `op_parameter`. Geometry follows PIL:
shears are about the top-left corner (PIL affine coefficients), rotations about the centre, both
nearest-neighbour; translations move the content by whole pixels.

Fill: PBA draws on RGBA images and maps fully transparent pixels (outside a rotated/sheared/translated
image, inside its op-Cutout box) to 0 *after normalisation*, i.e. to the dataset mean colour. We fill with
the mean colour in pixel space (``fill``), which is the same up to uint8 rounding; the one difference is
that a later op in the same image also acts on the filled pixels, where PBA would reset them to the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from datakd.errors import DatakdError

#: PBA's op order (``augmentation_transforms_hp.HP_TRANSFORMS``); policy entry i belongs to ``OPS[i % 15]``.
OPS: tuple[str, ...] = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Cutout",
)
#: Ops whose parameter gets a random sign (probability 1/2 each) every time they are applied.
SIGNED_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})
PARAMETER_MAX = 10
NEAREST = InterpolationMode.NEAREST


def _int_parameter(level: int, maxval: int) -> int:
    return int(level * maxval / PARAMETER_MAX)


def _float_parameter(level: int, maxval: float) -> float:
    return float(level) * maxval / PARAMETER_MAX


def op_parameter(op: str, level: int) -> float | None:
    """The parameter PBA derives from magnitude level `level` (0..9) for `op` (None: no magnitude).

    Rotate: degrees; Posterize: bits kept; Solarize: threshold; Color/Contrast/Brightness/Sharpness:
    enhancement factor; ShearX/Y: PIL affine coefficient; TranslateX/Y: pixels; Cutout: box side in pixels.
    """
    if op in ("AutoContrast", "Equalize", "Invert"):
        return None
    if op == "Rotate":
        return float(_int_parameter(level, 30))
    if op == "Posterize":
        return float(4 - _int_parameter(level, 4))
    if op == "Solarize":
        return float(256 - _int_parameter(level, 256))
    if op in ("Color", "Contrast", "Brightness", "Sharpness"):
        return _float_parameter(level, 1.8) + 0.1
    if op in ("ShearX", "ShearY"):
        return _float_parameter(level, 0.3)
    if op in ("TranslateX", "TranslateY"):
        return float(_int_parameter(level, 10))
    if op == "Cutout":
        return float(_int_parameter(level, 20))
    raise DatakdError(f"unknown PBA op {op!r}; valid choices: {', '.join(OPS)}")


def cutout_boxes(
    height: int, width: int, centres: torch.Tensor, sizes: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """n×1×H×W boolean masks of PBA/DeVries Cutout boxes: rows [cy − s//2, cy + s//2) clipped to the image
    (same for columns), for integer centres (n×2, (cy, cx)) and sides `sizes` (n,)."""
    half = (sizes // 2).to(device).view(-1, 1, 1, 1)
    cy = centres[:, 0].to(device).view(-1, 1, 1, 1)
    cx = centres[:, 1].to(device).view(-1, 1, 1, 1)
    rows = torch.arange(height, device=device).view(1, 1, -1, 1)
    cols = torch.arange(width, device=device).view(1, 1, 1, -1)
    inside_rows = (rows >= cy - half) & (rows < cy + half)
    inside_cols = (cols >= cx - half) & (cols < cx + half)
    return inside_rows & inside_cols


def apply_op(
    op: str,
    images: torch.Tensor,
    parameter: float | None,
    fill: Sequence[int],
    cutout_centres: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply one op with one (already signed) parameter to every image of the uint8 batch `images`.

    `fill` is the pixel value (one int per channel) for uncovered areas; `cutout_centres` (n×2 ints) are
    the box centres of an op-Cutout. Returns a new uint8 tensor.
    """
    fill_list = [float(v) for v in fill]
    if op == "AutoContrast":
        return TF.autocontrast(images)
    if op == "Equalize":
        return TF.equalize(images)
    if op == "Invert":
        return TF.invert(images)
    assert parameter is not None
    if op == "Rotate":
        return TF.rotate(images, parameter, interpolation=NEAREST, fill=fill_list)
    if op == "Posterize":
        return TF.posterize(images, int(parameter))
    if op == "Solarize":
        return images if parameter > 255 else TF.solarize(images, parameter)
    if op == "Color":
        return TF.adjust_saturation(images, parameter)
    if op == "Contrast":
        return TF.adjust_contrast(images, parameter)
    if op == "Brightness":
        return TF.adjust_brightness(images, parameter)
    if op == "Sharpness":
        return TF.adjust_sharpness(images, parameter)
    if op in ("ShearX", "ShearY"):
        # PIL's affine (1, m, 0, 0, 1, 0) maps output (x, y) to input (x + m·y, y): a shear about the origin
        # by atan(m), which is torchvision's shear angle with the centre at the top-left corner.
        angle = math.degrees(math.atan(parameter))
        shear = [angle, 0.0] if op == "ShearX" else [0.0, angle]
        return TF.affine(
            images,
            angle=0.0,
            translate=[0, 0],
            scale=1.0,
            shear=shear,
            interpolation=NEAREST,
            fill=fill_list,
            center=[0, 0],
        )
    if op in ("TranslateX", "TranslateY"):
        # PIL's affine (1, 0, t, 0, 1, 0) reads input x + t, i.e. moves the content by −t.
        shift = [-int(parameter), 0] if op == "TranslateX" else [0, -int(parameter)]
        return TF.affine(
            images,
            angle=0.0,
            translate=shift,
            scale=1.0,
            shear=[0.0, 0.0],
            interpolation=NEAREST,
            fill=fill_list,
        )
    if op == "Cutout":
        size = int(parameter)
        if size <= 0:
            return images
        if cutout_centres is None:
            raise DatakdError("the PBA Cutout op needs box centres")
        n, c, h, w = images.shape
        mask = cutout_boxes(h, w, cutout_centres, torch.full((n,), size), images.device)
        colour = torch.tensor(fill, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
        return torch.where(mask, colour, images)
    raise DatakdError(f"unknown PBA op {op!r}; valid choices: {', '.join(OPS)}")
