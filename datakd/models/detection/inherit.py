"""A student detector inheriting its teacher's neck and head (FGD's ``init_student``).

FGD's configs start the student from the teacher's FPN and detection head (their reported numbers include
that inheritance); backbones differ, so only the neck and head are copied, tensor by tensor where names and
shapes agree. With different backbone widths the FPN's lateral 1x1 convs do not fit and stay the student's.
"""

from __future__ import annotations

import torch
from torch import nn

from datakd.errors import DatakdError
from datakd.models.detection.forward import detector_family, unwrap

# State-dict prefixes of the neck and head per family.
INHERITED = {
    "rcnn": ("backbone.fpn.", "rpn.", "roi_heads."),
    "maskrcnn": ("backbone.fpn.", "rpn.", "roi_heads."),
    "retinanet": ("backbone.fpn.", "head."),
    "fcos": ("backbone.fpn.", "head."),
}


def copy_neck_and_head(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Copy the teacher's FPN and head tensors into `student` where names and shapes match; return their keys.

    Both must be detectors of the same family. Raises `DatakdError` when not a single tensor fits (e.g. FPNs
    of different widths), since then the inheritance a recipe asked for silently would not happen.
    """
    student_family, teacher_family = detector_family(student), detector_family(teacher)
    if student_family != teacher_family:
        raise DatakdError(
            f"init_student copies a neck and head between detectors of one family; student is "
            f"{student_family}, teacher is {teacher_family}"
        )
    prefixes = INHERITED[student_family]
    target, source = unwrap(student), unwrap(teacher).state_dict()
    own = target.state_dict()
    # A module is copied whole or not at all: a lateral conv's bias without its weight inherits nothing.
    modules: dict[str, list[str]] = {}
    for key in own:
        if key.startswith(prefixes):
            modules.setdefault(key.rpartition(".")[0], []).append(key)
    copied: list[str] = []
    skipped: list[str] = []
    with torch.no_grad():
        for keys in modules.values():
            if any(key not in source or source[key].shape != own[key].shape for key in keys):
                skipped.extend(keys)
                continue
            for key in keys:
                own[key].copy_(source[key])
            copied.extend(keys)
    if not copied:
        raise DatakdError(
            f"init_student: no FPN/head tensor of the teacher fits the student ({len(skipped)} differ in "
            f"shape or name, e.g. {skipped[:2]}); give both the same fpn_channels (and the same num_classes)"
        )
    return copied
