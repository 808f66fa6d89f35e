"""Cutout (DeVries & Taylor 2017) as a batch op, for seed 001's KD+Cutout comparison (Table 10).

The square is zeroed in the normalised image (i.e. set to the dataset mean), as in the reference
implementation, which applies Cutout after normalisation. `cutout` replaces the main view's images (the
KD+Cutout baseline: CE and KD both see the cut-out image); `tlcutout` keeps the main view and adds a
teacher-labelled view ``mix`` instead, which is how the authors' released code runs its "cutout" mix mode.
"""

from __future__ import annotations

import torch

from datakd.api.context import StepContext, View
from datakd.augmenters import mixing
from datakd.augmenters.base import Augmenter, register_augmenter
from datakd.augmenters.tl import main_view
from datakd.data.loaders import Batch
from datakd.errors import ConfigError


def cut_out(images: torch.Tensor, size: int, per_image: bool) -> torch.Tensor:
    """The batch with a size × size square (clipped at the border) set to 0, one per image or per batch."""
    n, _, height, width = images.shape
    masks = mixing.cutout_masks(n, height, width, size, per_image, images.device)
    return images * masks.to(images.dtype)


class _CutoutBase(Augmenter):
    def __init__(self, size: int, per_image: bool) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"{type(self).__name__}.size must be a positive integer (pixels), got {size!r}")
        if not isinstance(per_image, bool):
            raise ConfigError(f"{type(self).__name__}.per_image must be true or false, got {per_image!r}")
        self.size = size
        self.per_image = per_image

    def extra_repr(self) -> str:
        return f"size={self.size}, per_image={self.per_image}"


@register_augmenter("cutout")
class Cutout(_CutoutBase):
    """Cutout on the main view: one size×size square per image set to the mean (DeVries & Taylor 2017)."""

    def __init__(self, size: int = 16, per_image: bool = True) -> None:
        super().__init__(size, per_image)

    def forward(self, batch: Batch, ctx: StepContext) -> list[View]:
        images = cut_out(batch.images, self.size, self.per_image)
        return [View("main", images, batch.labels, indices=batch.indices)]


@register_augmenter("tlcutout")
class TLCutout(_CutoutBase):
    """Keeps the main view and adds a teacher-labelled Cutout view `mix` (the authors' code's cutout mode)."""

    view_names = ("main", "mix")

    def __init__(self, size: int = 8, per_image: bool = False) -> None:
        super().__init__(size, per_image)

    def forward(self, batch: Batch, ctx: StepContext) -> list[View]:
        return [main_view(batch), View("mix", cut_out(batch.images, self.size, self.per_image), None)]
