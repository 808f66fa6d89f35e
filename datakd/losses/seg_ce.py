"""Pixel-wise cross-entropy of a segmentation model: the decode head's "out" plus a weighted auxiliary head.

The auxiliary head (on an earlier stage) is the usual PSPNet/DeepLab deep supervision, weight 0.4 by
default as in mmseg's PSPNet configs. Pixels labelled `ignore_index` (255) count for nothing; a batch in
which every pixel is ignored gives 0 instead of NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from datakd.api.context import TermInputs
from datakd.errors import ConfigError
from datakd.losses.base import LossTerm, register_loss


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Mean CE over the non-ignored pixels of N×K×H×W logits against N×H×W labels (0 when none is left).

    Logits at another resolution than the labels are resized bilinearly to the labels first (as mmseg)."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    # sum / count instead of the mean: no NaN (and no host sync to check for it) when all are ignored
    total = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp_min(1)


@register_loss("seg_ce")
class SegmentationCE(LossTerm):
    """Pixel CE (ignore 255) on the decode head "out" + aux_weight × CE on the auxiliary head "aux"."""

    tasks = ("segmentation",)

    needs_teacher = False
    needs_labels = True

    def __init__(self, aux_weight: float = 0.4, ignore_index: int = 255) -> None:
        super().__init__()
        if isinstance(aux_weight, bool) or not aux_weight >= 0:
            raise ConfigError(f"seg_ce.aux_weight must be a number >= 0, got {aux_weight!r}")
        self.aux_weight = float(aux_weight)
        self.ignore_index = int(ignore_index)

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        labels = inputs.labels
        if labels is None or labels.ndim != 3:
            shape = None if labels is None else tuple(labels.shape)
            raise ConfigError(f"seg_ce needs N×H×W label maps (task: segmentation), got {shape}")
        outputs = inputs.student_outputs
        out = outputs.get("out", inputs.student_logits)
        loss = pixel_cross_entropy(out, labels, self.ignore_index)
        if self.aux_weight:
            aux = outputs.get("aux")
            if aux is None:
                raise ConfigError(
                    "seg_ce.aux_weight is set but the model has no auxiliary head ('aux'); "
                    "use a model with one or set aux_weight: 0"
                )
            aux_loss = pixel_cross_entropy(aux, labels, self.ignore_index)
            inputs.log(f"{self.term_name or 'seg_ce'}_aux", aux_loss.detach())
            loss = loss + self.aux_weight * aux_loss
        return loss
