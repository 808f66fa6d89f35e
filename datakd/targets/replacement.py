"""EffDstl §4.1 analysis: replace the (weak) run teacher's soft targets by a second (strong) teacher's.

Schemes (spec §4.5; p⁻ the run teacher, p⁺ the second teacher, k the label, all at the term's τ):
* ``full``: p ← p⁺;
* ``partial`` (Eq. 1): p_k ← p⁻_k, p_i ← p⁺_i·(1 − p⁻_k)/(1 − p⁺_k): the strong teacher's class relations
  with the weak teacher's confidence;
* ``confidence`` (Eq. 2): p_k ← p⁺_k, p_i ← p⁻_i·(1 − p⁺_k)/(1 − p⁻_k): the strong teacher's confidence
  with the weak teacher's class relations.

The second teacher is loaded in `setup` from `checkpoint` (any architecture; `model` names it when the
file does not) and runs on the view's images in eval mode without gradient. It is not part of the
transform's state dict, so run checkpoints stay small; a resumed run loads it again from the file.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from datakd.api.context import SetupContext
from datakd.errors import ConfigError, DatakdError
from datakd.models.loading import freeze_teacher, load_model
from datakd.targets import functional as TF
from datakd.targets.base import TargetInputs, register_target_transform
from datakd.targets.subsets import SubsetTransform

SCHEMES = ("full", "partial", "confidence")


@register_target_transform("replace")
class TeacherReplacement(SubsetTransform):
    """EffDstl §4.1: full, partial or confidence replacement by a second teacher on a sample subset."""

    kind = "replace"

    def __init__(
        self,
        checkpoint: str | None = None,
        scheme: str = "full",
        subset: str = "all",
        model: str | None = None,
        kwargs: dict[str, Any] | None = None,
        views: list[str] | None = None,
    ) -> None:
        super().__init__(subset, views)
        if scheme not in SCHEMES:
            raise ConfigError(f"unknown replace.scheme {scheme!r}; valid choices: {', '.join(SCHEMES)}")
        self.scheme = scheme
        self.checkpoint = checkpoint
        self.model = model
        self.model_kwargs = dict(kwargs or {})
        self._second: tuple[nn.Module, ...] = ()  # a tuple keeps it out of the state dict and .to()
        self._amp = False

    @property
    def second_teacher(self) -> nn.Module:
        if not self._second:
            raise DatakdError("target transform 'replace' was not set up: its second teacher is not loaded")
        return self._second[0]

    def setup(self, ctx: SetupContext) -> None:
        if not self.checkpoint:
            raise ConfigError(
                "target transform 'replace' needs the second (strong) teacher: set "
                "target_transform.checkpoint (and target_transform.model if the file does not name it)"
            )
        config = ctx.extra.get("config")
        fast = ctx.extra.get("fast_path")
        channels_last = bool(fast is not None and fast.channels_last)
        model, _ = load_model(self.checkpoint, ctx.num_classes, self.model, self.model_kwargs)
        self._second = (freeze_teacher(model, ctx.device, channels_last),)
        self._amp = bool(config is not None and config.engine.amp and ctx.device.type == "cuda")

    def strong_logits(self, images: torch.Tensor) -> torch.Tensor:
        teacher = self.second_teacher
        teacher.eval()
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self._amp else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            return teacher(images).float()

    def rewrite(
        self,
        inputs: TargetInputs,
        labels: torch.Tensor,
        teacher_probs: torch.Tensor,
        student_probs: torch.Tensor,
    ) -> torch.Tensor:
        strong = torch.softmax(self.strong_logits(inputs.images) / inputs.temperature, dim=1)
        if self.scheme == "full":
            return TF.full_replacement(teacher_probs, strong)
        if self.scheme == "partial":
            return TF.partial_replacement(teacher_probs, strong, labels)
        return TF.confidence_replacement(teacher_probs, strong, labels)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme!r}, checkpoint={self.checkpoint!r}, {super().extra_repr()}"
