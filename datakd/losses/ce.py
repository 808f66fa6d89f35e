"""Cross-entropy with the view's labels (hard labels, or label distributions such as CutMix labels)."""

from __future__ import annotations

import torch

from datakd.api.context import TermInputs
from datakd.errors import DatakdError
from datakd.losses import functional as LF
from datakd.losses.base import LossTerm, register_loss


@register_loss("ce")
class CrossEntropy(LossTerm):
    """Cross-entropy to the labels (optionally label-smoothed); no teacher involved."""

    needs_teacher = False
    needs_labels = True

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise DatakdError(f"ce.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        view = inputs.view
        target = view.targets if view.targets is not None else view.labels
        if target is None:
            raise DatakdError(
                f"loss term {self.term_name!r} needs labels, but view {view.name!r} has none "
                f"(it is supervised by the teacher only); remove it from that view"
            )
        return LF.cross_entropy(inputs.student_logits, target, self.label_smoothing)
