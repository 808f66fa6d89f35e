"""The 14 TST sub-policies: names, magnitude ranges, and their hand-made versions on uint8 pixels.

Order = the order of θ_p in the authors' code (spec §1.3): 6 colour ops and 5 affine ops with a magnitude
(fitted by meta-encoders in Stage I), then Equalize, Invert and an image-sized Cutout, used as fixed ops.
Magnitude ranges are torchvision's RandAugment space with 10 bins: m ∈ [0, 1) → bin ⌊10m⌋ → value.
Every op works on a whole uint8 batch (N×C×H×W) with one magnitude, through the shared op library
`datakd.augmenters.image_ops`; a translation magnitude is the content shift (right/down positive).
"""

from __future__ import annotations

import torch

from datakd.augmenters import image_ops
from datakd.errors import ConfigError, choice_error

COLOR_OPS = ("Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize")
AFFINE_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
MAGNITUDE_OPS = COLOR_OPS + AFFINE_OPS
FIXED_OPS = ("Equalize", "Invert", "Cutout")
OPS = MAGNITUDE_OPS + FIXED_OPS
NUM_BINS = 10
# Signed ops are fitted on both directions (the encoder sees m ∈ (−1, 1)); the others on m ∈ [0, 1).
SIGNED = frozenset({"Brightness", "Color", "Contrast", "Sharpness", *AFFINE_OPS})


def op_index(name: str) -> int:
    if name not in OPS:
        raise choice_error("TST op", name, OPS, ConfigError)
    return OPS.index(name)


def magnitude_values(name: str, height: int, width: int) -> torch.Tensor:
    """The 10 magnitude values of a magnitude op (float64), bin k = value k."""
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return torch.linspace(0.0, 0.9, NUM_BINS, dtype=torch.float64)
    if name == "Posterize":  # bits 8, 8, 7, 7, 6, 6, 5, 5, 4, 4
        return 8.0 - (torch.arange(NUM_BINS, dtype=torch.float64) / ((NUM_BINS - 1) / 4)).round()
    if name == "Solarize":
        return torch.linspace(255.0, 0.0, NUM_BINS, dtype=torch.float64)
    if name in ("ShearX", "ShearY"):
        return torch.linspace(0.0, 0.3, NUM_BINS, dtype=torch.float64)
    if name == "TranslateX":
        return torch.linspace(0.0, 150.0 / 331.0 * width, NUM_BINS, dtype=torch.float64)
    if name == "TranslateY":
        return torch.linspace(0.0, 150.0 / 331.0 * height, NUM_BINS, dtype=torch.float64)
    if name == "Rotate":
        return torch.linspace(0.0, 30.0, NUM_BINS, dtype=torch.float64)
    raise choice_error("magnitude op", name, MAGNITUDE_OPS, ConfigError)


def magnitude_value(name: str, m: float, height: int, width: int) -> float:
    """The op's value for an encoder magnitude m ∈ (−1, 1): bin ⌊10|m|⌋ (capped at 9), sign of m kept."""
    k = min(int(abs(m) * NUM_BINS), NUM_BINS - 1)
    value = float(magnitude_values(name, height, width)[k])
    return -value if m < 0 and name in SIGNED else value


def apply_pixel_op(images: torch.Tensor, name: str, value: float = 0.0) -> torch.Tensor:
    """The hand-made op on a uint8 batch with one magnitude value (NEAREST interpolation, fill 0).

    These are Stage I's fitting targets and the Equalize / Invert ops of f_DE.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"pixel ops take uint8 images, got {images.dtype}")
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return image_ops.enhance(images, name, 1.0 + value)
    if name == "Posterize":
        return image_ops.posterize(images, int(value))
    if name == "Solarize":
        return image_ops.solarize(images, value)
    if name in ("ShearX", "ShearY"):
        return image_ops.shear(images, "x" if name == "ShearX" else "y", value, 0)
    if name in ("TranslateX", "TranslateY"):
        # TST's magnitude is the content shift itself (right/down for positive values), fill 0.
        shift = int(value)
        return (
            image_ops.translate(images, shift, 0, 0)
            if name == "TranslateX"
            else image_ops.translate(images, 0, shift, 0)
        )
    if name == "Rotate":
        return image_ops.rotate(images, value, 0)
    if name == "Equalize":
        return image_ops.equalize(images)
    if name == "Invert":
        return image_ops.invert(images)
    raise choice_error("pixel op", name, [o for o in OPS if o != "Cutout"], ConfigError)


def cutout_mask(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """A 1×1×H×W mask zeroing one image-sized box centred at a uniform pixel, shared by the whole batch.

    As in the authors' code (op "CUTMIX"): box side = image size, clipped at the borders, so each side
    lies in [size/2, size] (16–32 px on CIFAR). Uses the global RNG (checkpointed, so resume is exact).
    """
    del batch  # one box for the batch
    cy = int(torch.randint(0, height, (1,)).item())
    cx = int(torch.randint(0, width, (1,)).item())
    top, bottom = max(0, cy - height // 2), min(height, cy + height // 2)
    left, right = max(0, cx - width // 2), min(width, cx + width // 2)
    rows = torch.arange(height, device=device).view(height, 1)
    cols = torch.arange(width, device=device).view(1, width)
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    return (~inside).float().view(1, 1, height, width)
