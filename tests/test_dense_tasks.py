"""Detection and segmentation through the one trainer, end to end on a tiny scenes test bed.

A handful of 64-px canvases composed from the real Fashion-MNIST: a detection teacher, then students
with `det_kd`, `mimic` and `fgd` (one-stage and two-stage), evaluation by `datakd eval`, exact resume of a
detection run, the segmentation teacher → `seg_kd` student, and the task checks that keep a recipe of one
task off another task's data and terms.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from datakd.checkpoint import load_checkpoint
from datakd.cli import main
from datakd.config import config_from_dict
from datakd.engine.build import build_trainer
from datakd.errors import ConfigError
from tests.helpers import crash_and_resume

pytest.importorskip("pycocotools")

TRAIN, VAL, SIZE = 16, 8, 64
DETECTION_LOSSES = ("det_kd", "mimic", "fgd")
EVAL_FLAGS = ("--quiet", "--device", "cpu", "--data-root")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bed(scenes_bed: Path) -> Path:
    return scenes_bed


def recipe(out: Path, bed: Path, task: str, student: str, loss: dict[str, Any], **changes: Any) -> Any:
    dataset = "coco" if task == "detection" else "cityscapes"
    values: dict[str, Any] = {
        "name": f"tiny-{task}",
        "task": task,
        "seed": 0,
        "device": "cpu",
        "out": str(out),
        "epochs": 2,
        "quiet": True,
        "data": {
            "dataset": dataset,
            "root": str(bed),
            "batch_size": 4,
            "eval_batch_size": 8,
            "workers": 0,
            "image_size": SIZE,
        },
        "student": {"name": student},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
        "schedule": {"name": "constant"},
        "loss": loss,
        "engine": {"tensorboard": False},
    }
    values.update(changes)
    return config_from_dict(values)


@pytest.fixture(scope="module")
def retina_teacher(bed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("retina_teacher")
    cfg = recipe(out, bed, "detection", "retinanet_r18_fpn_tiny", {"detector": {}})
    build_trainer(cfg, "train").fit()
    return out / "last.pt"


def test_detection_teacher_run_writes_map_columns_and_summary(retina_teacher: Path) -> None:
    run = retina_teacher.parent
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "detection" and summary["task_metric"] == "map"
    assert summary["top1_last"] is None  # no accuracy in a detection run
    assert 0.0 <= summary["map_last"] <= 100.0
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in ("test_map", "test_ap50", "test_ap75", "test_aps", "loss_detector", "det_classification"):
        assert column in header
    assert load_checkpoint(retina_teacher)["config"]["task"] == "detection"


@pytest.mark.parametrize("term", DETECTION_LOSSES)
def test_one_stage_students_distil_and_eval(
    term: str, bed: Path, retina_teacher: Path, tmp_path: Path
) -> None:
    loss = {"detector": {}, term: {"weight": 1.0}}
    cfg = recipe(
        tmp_path / term,
        bed,
        "detection",
        "retinanet_r18_fpn_nano",
        loss,
        teacher={"name": "retinanet_r18_fpn_tiny", "checkpoint": str(retina_teacher)},
        epochs=1,
    )
    trainer = build_trainer(cfg, "distill")
    summary = trainer.fit()
    rows = trainer.metrics.rows
    assert rows[-1][f"loss_{term}"] > 0 and torch.isfinite(torch.tensor(rows[-1]["loss_total"]))
    assert summary["teacher_map"] is not None
    code = main(
        ["eval", "--checkpoint", str(tmp_path / term / "last.pt"), "--dataset", "coco", *EVAL_FLAGS, str(bed)]
    )
    assert code == 0


def test_two_stage_det_kd_scores_the_students_proposals(bed: Path, tmp_path: Path) -> None:
    teacher_cfg = recipe(
        tmp_path / "t", bed, "detection", "fasterrcnn_r18_fpn_tiny", {"detector": {}}, epochs=1
    )
    build_trainer(teacher_cfg, "train").fit()
    cfg = recipe(
        tmp_path / "s",
        bed,
        "detection",
        "fasterrcnn_r18_fpn_nano",
        {"detector": {}, "det_kd": {}, "fgd": {}},
        teacher={"name": "fasterrcnn_r18_fpn_tiny", "checkpoint": str(tmp_path / "t" / "last.pt")},
        epochs=1,
    )
    trainer = build_trainer(cfg, "distill")
    seen: dict[str, Any] = {}
    term = trainer.term("det_kd")
    original = term.forward

    def spy(inputs: Any) -> torch.Tensor:
        seen["student"] = inputs.student_outputs["roi_class_logits"].shape
        seen["teacher"] = inputs.teacher_outputs["roi_class_logits"].shape
        return original(inputs)

    term.forward = spy  # type: ignore[method-assign]
    trainer.fit()
    assert seen["student"] == seen["teacher"] and seen["student"][1] == 11  # 10 classes + background


def test_detection_student_learns(bed: Path, tmp_path: Path) -> None:
    """Thirty epochs (120 steps) on 16 real canvases: the detector's own loss falls, its box regression
    by more than noise (the run is deterministic; from scratch, focal loss moves slowly at first)."""
    cfg = recipe(tmp_path, bed, "detection", "retinanet_r18_fpn_nano", {"detector": {}}, epochs=30)
    cfg.optim.lr = 0.03
    trainer = build_trainer(cfg, "train")
    trainer.fit()
    rows = trainer.metrics.rows
    assert rows[-1]["loss_detector"] < 0.93 * rows[0]["loss_detector"], [r["loss_detector"] for r in rows]
    assert rows[-1]["det_bbox_regression"] < 0.95 * rows[0]["det_bbox_regression"]


def test_detection_resume_is_bit_identical(
    bed: Path, retina_teacher: Path, tmp_path: Path, monkeypatch
) -> None:
    def cfg(out: Path) -> Any:
        return recipe(
            out,
            bed,
            "detection",
            "retinanet_r18_fpn_nano",
            {"detector": {}, "fgd": {}},
            teacher={"name": "retinanet_r18_fpn_tiny", "checkpoint": str(retina_teacher)},
            engine={"tensorboard": False, "checkpoint_every_iters": 3},
        )

    straight = build_trainer(cfg(tmp_path / "straight"), "distill")
    straight.fit()
    _, resumed = crash_and_resume(cfg(tmp_path / "crashed"), "distill", crash_at=6, monkeypatch=monkeypatch)
    a, b = straight.state_dict(), resumed.state_dict()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["terms"].items():
        assert torch.equal(value, b["terms"][key]), key
    assert [r["test_map"] for r in straight.metrics.rows] == [r["test_map"] for r in resumed.metrics.rows]


def test_segmentation_teacher_student_and_eval(bed: Path, tmp_path: Path) -> None:
    teacher = recipe(tmp_path / "t", bed, "segmentation", "pspnet_r18_tiny", {"seg_ce": {}}, epochs=1)
    build_trainer(teacher, "train").fit()
    cfg = recipe(
        tmp_path / "s",
        bed,
        "segmentation",
        "pspnet_r18_nano",
        {"seg_ce": {}, "seg_kd": {}},
        teacher={"name": "pspnet_r18_tiny", "checkpoint": str(tmp_path / "t" / "last.pt")},
        schedule={"name": "poly", "eta_min": 1e-4},
    )
    trainer = build_trainer(cfg, "distill")
    summary = trainer.fit()
    assert summary["task"] == "segmentation" and 0 < summary["miou_last"] <= 100
    assert summary["teacher_miou"] is not None
    assert trainer.metrics.rows[-1]["loss_seg_kd"] > 0
    code = main(
        [
            "eval",
            "--checkpoint",
            str(tmp_path / "s" / "last.pt"),
            "--dataset",
            "cityscapes",
            *EVAL_FLAGS,
            str(bed),
        ]
    )
    assert code == 0


def test_a_task_needs_data_and_terms_of_that_task(bed: Path, tmp_path: Path) -> None:
    detection_on_images = recipe(tmp_path, bed, "detection", "retinanet_r18_fpn_nano", {"detector": {}})
    detection_on_images.data.dataset, detection_on_images.data.root = "quickstart", None
    with pytest.raises(ConfigError, match="task 'detection' cannot train on dataset 'quickstart'"):
        build_trainer(detection_on_images, "train")
    classification_on_coco = recipe(tmp_path, bed, "classification", "resnet8", {"ce": {}})
    classification_on_coco.data.dataset = "coco"
    with pytest.raises(ConfigError, match="a detection dataset"):
        build_trainer(classification_on_coco, "train")
    kd_on_boxes = recipe(tmp_path, bed, "detection", "retinanet_r18_fpn_nano", {"detector": {}, "ce": {}})
    with pytest.raises(ConfigError, match=r"valid for detection: .*det_kd.*detector.*fgd.*mimic"):
        build_trainer(kd_on_boxes, "train")
    cutmix = recipe(
        tmp_path, bed, "detection", "retinanet_r18_fpn_nano", {"detector": {}}, augmenter={"name": "cutout"}
    )
    with pytest.raises(ConfigError, match="serves task classification"):
        build_trainer(cutmix, "train")
    with pytest.raises(ConfigError, match=r"unknown task 'detecton'.*did you mean 'detection'"):
        build_trainer(recipe(tmp_path, bed, "detecton", "retinanet_r18_fpn_nano", {"detector": {}}), "train")


def test_info_shows_a_detectors_fpn_levels_and_head_outputs(capsys) -> None:
    args = ["info", "--model", "retinanet_r18_fpn_nano", "--input", "3x96x96", "--num-classes", "10"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fpn.p7" in out and "cls_logits       [1746, 11]" in out
    assert main(["info", "--model", "fasterrcnn_r18_fpn_nano", "--input", "3x96x96"]) == 0
    assert "fpn.pool" in capsys.readouterr().out
