"""`pba`: Population Based Augmentation policies applied per epoch (role-wise KD's data agents).

The policy ops run on the uint8 batch before crop/flip (the augmenter's `raw_transform`, with the loader's
seeded generator, so a resumed run sees the same images); the optional final Cutout runs after crop/flip
on the normalised batch, where zero is the dataset mean (PBA multiplies the normalised image by a 0/1
mask, so the box becomes the mean colour; role-kd uses an 8×8 box for CIFAR-100, PBA 16×16 for CIFAR-10).

The policy comes from a schedule file (`schedule: PATH`, a policy per epoch written by `datakd pba search`,
stretched by ratio to the run's length) or is fixed (`policy: [60 ints]`, what a search trial uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from datakd.api.context import SetupContext, StepContext, View
from datakd.api.run import RunControl
from datakd.augmenters.base import Augmenter, register_augmenter
from datakd.augmenters.pba_ops import cutout_boxes
from datakd.augmenters.pba_policy import Schedule, apply_plan, check_policy, sample_plan
from datakd.data.loaders import Batch, RawTransform
from datakd.errors import DatakdError


@register_augmenter("pba")
class PBAAugmenter(Augmenter):
    """PBA augmentation policy per epoch (schedule file or fixed policy) + optional final Cutout."""

    view_names = ("main",)

    def __init__(
        self,
        schedule: str | None = None,
        policy: Sequence[int] | None = None,
        cutout: int = 0,
        fill: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if (schedule is None) == (policy is None):
            raise DatakdError(
                "augmenter pba needs exactly one of 'schedule' (a JSON file) or 'policy' (60 ints)"
            )
        if isinstance(cutout, bool) or not isinstance(cutout, int) or cutout < 0:
            raise DatakdError(
                f"augmenter pba: cutout must be a box side in pixels >= 0 (0 = off), got {cutout!r}"
            )
        self.schedule_path = schedule
        self.schedule = Schedule.load(schedule) if schedule is not None else None
        self.policy: tuple[int, ...] = (
            check_policy(policy, "augmenter pba policy") if policy is not None else self.schedule.policies[0]  # type: ignore[union-attr]
        )
        self.cutout = cutout
        self.fill: list[int] | None = list(fill) if fill is not None else None
        self._applied = 0
        self._images = 0

    def setup(self, ctx: SetupContext) -> None:
        if self.fill is None:  # PBA's transparent pixels end as the dataset mean (see pba_ops)
            self.fill = [round(m * 255) for m in ctx.mean]
        if len(self.fill) != len(ctx.mean):
            raise DatakdError(
                f"augmenter pba: fill has {len(self.fill)} values but the images have "
                f"{len(ctx.mean)} channels"
            )

    def set_policy(self, policy: Sequence[int]) -> None:
        """Replace the current policy (a search trial after PBT's explore step)."""
        self.policy = check_policy(policy, "augmenter pba policy")

    def on_epoch_start(self, epoch: int, trainer: RunControl) -> None:
        if self.schedule is not None:
            self.policy = self.schedule.policy_at(epoch, trainer.total_epochs)

    def raw_transform(self) -> RawTransform | None:
        return self._apply_policy

    def _apply_policy(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = images.shape
        plan = sample_plan(self.policy, n, h, w, generator)
        self._applied += int((plan.entries >= 0).sum())
        self._images += n
        fill = self.fill if self.fill is not None else [128] * c
        return apply_plan(images, self.policy, plan, fill)

    def forward(self, batch: Batch, ctx: StepContext) -> list[View]:
        if self._images:
            ctx.log("pba_ops_per_image", self._applied / self._images, self._images)
            self._applied = self._images = 0
        images = batch.images
        if self.cutout > 0:
            n, _, h, w = images.shape
            centres = torch.stack([torch.randint(0, h, (n,)), torch.randint(0, w, (n,))], dim=1)
            mask = cutout_boxes(h, w, centres, torch.full((n,), self.cutout), images.device)
            images = images.masked_fill(mask, 0.0)
        return [View("main", images, batch.labels, indices=batch.indices)]

    def extra_state(self) -> dict[str, Any]:
        return {"policy": list(self.policy)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "policy" in state:
            self.policy = check_policy(state["policy"], "checkpointed pba policy")
