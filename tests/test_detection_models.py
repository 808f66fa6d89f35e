"""Detectors by name (datakd.models.detection): construction, run_detector's outputs and losses, inheritance.

Everything runs the small registered variants on 2 images of 96x96 (64x64 where only shapes matter), so
the file stays well under a minute on one CPU thread.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from datakd.errors import ConfigError, DatakdError
from datakd.models import create, get_entry, model_taps
from datakd.models.detection import DetectorRunner, copy_neck_and_head, run_detector
from datakd.models.detection.builders import BACKBONES, DETECTORS
from datakd.models.registry import MODELS

K = 3  # object categories; the detectors get K + 1 logits


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small convolutions are far slower with two threads on a shared machine than with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(n: int = 2, side: int = 96, masks: bool = False) -> tuple[list[torch.Tensor], list[dict]]:
    generator = torch.Generator().manual_seed(3)
    images = [torch.rand(3, side, side, generator=generator) for _ in range(n)]
    targets = []
    for index in range(n):
        boxes = torch.tensor([[8.0, 10.0, 40.0, 44.0], [50.0, 20.0, 80.0, 60.0], [12.0, 60.0, 30.0, 78.0]])
        boxes = boxes * side / 96 + index
        target = {
            "boxes": boxes,
            "labels": torch.tensor([1, 3, 2]),
            "image_id": torch.tensor(index),
            "iscrowd": torch.zeros(3, dtype=torch.int64),
            "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
        }
        if masks:
            grid = torch.zeros(3, side, side, dtype=torch.uint8)
            for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
                grid[k, y1:y2, x1:x2] = 1
            target["masks"] = grid
        targets.append(target)
    return images, targets


def test_names_are_generated_for_every_detector_and_backbone():
    names = {name for name, entry in MODELS.items() if entry.family == "detection"}
    for detector in DETECTORS:
        for backbone in BACKBONES:
            assert f"{detector}_{backbone}_fpn" in names
            assert f"{detector}_{backbone}_fpn_tiny" in names
        assert f"{detector}_r18_fpn_nano" in names
    for example in ("fasterrcnn_r50_fpn", "retinanet_r101_fpn", "fcos_x101_32x8d_fpn", "maskrcnn_r18_fpn"):
        entry = get_entry(example)
        assert entry.family == "detection" and entry.description
        assert entry.taps["stage4"] == "backbone.body.layer4"


@pytest.mark.parametrize("name", ["fasterrcnn_r18_fpn_nano", "maskrcnn_r18_fpn_nano", "fcos_r34_fpn_tiny"])
def test_built_from_scratch_with_trainable_batchnorm_and_k_plus_one_logits(name):
    from torchvision.ops import FrozenBatchNorm2d

    model = create(name, K)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.body.modules())
    assert all(p.requires_grad for p in model.parameters())
    if hasattr(model, "roi_heads"):
        assert model.roi_heads.box_predictor.cls_score.out_features == K + 1
    else:
        assert model.head.classification_head.num_classes == K + 1


@pytest.mark.parametrize(
    "name",
    ["fasterrcnn_r18_fpn_nano", "retinanet_r18_fpn_nano", "fcos_r18_fpn_nano", "maskrcnn_r18_fpn_nano"],
)
def test_run_detector_losses_equal_the_models_own_and_backpropagate(name):
    model = create(name, K).train()
    images, targets = batch(masks=name.startswith("maskrcnn"))
    torch.manual_seed(7)
    reference = model(images, targets)
    torch.manual_seed(7)
    out = run_detector(model, images, targets, losses=True)
    assert list(out["losses"]) == list(reference)
    for key, value in reference.items():
        torch.testing.assert_close(out["losses"][key], value)
    sum(out["losses"].values()).backward()
    grads = [p.grad for p in model.backbone.body.layer1.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_detector_runner_is_run_detector_as_a_forward():
    model = create("fcos_r18_fpn_nano", K).train()
    images, targets = batch()
    runner = DetectorRunner(model)
    torch.manual_seed(1)
    direct = run_detector(model, images, targets, losses=True)["losses"]
    torch.manual_seed(1)
    wrapped = runner(images, targets, losses=True)["losses"]
    for key, value in direct.items():
        torch.testing.assert_close(wrapped[key], value)
    assert model_taps(runner)["stage2"] == "backbone.body.layer2"


def test_one_stage_outputs_follow_the_contract():
    model = create("retinanet_r18_fpn_nano", K).train()
    images, targets = batch()
    out = run_detector(model, images, targets, losses=True)
    assert out["family"] == "retinanet"
    assert list(out["features"]) == ["0", "1", "2", "p6", "p7"]
    assert out["image_sizes"] == [(96, 96), (96, 96)] and out["padded_size"] == (96, 96)
    anchors = sum(out["num_anchors_per_level"])
    per_level = [f.shape[-2] * f.shape[-1] * 9 for f in out["features"].values()]
    assert out["num_anchors_per_level"] == per_level
    assert out["cls_logits"].shape == (2, anchors, K + 1)
    assert out["bbox_regression"].shape == (2, anchors, 4)
    assert all(level.shape[:2] == (2, 64) for level in out["features"].values())

    fcos = run_detector(create("fcos_r18_fpn_nano", K).train(), images, targets, losses=True)
    positions = sum(fcos["num_anchors_per_level"])
    assert fcos["family"] == "fcos" and fcos["bbox_ctrness"].shape == (2, positions, 1)
    assert set(fcos["losses"]) == {"classification", "bbox_regression", "bbox_ctrness"}


def test_targets_come_back_resized_by_the_detectors_transform():
    model = create("retinanet_r18_fpn_nano", K, min_size=192, max_size=192).eval()
    images, targets = batch()
    out = run_detector(model, images, targets, losses=False)
    assert out["image_sizes"] == [(192, 192), (192, 192)]
    torch.testing.assert_close(out["targets"][0]["boxes"], targets[0]["boxes"] * 2)
    assert "losses" not in out


def test_teacher_scores_the_students_proposals_in_the_same_order():
    student = create("fasterrcnn_r18_fpn_nano", K).train()
    teacher = create("fasterrcnn_r18_fpn_tiny", K).eval()
    images, targets = batch()
    mine = run_detector(student, images, targets, losses=True)
    rois = mine["roi_class_logits"].shape[0]
    assert rois == sum(len(p) for p in mine["proposals"]) == mine["roi_labels"].shape[0]
    assert mine["roi_box_regression"].shape == (rois, 4 * (K + 1))
    assert list(mine["features"]) == ["0", "1", "2", "3", "pool"]
    with torch.no_grad():
        theirs = run_detector(teacher, images, targets, losses=False, proposals_from=mine)
        alone = run_detector(teacher, images, targets, losses=False)
    assert theirs["roi_class_logits"].shape == (rois, K + 1)
    assert theirs["roi_box_regression"].shape == (rois, 4 * (K + 1))
    assert theirs["roi_labels"] is mine["roi_labels"]
    assert all(a is b for a, b in zip(theirs["proposals"], mine["proposals"]))
    for key in ("boxes", "labels"):
        torch.testing.assert_close(theirs["targets"][0][key], mine["targets"][0][key])
    # scoring one proposal alone gives the same row: the order is the student's
    with torch.no_grad():
        single = dict(mine, proposals=[mine["proposals"][0][5:6], mine["proposals"][1][:0]])
        one = run_detector(teacher, images, targets, losses=False, proposals_from=single)
    torch.testing.assert_close(
        one["roi_class_logits"][0], theirs["roi_class_logits"][5], atol=1e-5, rtol=1e-4
    )
    assert alone["roi_class_logits"] is None and alone["proposals"] is None

    other = create("fasterrcnn_r18_fpn_tiny", K, min_size=128, max_size=128).eval()
    with pytest.raises(DatakdError, match="resize images differently"):
        run_detector(other, images, targets, losses=False, proposals_from=mine)
    one_stage = run_detector(create("retinanet_r18_fpn_nano", K), images, targets, losses=True)
    with pytest.raises(DatakdError, match="no proposals"):
        run_detector(teacher, images, targets, losses=False, proposals_from=one_stage)


def test_losses_in_eval_mode_for_a_frozen_teacher():
    model = create("fasterrcnn_r18_fpn_nano", K).eval()
    images, targets = batch()
    out = run_detector(model, images, targets, losses=True)
    assert set(out["losses"]) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in out["losses"].values())


def test_width_variants_have_fewer_parameters():
    def count(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    nano, tiny = create("retinanet_r18_fpn_nano", K), create("retinanet_r18_fpn_tiny", K)
    full = create("retinanet_r18_fpn", K)
    assert count(nano) < count(tiny) < count(full)
    narrow = create("retinanet_r18_fpn_tiny", K, width=0.125, fpn_channels=32)
    assert count(narrow) < count(nano)
    assert narrow.backbone.body.layer4[-1].conv2.out_channels == 64


def test_checkpoint_round_trip_through_a_state_dict_file(tmp_path):
    source = create("fcos_r18_fpn_nano", K)
    path = tmp_path / "fcos.pth"
    torch.save(source.state_dict(), path)
    loaded = create("fcos_r18_fpn_nano", K, checkpoint=str(path))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    with pytest.raises(DatakdError, match="shape mismatch"):
        create("fcos_r18_fpn_nano", K + 2, checkpoint=str(path))
    partial = create("fcos_r18_fpn_nano", K + 2, checkpoint=str(path), checkpoint_strict=False)
    torch.testing.assert_close(partial.backbone.body.conv1.weight, source.backbone.body.conv1.weight)
    with pytest.raises(DatakdError, match="does not exist"):
        create("fcos_r18_fpn_nano", K, checkpoint=str(tmp_path / "missing.pth"))


def test_torchvisions_own_state_dicts_load_key_for_key(tmp_path):
    from torchvision.models.detection import retinanet_resnet50_fpn

    reference = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=K + 1)
    path = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), path)
    ours = create("retinanet_r50_fpn", K, checkpoint=str(path))
    torch.testing.assert_close(
        ours.head.classification_head.cls_logits.weight,
        reference.state_dict()["head.classification_head.cls_logits.weight"],
    )


def test_copy_neck_and_head_from_a_wider_teacher():
    teacher, student = create("retinanet_r18_fpn_tiny", K), create("retinanet_r18_fpn_nano", K)
    copied = copy_neck_and_head(student, teacher)
    assert any(key.startswith("head.classification_head") for key in copied)
    assert any(key.startswith("backbone.fpn.layer_blocks") for key in copied)
    assert not any(key.startswith("backbone.fpn.inner_blocks") for key in copied)  # lateral convs differ
    assert not any(key.startswith("backbone.body") for key in copied)
    state = teacher.state_dict()
    for key in copied:
        torch.testing.assert_close(student.state_dict()[key], state[key])

    rcnn = copy_neck_and_head(create("fasterrcnn_r18_fpn_nano", K), create("fasterrcnn_r50_fpn_tiny", K))
    assert any(k.startswith("rpn.") for k in rcnn) and any(k.startswith("roi_heads.") for k in rcnn)
    with pytest.raises(DatakdError, match="no FPN/head tensor"):
        copy_neck_and_head(create("retinanet_r18_fpn_nano", K, fpn_channels=32), teacher)
    with pytest.raises(DatakdError, match="one family"):
        copy_neck_and_head(create("fcos_r18_fpn_nano", K), teacher)


def test_small_anchor_option_and_stage_taps():
    default = create("fasterrcnn_r18_fpn_nano", K, anchor_sizes="default")
    small = create("fasterrcnn_r18_fpn_nano", K)
    assert small.rpn.anchor_generator.sizes[0] == (8,) and default.rpn.anchor_generator.sizes[0] == (32,)
    retina = create("retinanet_r18_fpn_nano", K, anchor_sizes=[4, 8, 16, 32, 64])
    assert retina.anchor_generator.sizes[0] == (4, 5, 6)
    assert model_taps(small)["stage1"] == "backbone.body.layer1"


def test_bad_names_and_options_fail_clearly():
    with pytest.raises(DatakdError, match="did you mean 'retinanet_r18_fpn'"):
        create("retinanet_r18_fp", K)
    with pytest.raises(ConfigError, match="representation_size"):
        create("retinanet_r18_fpn_nano", K, representation_size=128)
    with pytest.raises(ConfigError, match="rpn_batch_size_per_imag"):
        create("fasterrcnn_r18_fpn_nano", K, options={"rpn_batch_size_per_imag": 64})
    with pytest.raises(ConfigError, match="anchor_sizes"):
        create("retinanet_r18_fpn_nano", K, anchor_sizes="huge")
    with pytest.raises(ConfigError, match="multiple of 16"):
        create("fcos_r18_fpn_nano", K, fpn_channels=40)
    with pytest.raises(ConfigError, match="num_classes"):
        create("fcos_r18_fpn_nano", 0)
    model = create("maskrcnn_r18_fpn_nano", K).train()
    images, targets = batch()
    with pytest.raises(DatakdError, match="masks"):
        run_detector(model, images, targets, losses=True)
    with pytest.raises(DatakdError, match="not a torchvision detector"):
        run_detector(nn.Conv2d(3, 3, 1), images, targets, losses=False)
