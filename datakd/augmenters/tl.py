"""Teacher-labelled mixed views (seed 001): TLmixup, TLCutMix, and the CutMix-with-labels baseline.

The step keeps the loader's crop+flip batch as view ``main`` (supervised by whatever the recipe says, e.g.
0.1·CE + 0.9·KD) and adds a second view ``mix`` = mixup/CutMix of that batch. The ``mix`` view carries no
labels, so only teacher-based terms can supervise it (``kd_mix: {type: kd, views: [mix], weight: 0.9}``):
the teacher's output on the mixed images is the target, the mixup/CutMix label is never used. A ``ce``
term on ``mix`` fails with a clear error. ``cutmix_ce`` is the Table 1 baseline that does use the CutMix
label distribution (as the view's ``targets``).
"""

from __future__ import annotations

import torch

from datakd.api.context import SetupContext, StepContext, View
from datakd.augmenters import mixing
from datakd.augmenters.base import Augmenter, register_augmenter
from datakd.data.loaders import Batch
from datakd.errors import ConfigError, DatakdError, choice_error


def main_view(batch: Batch) -> View:
    return View("main", batch.images, batch.labels, indices=batch.indices, annotations=batch.annotations)


class MixedViewAugmenter(Augmenter):
    """Base of the mixed-view augmenters: view ``main`` as loaded, plus view ``mix`` from `mix_view`."""

    view_names = ("main", "mix")

    def __init__(self, alpha: float = 1.0, partners: str = "derangement") -> None:
        super().__init__()
        name = type(self).__name__
        self.alpha = mixing.check_alpha(alpha, name)
        if partners not in mixing.PARTNERS:
            raise choice_error(f"{name}.partners", partners, mixing.PARTNERS, ConfigError)
        self.partners = partners

    def mix_view(self, batch: Batch, ctx: StepContext) -> View:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: Batch, ctx: StepContext) -> list[View]:
        return [main_view(batch), self.mix_view(batch, ctx)]

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, partners={self.partners!r}"


def cutmix_batch(
    images: torch.Tensor, alpha: float, partners: str
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One CutMix of the batch: one λ, one box and one partner assignment for all images.

    Returns the mixed images, the partner indices and λ re-computed from the clipped box (the share of
    each mixed image that is its own).
    """
    lam = mixing.sample_lambda(alpha)
    box = mixing.cutmix_box(images.shape[-2], images.shape[-1], lam)
    perm = mixing.partners(images.shape[0], partners, images.device)
    return mixing.paste_box(images, perm, box), perm, box.kept_fraction


@register_augmenter("tlmixup")
class TLMixup(MixedViewAugmenter):
    """TLmixup (seed 001): adds view `mix` = λx+(1−λ)x[perm], one λ~Beta(α,α) per batch, teacher-labelled."""

    def __init__(self, alpha: float = 1.0, partners: str = "permutation") -> None:
        super().__init__(alpha, partners)

    def mix_view(self, batch: Batch, ctx: StepContext) -> View:
        lam = mixing.sample_lambda(self.alpha)
        perm = mixing.partners(len(batch), self.partners, batch.images.device)
        ctx.log("mix_lambda", lam)
        return View("mix", mixing.mixup(batch.images, perm, lam), None)


@register_augmenter("tlcutmix")
class TLCutMix(MixedViewAugmenter):
    """TLCutMix (seed 001): adds view `mix` = CutMix of the batch (one box per batch), teacher-labelled."""

    def mix_view(self, batch: Batch, ctx: StepContext) -> View:
        mixed, _, lam = cutmix_batch(batch.images, self.alpha, self.partners)
        ctx.log("mix_lambda", lam)
        return View("mix", mixed, None)


@register_augmenter("cutmix_ce")
class CutMixCE(MixedViewAugmenter):
    """KD+CutMix baseline (seed 001 Table 1): view `mix` = CutMix with λ-mixed one-hot labels as targets."""

    def __init__(self, alpha: float = 1.0, partners: str = "derangement") -> None:
        super().__init__(alpha, partners)
        self.num_classes = 0

    def setup(self, ctx: SetupContext) -> None:
        self.num_classes = ctx.num_classes

    def mix_view(self, batch: Batch, ctx: StepContext) -> View:
        if self.num_classes < 1:
            raise DatakdError("cutmix_ce needs setup() (the number of classes) before its first step")
        mixed, perm, lam = cutmix_batch(batch.images, self.alpha, self.partners)
        ctx.log("mix_lambda", lam)
        targets = mixing.mixed_targets(batch.labels, perm, lam, self.num_classes)
        return View("mix", mixed, None, targets=targets)
