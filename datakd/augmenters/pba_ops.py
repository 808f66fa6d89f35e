"""The 15 image operations of Population Based Augmentation (Ho et al. 2019) on uint8 image batches.

PBA applies them to PIL images one at a time; here each op runs once on a whole subset of a batch, through
the shared op library `datakd.augmenters.image_ops` (its conventions are PIL's). The level → parameter
table is PBA's (``PARAMETER_MAX = 10``, ``int()`` truncation), see `op_parameter`; a translation level is
PIL's affine offset t (content moves by −t).

Fill: PBA draws on RGBA images and maps fully transparent pixels (outside a rotated/sheared/translated
image, inside its op-Cutout box) to 0 *after normalisation*, i.e. to the dataset mean colour. We fill with
the mean colour in pixel space (``fill``), which is the same up to uint8 rounding; the one difference is
that a later op in the same image also acts on the filled pixels, where PBA would reset them to the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from datakd.augmenters import image_ops as ops
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
        return ops.autocontrast(images)
    if op == "Equalize":
        return ops.equalize(images)
    if op == "Invert":
        return ops.invert(images)
    assert parameter is not None
    if op == "Rotate":
        return ops.rotate(images, parameter, fill_list)
    if op == "Posterize":
        return ops.posterize(images, int(parameter))
    if op == "Solarize":
        return images if parameter > 255 else ops.solarize(images, parameter)
    if op in ("Color", "Contrast", "Brightness", "Sharpness"):
        return ops.enhance(images, op, parameter)
    if op in ("ShearX", "ShearY"):
        return ops.shear(images, "x" if op == "ShearX" else "y", parameter, fill_list)
    if op in ("TranslateX", "TranslateY"):
        # PBA's parameter t is PIL's affine (1, 0, t, 0, 1, 0), which reads input x + t: content moves by −t.
        shift = -int(parameter)
        return (
            ops.translate(images, shift, 0, fill_list)
            if op == "TranslateX"
            else ops.translate(images, 0, shift, fill_list)
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
