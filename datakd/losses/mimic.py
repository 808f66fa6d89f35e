"""Feature mimicking for detectors (TST's "mimic", following DIST): per FPN level, a 1×1 conv adapter maps the
student's level to the teacher's channels and an MSE pulls it onto the teacher's level; mean over levels.

DIST never released its detection code, so TST's sentence is the definition [methods.md §7.1]: "a conv
adapter from the student's neck features to the teacher's + MSE". The adapters are built in `setup` from
the FPN shapes the detection task measures before training (`ctx.extra["dense_shapes"]`), so they exist
before the optimizer is made and are saved with the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datakd.api.context import SetupContext, TermInputs
from datakd.errors import ConfigError
from datakd.losses.base import LossTerm, register_loss

FPN_PREFIX = "fpn."


def level_names(levels: str | int | Sequence[str | int] | None) -> list[str] | None:
    """FPN level keys ("0", "p6", ...) from a recipe value; "fpn.0" and 0 are accepted for "0"."""
    if levels is None:
        return None
    items = [levels] if isinstance(levels, (str, int)) else list(levels)
    names = [str(item).removeprefix(FPN_PREFIX) for item in items]
    if not names:
        raise ConfigError("levels must name at least one FPN level (or be left out for the default)")
    return names


def fpn_shapes(ctx: SetupContext, method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """{level: (C, h, w)} of the student's and the teacher's FPN, as the detection task measured them."""
    shapes = ctx.extra.get("dense_shapes")
    if not shapes or "student" not in shapes or "teacher" not in shapes:
        raise ConfigError(
            f"{method} distils FPN levels of detectors and needs a teacher; it works with task: detection "
            "only (the task provides the FPN shapes)"
        )

    def strip(found: dict[str, Any]) -> dict[str, Any]:
        return {tap.removeprefix(FPN_PREFIX): tuple(shape) for tap, shape in found.items()}

    return strip(shapes["student"]), strip(shapes["teacher"])


def paired_levels(
    ctx: SetupContext, method: str, levels: list[str] | None, exclude: Sequence[str] = ()
) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(level, student (C, h, w), teacher (C, h, w)) for the chosen levels, or by default for every level
    both detectors have (minus `exclude`); a level one of them lacks fails with the levels it has."""
    student, teacher = fpn_shapes(ctx, method)
    if levels is None:
        levels = [k for k in student if k in teacher and k not in exclude]
        if not levels:
            raise ConfigError(
                f"{method}: student levels {list(student)} and teacher levels {list(teacher)} share none"
            )
    for level in levels:
        for role, found in (("student", student), ("teacher", teacher)):
            if level not in found:
                raise ConfigError(
                    f"{method}.levels: {role} has no FPN level {level!r}; valid choices: {', '.join(found)}"
                )
    return [(level, student[level], teacher[level]) for level in levels]


def level_features(inputs: TermInputs, level: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's and the teacher's map of one FPN level (taps "fpn.<level>")."""
    tap = FPN_PREFIX + level
    return inputs.student_features[tap], inputs.teacher_features[tap]


@register_loss("mimic")
class Mimic(LossTerm):
    """TST's detection mimic: per FPN level a 1×1 conv adapter (student → teacher channels) + MSE."""

    tasks = ("detection",)

    def __init__(self, levels: str | int | Sequence[str | int] | None = None) -> None:
        super().__init__()
        self.levels = level_names(levels)
        self.adapters = nn.ModuleDict()

    def setup(self, ctx: SetupContext) -> None:
        pairs = paired_levels(ctx, self.term_name or "mimic", self.levels)
        for level, s_shape, t_shape in pairs:
            if tuple(s_shape[1:]) != tuple(t_shape[1:]):
                raise ConfigError(
                    f"mimic: FPN level {level!r} is {s_shape[1]}×{s_shape[2]} for the student and "
                    f"{t_shape[1]}×{t_shape[2]} for the teacher; use detectors with the same strides"
                )
        self.levels = [level for level, _, _ in pairs]
        self.adapters = nn.ModuleDict({level: nn.Conv2d(s[0], t[0], kernel_size=1) for level, s, t in pairs})
        self.student_taps = [FPN_PREFIX + level for level in self.levels]
        self.teacher_taps = list(self.student_taps)

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        if not self.adapters:
            raise ConfigError("mimic was not set up (its adapters are built from the FPN shapes)")
        total = None
        for level, adapter in self.adapters.items():
            fs, ft = level_features(inputs, level)
            loss = F.mse_loss(adapter(fs).float(), ft.detach().float())
            total = loss if total is None else total + loss
        return total / len(self.adapters)
