"""Run configs of the evidence protocol: a teacher's and each arm's resolved recipe, as plain dicts."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from benchmarks.common import write_yaml
from benchmarks.evidence import arms as A

__all__ = ["arm_config", "base_config", "teacher_config", "write_yaml"]


def base_config(name: str, model: str, epochs: int, data_root: Path, device: str) -> dict[str, Any]:
    """What teachers and students share: data, optimizer, schedule, a lean engine."""
    return {
        "name": name,
        "seed": 0,
        "device": device,
        "epochs": epochs,
        "data": {**copy.deepcopy(A.DATA), "root": str(data_root)},
        "student": {"name": model, "kwargs": dict(A.GRAY)},
        "optim": dict(A.OPTIM),
        "schedule": dict(A.SCHEDULE),
        # No best.pt copy, no TensorBoard: per-epoch file writes would dominate a 1-second GPU epoch.
        "engine": {"tensorboard": False, "save_best": False},
    }


def teacher_config(model: str, epochs: int, data_root: Path, device: str) -> dict[str, Any]:
    """CE on the full training split (no subset), evaluated on the full test split."""
    cfg = base_config(f"evidence-teacher-{model}", model, epochs, data_root, device)
    cfg["data"]["batch_size"] = A.TEACHER_BATCH
    cfg["optim"]["lr"] = A.OPTIM["lr"] * A.TEACHER_BATCH / A.DATA["batch_size"]  # linear scaling rule
    cfg["loss"] = {"ce": {"weight": 1.0}}
    return cfg


def arm_config(
    arm: str,
    spec: dict[str, Any],
    epochs: int,
    data_root: Path,
    device: str,
    teachers: dict[str, Path],
    out: Path,
    train_size: int = A.TRAIN_SIZE,
    schedule: Path = A.SCHEDULE_FILE,
    teacher_schedule: Path = A.TEACHER_SCHEDULE_FILE,
) -> dict[str, Any]:
    """One arm's student recipe: the shared config, its teacher, then the arm's own loss/augmenter/events."""
    spec = copy.deepcopy(spec)
    role = spec.pop("teacher_role", "main")
    values = base_config(f"evidence-{arm}", A.STUDENT, epochs, data_root, device)
    values["data"]["train_subset"] = train_size
    if device == "cpu":
        # Contiguous memory, as `engine.channels_last: auto` meant on the CPU when runs 2 and 3 were made
        # (it turned channels-last on for the CPU afterwards): later CPU runs stay comparable with them.
        values["engine"]["channels_last"] = False
    if arm != "ce":
        checkpoint = teachers.get(role)
        values["teacher"] = {
            "name": A.TEACHERS[role],
            "kwargs": dict(A.GRAY),
            "checkpoint": None if checkpoint is None else str(checkpoint),
        }
    text = json.dumps(spec).replace("{out}", str(out)).replace("{schedule}", str(schedule))
    text = text.replace("{teacher_schedule}", str(teacher_schedule))
    text = text.replace("{teacher:main}", str(teachers.get("main")))
    values.update(json.loads(text))
    return values
