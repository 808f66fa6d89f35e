"""Pixel-wise logit KD for segmentation (TST's segmentation L_KL): every pixel's class distribution is
distilled with the library's one KD function, τ²·KL(σ_τ(t) ‖ σ_τ(s)), averaged over pixels and images.

TST weights the decode head ("out") 1.5 and the auxiliary head ("aux") 0.5, τ = 1 [methods.md §7.1]. All
pixels count, labelled or not (the teacher has an opinion on ignored pixels too; no labels are needed).
The spatial mean keeps the value independent of the crop size (a per-image sum would scale with it).
"""

from __future__ import annotations

import torch

from datakd.api.context import TermInputs
from datakd.errors import ConfigError
from datakd.losses import functional as LF
from datakd.losses.base import LossTerm, register_loss


def pixel_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """τ²·KL per pixel of N×K×H×W logits, mean over all N·H·W pixels (LF.kd on pixels as rows)."""
    if student.shape != teacher.shape or student.ndim != 4:
        raise ConfigError(
            f"seg_kd needs N×K×H×W student and teacher logits of one shape, got {tuple(student.shape)} "
            f"and {tuple(teacher.shape)}"
        )
    k = student.shape[1]
    rows_s = student.movedim(1, -1).reshape(-1, k)
    rows_t = teacher.movedim(1, -1).reshape(-1, k)
    return LF.kd(rows_s, rows_t, temperature)


@register_loss("seg_kd")
class SegmentationKD(LossTerm):
    """Pixel-wise KD at τ: main_weight × KL on "out" + aux_weight × KL on "aux" (TST: 1.5 and 0.5)."""

    tasks = ("segmentation",)

    def __init__(self, temperature: float = 1.0, main_weight: float = 1.5, aux_weight: float = 0.5) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not temperature > 0:
            raise ConfigError(f"seg_kd.temperature must be positive, got {temperature!r}")
        for name, value in (("main_weight", main_weight), ("aux_weight", aux_weight)):
            if isinstance(value, bool) or not value >= 0:
                raise ConfigError(f"seg_kd.{name} must be a number >= 0, got {value!r}")
        self.temperature = float(temperature)
        self.main_weight = float(main_weight)
        self.aux_weight = float(aux_weight)

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        s_out, t_out = inputs.student_outputs, inputs.teacher_outputs
        student = s_out.get("out", inputs.student_logits)
        teacher = t_out.get("out", inputs.teacher_logits)
        if teacher is None:
            raise ConfigError("seg_kd needs the teacher's segmentation logits")
        name = self.term_name or "seg_kd"
        main = pixel_kd(student, teacher.detach(), self.temperature)
        inputs.log(f"{name}_out", main.detach())
        loss = self.main_weight * main
        if self.aux_weight:
            if s_out.get("aux") is None or t_out.get("aux") is None:
                missing = "student" if s_out.get("aux") is None else "teacher"
                raise ConfigError(
                    f"seg_kd.aux_weight is set but the {missing} has no auxiliary head ('aux'); "
                    "set aux_weight: 0"
                )
            aux = pixel_kd(s_out["aux"], t_out["aux"].detach(), self.temperature)
            inputs.log(f"{name}_aux", aux.detach())
            loss = loss + self.aux_weight * aux
        return loss
