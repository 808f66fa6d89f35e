"""EffDstl §4.2 analysis: manipulate the teacher's soft targets by hand on a sample subset.

Schemes (spec §4.5, the renormalised forms; rows always sum to 1):
* ``label_smoothing`` (Eq. 3): label → t (`confidence`), every other class (1 − t)/(N − 1);
* ``teacher_amplification`` (Eq. 4): label → min(p^t_k + δ, 1), other classes of the teacher rescaled to
  the remaining mass;
* ``student_amplification`` (Eq. 5): the same with the student's (detached) probabilities as the base.
"""

from __future__ import annotations

import torch

from datakd.errors import ConfigError
from datakd.targets import functional as TF
from datakd.targets.base import TargetInputs, register_target_transform
from datakd.targets.subsets import SubsetTransform

SCHEMES = ("label_smoothing", "teacher_amplification", "student_amplification")


@register_target_transform("manipulate")
class TargetManipulation(SubsetTransform):
    """EffDstl §4.2: label smoothing, teacher or student amplification of the targets on a sample subset."""

    kind = "manipulate"

    def __init__(
        self,
        scheme: str = "label_smoothing",
        subset: str = "all",
        confidence: float | None = None,
        delta: float | None = None,
        views: list[str] | None = None,
    ) -> None:
        super().__init__(subset, views)
        if scheme not in SCHEMES:
            raise ConfigError(f"unknown manipulate.scheme {scheme!r}; valid choices: {', '.join(SCHEMES)}")
        smoothing = scheme == "label_smoothing"
        if smoothing and delta is not None:
            raise ConfigError(
                "manipulate.delta applies to the amplification schemes; label_smoothing takes confidence"
            )
        if not smoothing and confidence is not None:
            raise ConfigError(f"manipulate.confidence applies to label_smoothing; {scheme} takes delta")
        self.scheme = scheme
        self.confidence = 0.99 if confidence is None else float(confidence)
        self.delta = 0.1 if delta is None else float(delta)
        if smoothing and not 0.0 < self.confidence <= 1.0:
            raise ConfigError(f"manipulate.confidence must be in (0, 1], got {confidence!r}")
        if not smoothing and not self.delta > 0.0:
            raise ConfigError(f"manipulate.delta must be positive, got {delta!r}")

    def rewrite(
        self,
        inputs: TargetInputs,
        labels: torch.Tensor,
        teacher_probs: torch.Tensor,
        student_probs: torch.Tensor,
    ) -> torch.Tensor:
        if self.scheme == "label_smoothing":
            return TF.label_smoothing(labels, teacher_probs.shape[1], self.confidence)
        base = teacher_probs if self.scheme == "teacher_amplification" else student_probs
        return TF.amplify(base, labels, self.delta)

    def extra_repr(self) -> str:
        value = f"confidence={self.confidence}" if self.scheme == "label_smoothing" else f"delta={self.delta}"
        return f"scheme={self.scheme!r}, {value}, {super().extra_repr()}"
