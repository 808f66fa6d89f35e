"""Batch mixing ops shared by the mixed-view augmenters: mixup, CutMix boxes, derangements, Cutout masks.

Only the few random numbers of a batch (λ, a box centre, a partner order) are drawn, from the global torch
CPU generator, which the trainer checkpoints; the pixel work is one tensor op on the batch's device. Drawing
on the CPU keeps the random choices identical on every device and needs no host sync to turn λ into a box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from datakd.errors import ConfigError, DatakdError, choice_error

PARTNERS = ("derangement", "permutation")


def check_alpha(alpha: float, owner: str) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError(f"{owner}.alpha must be a positive number (Beta(α, α) for λ), got {alpha!r}")
    return float(alpha)


def sample_lambda(alpha: float) -> float:
    """One mixing ratio λ ~ Beta(α, α) for the whole batch (α = 1: uniform on [0, 1])."""
    concentration = torch.tensor(float(alpha), dtype=torch.float64)
    return float(torch.distributions.Beta(concentration, concentration).sample())


def derangement(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A random permutation without fixed points, drawn without rejection.

    A random order of the n items is read as a ring and every item is sent to the item `shift` places
    further on, with `shift` uniform in 1..n-1; no item can land on itself, and each item's partner is
    uniform over the other n-1. (Not uniform over all derangements, which the authors' re-draw loop is.)
    """
    if n < 2:
        raise DatakdError(f"a derangement needs at least 2 images in the batch, got {n}")
    order = torch.randperm(n)
    shift = int(torch.randint(1, n, ()))
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-shift)
    return perm.to(device)


def partners(n: int, kind: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """Partner index of every image: a derangement (CutMix, no self-mixing) or any permutation (mixup)."""
    if kind == "derangement":
        return derangement(n, device)
    if kind == "permutation":
        return torch.randperm(n).to(device)
    raise choice_error("partners", kind, PARTNERS, ConfigError)


@dataclass(frozen=True)
class Box:
    """A pixel rectangle [y1, y2) × [x1, x2) of an H × W image."""

    y1: int
    y2: int
    x1: int
    x2: int
    height: int
    width: int

    @property
    def area(self) -> int:
        return (self.y2 - self.y1) * (self.x2 - self.x1)

    @property
    def kept_fraction(self) -> float:
        """The CutMix λ after clipping: the share of pixels that still come from the image itself."""
        return 1.0 - self.area / (self.height * self.width)


def clipped_span(centre: int, length: int, size: int) -> tuple[int, int]:
    """[start, stop) of a segment of `length` centred on pixel `centre`, clipped to [0, size)."""
    start = centre - length // 2
    return min(max(start, 0), size), min(max(start + length, 0), size)


def cutmix_box(height: int, width: int, lam: float) -> Box:
    """CutMix box for ratio λ: sides ⌊H√(1−λ)⌋ × ⌊W√(1−λ)⌋, centre uniform over the pixels, clipped."""
    ratio = math.sqrt(max(1.0 - lam, 0.0))
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(torch.randint(0, height, ())), int(torch.randint(0, width, ()))
    y1, y2 = clipped_span(cy, cut_h, height)
    x1, x2 = clipped_span(cx, cut_w, width)
    return Box(y1, y2, x1, x2, height, width)


def paste_box(images: torch.Tensor, perm: torch.Tensor, box: Box) -> torch.Tensor:
    """CutMix: every image keeps its pixels outside `box` and takes its partner's pixels inside it."""
    mixed = images.clone()
    if box.area:
        mixed[:, :, box.y1 : box.y2, box.x1 : box.x2] = images[perm, :, box.y1 : box.y2, box.x1 : box.x2]
    return mixed


def mixup(images: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """mixup: λ·x + (1−λ)·x[perm]."""
    return torch.lerp(images[perm], images, lam)


def mixed_targets(labels: torch.Tensor, perm: torch.Tensor, lam: float, num_classes: int) -> torch.Tensor:
    """The label distribution λ·onehot(y) + (1−λ)·onehot(y[perm]) (CutMix/mixup labels)."""
    onehot = F.one_hot(labels, num_classes).float()
    return torch.lerp(onehot[perm], onehot, lam)


def cutout_masks(
    n: int, height: int, width: int, size: int, per_image: bool, device: torch.device | str
) -> torch.Tensor:
    """n×1×H×W masks: 0 inside a size×size square (centre uniform over the pixels, clipped), 1 outside.

    `per_image` draws one square per image (DeVries & Taylor); otherwise one square is shared by the batch.
    """
    count = n if per_image else 1
    cy = torch.randint(0, height, (count,)).to(device)
    cx = torch.randint(0, width, (count,)).to(device)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    y1, x1 = cy - size // 2, cx - size // 2
    inside_rows = (rows >= y1[:, None]) & (rows < y1[:, None] + size)
    inside_cols = (cols >= x1[:, None]) & (cols < x1[:, None] + size)
    hole = inside_rows[:, :, None] & inside_cols[:, None, :]
    return (~hole).unsqueeze(1).expand(n, 1, height, width)
