"""Evaluation metrics of the dense tasks: COCO mAP (boxes, masks) from in-memory results, and mIoU.

Public names:
* ``coco_map(ground_truth, predictions, iou_type, area_scale, category_ids)`` runs pycocotools' COCOeval on
  per-image dicts held in memory (no annotation or result files) and returns AP, AP50, AP75, APs, APm, APl
  as percentages. COCO's small/medium/large split is at 32² and 96² pixels of area, which only makes sense
  for COCO-sized images; ``area_scale`` multiplies those area thresholds so that small canvases keep the
  same split (a canvas of side L against COCO's ~640 px: ``area_scale = (L / 640) ** 2``).
* ``confusion_matrix(pred, target, num_classes, ignore_index)`` (accumulable: sum the matrices of many
  batches) and ``miou(conf)``: mean IoU over the classes present in the prediction or the target. A class
  absent from both has IoU 0/0; it is excluded from the mean (and reported as NaN), as mmseg does.

pycocotools is imported inside ``coco_map`` only, so the rest of the library works without it.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from datakd.errors import DatakdError, choice_error

IOU_TYPES = ("bbox", "segm")
COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# COCOeval's default area ranges (all, small, medium, large), in pixels².
_COCO_AREAS = ((0.0, 1e5**2), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e5**2))


def _array(x: Any, dtype: Any = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _scalar_id(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.item())
    return int(x)


def _category_map(category_ids: Sequence[int] | Mapping[int, int] | None) -> dict[int, int] | None:
    """Contiguous label (1..K) → category id; a sequence gives the id of label k at index k − 1."""
    if category_ids is None:
        return None
    if isinstance(category_ids, Mapping):
        return {int(k): int(v) for k, v in category_ids.items()}
    return {i + 1: int(c) for i, c in enumerate(category_ids)}


def _to_category(label: int, mapping: dict[int, int] | None) -> int:
    if mapping is None:
        return label
    if label not in mapping:
        raise DatakdError(
            f"label {label} has no category id (category_ids maps labels {min(mapping)}..{max(mapping)})"
        )
    return mapping[label]


def _binary_masks(masks: Any, n: int, what: str) -> np.ndarray:
    """n×H×W uint8 Fortran-ordered masks (pycocotools' layout); n×1×H×W and soft masks (> 0.5) accepted."""
    m = masks.detach().cpu() if isinstance(masks, torch.Tensor) else torch.as_tensor(np.asarray(masks))
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3 or m.shape[0] != n:
        raise DatakdError(f"{what} masks must be n×H×W with n = {n}, got shape {tuple(m.shape)}")
    if m.is_floating_point():
        m = m > 0.5
    return np.asfortranarray(m.numpy().astype(np.uint8).transpose(1, 2, 0))


def _rles(masks: Any, n: int, what: str) -> list[dict[str, Any]]:
    from pycocotools import mask as mask_utils

    if n == 0:
        return []
    return mask_utils.encode(_binary_masks(masks, n, what))


def _xywh(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    out[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    return out


def coco_map(
    ground_truth: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    iou_type: str = "bbox",
    area_scale: float = 1.0,
    category_ids: Sequence[int] | Mapping[int, int] | None = None,
) -> dict[str, float]:
    """COCO AP, AP50, AP75, APs, APm, APl (× 100) of in-memory predictions against in-memory ground truth.

    ``ground_truth``: one dict per image {image_id, height, width, boxes (n×4 xyxy, pixels), labels (1..K),
    iscrowd (optional, default 0), area (optional, default box area; mask area for "segm"), masks (n×H×W,
    needed for "segm")}. Crowd objects are ignored regions, as in COCO. ``predictions``: one dict per image
    {image_id, boxes, scores, labels, masks (n×H×W or n×1×H×W, soft masks thresholded at 0.5)}.
    ``category_ids`` maps labels back to dataset category ids (a sequence: label k → category_ids[k − 1]).
    An entry is −1 where COCO leaves it undefined (no ground truth in that area range); no predictions at
    all give 0.
    """
    if iou_type not in IOU_TYPES:
        raise choice_error("iou_type", iou_type, IOU_TYPES)
    if not area_scale > 0:
        raise DatakdError(f"area_scale must be positive, got {area_scale!r}")
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    mapping = _category_map(category_ids)
    images, annotations, categories = [], [], set(mapping.values()) if mapping else set()
    for entry in ground_truth:
        image_id = _scalar_id(entry["image_id"])
        boxes = _array(entry.get("boxes", np.zeros((0, 4)))).reshape(-1, 4)
        n = len(boxes)
        labels = _array(entry.get("labels", np.zeros(0)), np.int64).reshape(-1)
        crowd = _array(entry["iscrowd"], np.int64).reshape(-1) if "iscrowd" in entry else np.zeros(n, int)
        height, width = entry.get("height"), entry.get("width")
        if (height is None or width is None) and entry.get("masks") is not None:
            height, width = entry["masks"].shape[-2:]
        if iou_type == "segm":
            if entry.get("masks") is None:
                raise DatakdError(f"iou_type 'segm' needs ground-truth masks; image {image_id} has none")
            segms = _rles(entry["masks"], n, f"image {image_id}'s ground-truth")
        xywh = _xywh(boxes)
        if "area" in entry:
            areas = _array(entry["area"]).reshape(-1)
        elif iou_type == "segm":
            areas = np.array([float(mask_utils.area(s)) for s in segms])
        else:
            areas = xywh[:, 2] * xywh[:, 3]
        images.append({"id": image_id, "height": int(height or 0), "width": int(width or 0)})
        for j in range(n):
            category = _to_category(int(labels[j]), mapping)
            categories.add(category)
            ann = {
                "id": len(annotations) + 1,  # COCOeval treats id 0 as "unmatched": ids start at 1
                "image_id": image_id,
                "category_id": category,
                "bbox": [float(v) for v in xywh[j]],
                "area": float(areas[j]),
                "iscrowd": int(crowd[j]),
            }
            if iou_type == "segm":
                ann["segmentation"] = segms[j]
            annotations.append(ann)

    known = {image["id"] for image in images}
    results = []
    for entry in predictions:
        image_id = _scalar_id(entry["image_id"])
        if image_id not in known:
            raise DatakdError(f"prediction for image_id {image_id}, which has no ground-truth entry")
        boxes = _array(entry.get("boxes", np.zeros((0, 4)))).reshape(-1, 4)
        scores = _array(entry.get("scores", np.zeros(0))).reshape(-1)
        labels = _array(entry.get("labels", np.zeros(0)), np.int64).reshape(-1)
        n = len(scores)
        if len(boxes) != n or len(labels) != n:
            raise DatakdError(
                f"image {image_id}: {len(boxes)} boxes, {n} scores and {len(labels)} labels must match"
            )
        if iou_type == "segm":
            if n and entry.get("masks") is None:
                raise DatakdError(f"iou_type 'segm' needs predicted masks; image {image_id} has none")
            segms = _rles(entry.get("masks"), n, f"image {image_id}'s predicted")
        xywh = _xywh(boxes)
        for j in range(n):
            category = _to_category(int(labels[j]), mapping)
            categories.add(category)
            res: dict[str, Any] = {"image_id": image_id, "category_id": category, "score": float(scores[j])}
            if iou_type == "segm":
                res["segmentation"] = segms[j]  # no "bbox": loadRes would take the box area for masks
            else:
                res["bbox"] = [float(v) for v in xywh[j]]
            results.append(res)

    if not results or not annotations:
        return dict.fromkeys(COCO_KEYS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c, "name": str(c)} for c in sorted(categories)],
        }
        gt.createIndex()
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, iouType=iou_type)
        evaluator.params.areaRng = [[lo * area_scale, hi * area_scale] for lo, hi in _COCO_AREAS]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats[:6]
    return {k: (float(v) * 100.0 if v >= 0 else -1.0) for k, v in zip(COCO_KEYS, stats)}


