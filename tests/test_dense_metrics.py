"""COCO mAP and mIoU on hand-computed cases: AP is worked out by hand from the precision/recall ranks
(COCO's 101-point interpolated precision), mIoU from a 3×3 label map counted by hand."""

from __future__ import annotations

import math

import pytest
import torch

from datakd.dense_metrics import COCO_KEYS, coco_map, confusion_matrix, miou
from datakd.errors import DatakdError

pytest.importorskip("pycocotools")


def gt(image_id: int, boxes: list[list[float]], labels: list[int], crowd: list[int] | None = None) -> dict:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {
        "image_id": torch.tensor(image_id),
        "height": 200,
        "width": 200,
        "boxes": b,
        "labels": torch.tensor(labels, dtype=torch.int64),
        "iscrowd": torch.tensor(crowd or [0] * len(labels), dtype=torch.int64),
        "area": (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]),
    }


def pred(image_id: int, boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict:
    return {
        "image_id": image_id,
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


# sizes: 10×10 (small, area 100), 50×50 (medium, 2500), 120×120 (large, 14400)
GT = [gt(1, [[0, 0, 10, 10], [20, 20, 70, 70]], [1, 2]), gt(2, [[10, 10, 130, 130]], [1])]


def test_perfect_predictions_score_100_everywhere() -> None:
    preds = [
        pred(1, [[0, 0, 10, 10], [20, 20, 70, 70]], [0.9, 0.8], [1, 2]),
        pred(2, [[10, 10, 130, 130]], [0.7], [1]),
    ]
    result = coco_map(GT, preds)
    assert set(result) == set(COCO_KEYS)
    for key in COCO_KEYS:
        assert result[key] == pytest.approx(100.0), key


def test_false_positive_ranked_first_vs_last() -> None:
    # One class, one object per image. Ranked first, the FP gives the PR points (r, p) = (0, 0),
    # (.5, .5), (1, 2/3): the interpolated precision is 2/3 at every recall, AP = 66.67. Ranked last it
    # comes after recall 1 is reached with precision 1: AP = 100.
    truth = [gt(1, [[0, 0, 50, 50]], [1]), gt(2, [[0, 0, 50, 50]], [1])]
    far = [150, 150, 190, 190]
    first = [pred(1, [[0, 0, 50, 50], far], [0.8, 0.95], [1, 1]), pred(2, [[0, 0, 50, 50]], [0.7], [1])]
    last = [pred(1, [[0, 0, 50, 50], far], [0.8, 0.1], [1, 1]), pred(2, [[0, 0, 50, 50]], [0.7], [1])]
    assert coco_map(truth, first)["AP"] == pytest.approx(200 / 3, abs=1e-6)
    assert coco_map(truth, last)["AP"] == pytest.approx(100.0)


def test_crowd_region_is_ignored_not_a_false_positive() -> None:
    # A top-ranked detection inside a crowd region is ignored (AP 100); without the crowd region it is a
    # false positive ranked first against one object: PR points (0, 0), (1, .5), AP = 50.
    hit = [[100, 100, 140, 140], [0, 0, 50, 50]]
    preds = [pred(1, hit, [0.99, 0.5], [1, 1])]
    with_crowd = [gt(1, [[0, 0, 50, 50], [90, 90, 190, 190]], [1, 1], crowd=[0, 1])]
    without = [gt(1, [[0, 0, 50, 50]], [1])]
    assert coco_map(with_crowd, preds)["AP"] == pytest.approx(100.0)
    assert coco_map(without, preds)["AP"] == pytest.approx(50.0)


def test_iou_between_thresholds_counts_for_ap50_not_ap75() -> None:
    # IoU = 100 / 160 = 0.625: a match at thresholds .50, .55, .60 only -> AP = 3/10 of 100.
    result = coco_map([gt(1, [[0, 0, 10, 10]], [1])], [pred(1, [[0, 0, 10, 16]], [0.9], [1])])
    assert result["AP50"] == pytest.approx(100.0)
    assert result["AP75"] == pytest.approx(0.0)
    assert result["AP"] == pytest.approx(30.0)


def test_empty_predictions_give_zero() -> None:
    assert coco_map(GT, []) == dict.fromkeys(COCO_KEYS, 0.0)
    assert coco_map(GT, [pred(1, [], [], [])])["AP"] == 0.0


def test_area_scale_moves_the_size_split() -> None:
    # A 10×10 object is small on COCO's scale; on a 96-px canvas ((96/640)² of the area) it is medium.
    truth, preds = [gt(1, [[0, 0, 10, 10]], [1])], [pred(1, [[0, 0, 10, 10]], [0.9], [1])]
    coco = coco_map(truth, preds)
    assert (coco["APs"], coco["APm"]) == (pytest.approx(100.0), -1.0)
    small_canvas = coco_map(truth, preds, area_scale=(96 / 640) ** 2)
    assert (small_canvas["APs"], small_canvas["APm"]) == (-1.0, pytest.approx(100.0))


def test_labels_are_mapped_to_category_ids() -> None:
    preds = [
        pred(1, [[0, 0, 10, 10], [20, 20, 70, 70]], [0.9, 0.8], [1, 2]),
        pred(2, [[10, 10, 130, 130]], [0.7], [1]),
    ]
    assert coco_map(GT, preds, category_ids=[17, 3])["AP"] == pytest.approx(100.0)
    with pytest.raises(DatakdError, match="label 2 has no category id"):
        coco_map(GT, preds, category_ids=[17])


def test_segm_perfect_masks_and_a_half_mask() -> None:
    masks = torch.zeros(1, 40, 40, dtype=torch.uint8)
    masks[0, 10:30, 10:30] = 1
    truth = [{**gt(1, [[10, 10, 30, 30]], [1]), "masks": masks, "height": 40, "width": 40}]
    soft = masks.float().unsqueeze(1) * 0.9  # n×1×H×W probabilities, as Mask R-CNN returns them
    perfect = [{**pred(1, [[10, 10, 30, 30]], [0.9], [1]), "masks": soft}]
    assert coco_map(truth, perfect, iou_type="segm")["AP"] == pytest.approx(100.0)
    half = masks.clone()
    half[0, 10:30, 20:30] = 0  # mask IoU 0.5: a match at threshold .50 only
    halved = [{**pred(1, [[10, 10, 30, 30]], [0.9], [1]), "masks": half}]
    result = coco_map(truth, halved, iou_type="segm")
    assert result["AP50"] == pytest.approx(100.0)
    assert result["AP"] == pytest.approx(10.0)


def test_bad_arguments_fail_in_one_line() -> None:
    with pytest.raises(DatakdError, match=r"unknown iou_type 'box'.*valid choices: bbox, segm"):
        coco_map(GT, [], iou_type="box")
    with pytest.raises(DatakdError, match="image_id 9"):
        coco_map(GT, [pred(9, [[0, 0, 1, 1]], [0.5], [1])])
    with pytest.raises(DatakdError, match="needs ground-truth masks"):
        coco_map(GT, [], iou_type="segm")


# ------------------------------------------------------------------------------------------------ mIoU
TARGET = torch.tensor([[0, 0, 1], [1, 1, 2], [255, 2, 2]])
PRED = torch.tensor([[0, 1, 1], [1, 1, 2], [0, 0, 2]])


def test_miou_on_a_hand_counted_3x3_map() -> None:
    # Pairs (target, pred) without the ignored pixel: (0,0) (0,1) (1,1)×3 (2,2)×2 (2,0).
    # IoU_0 = 1/(1+1+1) = 1/3, IoU_1 = 3/(3+1+0) = 3/4, IoU_2 = 2/(2+0+1) = 2/3; class 3 is absent from
    # both maps and excluded: mIoU = (1/3 + 3/4 + 2/3)/3 = 7/12. Pixel accuracy 6/8.
    conf = confusion_matrix(PRED, TARGET, num_classes=4)
    assert conf.sum() == 8 and conf[2, 0] == 1 and conf[0, 1] == 1
    result = miou(conf)
    assert result["miou"] == pytest.approx(700 / 12)
    assert result["pixel_acc"] == pytest.approx(75.0)
    assert result["per_class"][:3] == pytest.approx([100 / 3, 75.0, 200 / 3])
    assert math.isnan(result["per_class"][3])


def test_confusion_matrices_accumulate_over_batches() -> None:
    whole = confusion_matrix(PRED, TARGET, 4)
    parts = confusion_matrix(PRED[:1], TARGET[:1], 4) + confusion_matrix(PRED[1:], TARGET[1:], 4)
    assert torch.equal(whole, parts)
    batched = confusion_matrix(torch.stack([PRED, PRED]), torch.stack([TARGET, TARGET]), 4)
    assert torch.equal(batched, 2 * whole)


def test_confusion_matrix_rejects_labels_outside_the_classes() -> None:
    with pytest.raises(DatakdError, match=r"target label 7 is outside 0\.\.3"):
        confusion_matrix(PRED, torch.full_like(TARGET, 7), 4)
    with pytest.raises(DatakdError, match="differ in shape"):
        confusion_matrix(PRED, TARGET[:2], 4)
