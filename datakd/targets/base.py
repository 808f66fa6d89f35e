"""The target-transform extension point: rewrite the teacher's soft targets per sample.

Loss terms that distil a distribution (``kd``) ask `TermInputs.soft_targets(τ)`; when the run has a target
transform, that call returns the transform's output instead of σ_τ(teacher). This is where EffDstl's
consistent knowledge mining and the replacement/manipulation analyses live. A transform may own extra
models (a second teacher) and log the fraction of targets it rewrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from datakd.api.context import SetupContext
from datakd.registry import Registry


@dataclass
class TargetInputs:
    """What a transform sees for one view; logits are detached."""

    images: torch.Tensor
    labels: torch.Tensor | None
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    temperature: float
    epoch: int


class TargetTransform(nn.Module):
    """Base class: returns σ_τ(teacher) unchanged. Subclasses override `forward`."""

    def __init__(self, views: list[str] | None = None) -> None:
        super().__init__()
        self.views = tuple(views or ["main"])
        self.stats: dict[str, float] = {}

    def setup(self, ctx: SetupContext) -> None:
        """Called once after the models exist (load a second teacher here)."""

    def forward(self, inputs: TargetInputs) -> torch.Tensor:
        return torch.softmax(inputs.teacher_logits.float() / inputs.temperature, dim=1)


TARGET_TRANSFORMS: Registry[type[TargetTransform]] = Registry(
    "target transform", packages=("datakd.targets",)
)


def register_target_transform(name: str):
    return TARGET_TRANSFORMS.register(name)


@register_target_transform("identity")
class IdentityTransform(TargetTransform):
    """The teacher's softened distribution, unchanged."""


def build_target_transform(spec: dict[str, Any] | None) -> TargetTransform | None:
    if not spec:
        return None
    options = dict(spec)
    name = options.pop("name")
    return TARGET_TRANSFORMS.build(name, **options)