# ------------------------------------------------------------------------------------------ segmentation
def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """K×K int64 counts, rows = target class, columns = predicted class; pixels with target
    `ignore_index` are skipped. Sum the matrices of several batches to evaluate a whole set."""
    if pred.shape != target.shape:
        raise DatakdError(
            f"prediction and target label maps differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel():
        bad_t, bad_p = (target < 0) | (target >= num_classes), (pred < 0) | (pred >= num_classes)
        if bad_t.any():
            raise DatakdError(
                f"target label {int(target[bad_t][0])} is outside 0..{num_classes - 1} "
                f"and is not the ignore index {ignore_index}"
            )
        if bad_p.any():
            raise DatakdError(f"predicted label {int(pred[bad_p][0])} is outside 0..{num_classes - 1}")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def miou(conf: torch.Tensor) -> dict[str, Any]:
    """{"miou", "pixel_acc", "per_class"} in percent from a confusion matrix (rows target, columns pred).

    IoU_c = TP / (TP + FP + FN). A class absent from both prediction and target (TP + FP + FN = 0) has no
    IoU: it is NaN in ``per_class`` and left out of the mean.
    """
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))
    present = union > 0
    total = conf.sum()
    return {
        "miou": float(iou[present].mean() * 100) if present.any() else 0.0,
        "pixel_acc": float(tp.sum() / total * 100) if total > 0 else 0.0,
        "per_class": [float(v * 100) for v in iou],
    }
