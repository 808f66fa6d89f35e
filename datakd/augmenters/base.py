"""The augmenter extension point: turns a loader batch into the views a training step uses.

An augmenter is an nn.Module, so learnable augmentation parameters (TST) and their state are saved with the
run. It may see the teacher and the student through the `StepContext` (to score or search), may own an
optimizer of its own (saved through `extra_state`), and may hook into the loader before crop/flip with a
uint8 `raw_transform` (PBA's policy ops). Register with ``@register_augmenter("name")``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from datakd.api.context import SetupContext, StepContext, View
from datakd.api.run import RunControl
from datakd.data.loaders import Batch, RawTransform
from datakd.registry import Registry


class Augmenter(nn.Module):
    """Base class; the default yields the batch unchanged as the single view ``main``."""

    #: Names of the views this augmenter produces (checked against the loss terms' `views` at build time).
    view_names: ClassVar[tuple[str, ...]] = ("main",)
    #: The tasks (RunConfig.task) this augmenter can serve: image-only operations would move pixels away
    #: from a detection or segmentation target, so an augmenter opts in to dense tasks explicitly.
    tasks: ClassVar[tuple[str, ...]] = ("classification",)

    def setup(self, ctx: SetupContext) -> None:
        """Called once after the models exist."""

    def raw_transform(self) -> RawTransform | None:
        """A uint8 batch transform the loader applies before crop/flip, or None."""
        return None

    def on_epoch_start(self, epoch: int, trainer: RunControl) -> None:
        """Called at the start of every epoch (after stage events); `trainer` is the run, see RunControl."""

    def joint_parameters(self) -> list[nn.Parameter]:
        """Parameters to train jointly with the student in its optimizer (none by default)."""
        return []

    def extra_state(self) -> dict[str, Any]:
        """Non-parameter state to checkpoint (e.g. an inner optimizer)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` returned."""

    def forward(self, batch: Batch, ctx: StepContext) -> list[View]:
        return [
            View("main", batch.images, batch.labels, indices=batch.indices, annotations=batch.annotations)
        ]


AUGMENTERS: Registry[type[Augmenter]] = Registry("augmenter", packages=("datakd.augmenters",))


def register_augmenter(name: str):
    return AUGMENTERS.register(name)


@register_augmenter("none")
class NoAugmenter(Augmenter):
    """Only the loader's base augmentation (crop + flip): one view, ``main``."""

    tasks = ("classification", "detection", "segmentation")


def build_augmenter(spec: dict[str, Any]) -> Augmenter:
    options = dict(spec)
    name = options.pop("name")
    return AUGMENTERS.build(name, **options)
