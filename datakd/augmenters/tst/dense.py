"""f_DE and Stage II for detection and segmentation (TST App. D.1, Eqs. 6–8; the objectives are ours).

Images: detection batches are lists of float [0, 1] images (the detector normalises them itself), but the
meta-encoders were fitted on images normalised with the dataset's mean/std, and their fill is that
normalisation's black. So a detection image is normalised with the run's `Normalizer` (x·255 through it),
passed through f_DE, mapped back and clamped to [0, 1]. Segmentation batches are already normalised.
Same-sized images go through f_DE as one batch; images of different sizes (real COCO) one at a time with the
batch's draw (ops, gates, magnitudes), each with its own per-sample encoder noise and gates.

Stage II objectives, in the bounded form of Eq. 2 (α·teacher right + β·student wrong, the student's part
−log(1 − ·) so it is ≥ 0 and saturates instead of diverging), both networks frozen:

* detection [ours; the paper says only that the student's classification and box regression are pushed to
  be wrong and the teacher's kept right]:
  L = α·L_T + β·(mean_pos −log(1 − p_S(y) + ε) + mean_pos −log(1 − IoU(b_S, b) + ε)),
  where L_T is the teacher's own detection loss (one-stage: its focal/box(/centerness) losses;
  two-stage: its box head's classification + box-regression loss on the student's sampled proposals, as
  det_kd scores them, so no RPN or mask loss is needed), and "pos" are the student's positives: for
  R-CNNs its sampled proposals with a foreground label (p from the box head's softmax, b_S the box decoded
  with the class-y deltas); for one-stage detectors the anchors its IoU matcher (RetinaNet's own; for
  FCOS, whose matching is inline in its loss, an IoU 0.5/0.4 matcher of ours) assigns to an object (p the
  sigmoid of class y, b_S the decoded box). b is the matched ground-truth box.
  The targets follow θ in the gradient (`geometry.boxes_follow_theta`, straight-through: values exactly the
  detached warp's): with fixed targets, θ's gradient through a geometric op would be that of an image moved
  under boxes that stayed — a misalignment that raises the teacher's loss and the student's alike, not the
  augmentation's effect. So b carries that gradient into both terms: the one-stage IoU and the teacher's
  regression targets (encoded from the ground truth; not for an FCOS teacher, whose torchvision loss gives
  a NaN gradient in the boxes: `_detached`), and for R-CNNs the sampled proposals' regression targets, in
  the teacher's box loss and in `truth` of the student's IoU. There the RPN's proposals stay where they are
  (torchvision detaches them, and RoIAlign has no gradient in its boxes): for a proposal from the RPN the
  gradient is that of the object and its box moving under a proposal that does not, which is what the box
  head has to correct; the ground-truth boxes torchvision adds as proposals move with their own target,
  so their regression targets stay 0 and they add no gradient (as in the real forward).
* segmentation: Eq. 2 per labelled pixel of the decode head ("out"), α·CE(teacher) + β·(−log(1 − p_S(y)
  + ε)), mean over pixels that are not 255 (the auxiliary head is left out: ours).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datakd.augmenters.tst.geometry import IGNORE, boxes_follow_theta, warp_label_maps, warp_target
from datakd.augmenters.tst.policy import Draw, TSTPolicy
from datakd.data.loaders import Normalizer
from datakd.errors import ConfigError
from datakd.losses.functional import tst_search_loss

EPS = 1e-8
TWO_STAGE = ("rcnn", "maskrcnn")


@dataclass
class DenseAugmented:
    """f_DE applied to a dense batch: the images, their targets, and how many objects were dropped."""

    images: torch.Tensor | list[torch.Tensor]
    labels: torch.Tensor | None = None
    annotations: list[dict[str, Any]] | None = None
    dropped: int = 0
    objects: int = 0


def to_normalised(image: torch.Tensor, normalizer: Normalizer) -> torch.Tensor:
    """A [0, 1] C×H×W detection image as the 1×C×H×W normalised tensor the encoders were fitted on."""
    return normalizer(image[None] * 255.0)


def from_normalised(x: torch.Tensor, normalizer: Normalizer) -> torch.Tensor:
    """Back to [0, 1] (clamped: colour ops may leave the range; the detector expects image values)."""
    pixels = (x - normalizer.shift.to(x.dtype)) / normalizer.scale.to(x.dtype)
    return (pixels / 255.0).clamp(0.0, 1.0)


def augment_detection(
    policy: TSTPolicy,
    images: list[torch.Tensor],
    annotations: list[dict[str, Any]],
    normalizer: Normalizer,
    draw: Draw,
    random: bool = True,
    min_visible: float = 0.25,
    min_size: float = 1.0,
) -> DenseAugmented:
    """One-affine f_DE on [0, 1] detection images; boxes/masks take the detached Â's values, and where Â
    carries grad (Stage II) the kept boxes also its gradient (`boxes_follow_theta`, module docstring)."""
    same = len({tuple(im.shape) for im in images}) == 1
    groups = [list(range(len(images)))] if same else [[i] for i in range(len(images))]
    out_images: list[torch.Tensor] = [images[0]] * len(images)
    thetas: list[torch.Tensor] = [torch.empty(0)] * len(images)
    for group in groups:
        x = torch.cat([to_normalised(images[i], normalizer) for i in group])
        x_hat, theta = policy.apply_one_affine(x, draw, random)
        for k, i in enumerate(group):
            out_images[i] = from_normalised(x_hat[k : k + 1], normalizer)[0].to(images[i].dtype)
            thetas[i] = theta[k]
    targets, dropped, objects = [], 0, 0
    for image, target, theta in zip(images, annotations, thetas):
        height, width = int(image.shape[-2]), int(image.shape[-1])
        new, keep = warp_target(target, theta, height, width, min_visible, min_size)
        if theta.requires_grad and bool(keep.any()):
            kept = target["boxes"][keep.to(target["boxes"].device)]
            new["boxes"] = boxes_follow_theta(new["boxes"], kept, theta, height, width)
        targets.append(new)
        dropped += int((~keep).sum())
        objects += int(target["boxes"].shape[0])
    return DenseAugmented(out_images, None, targets, dropped, objects)


def augment_segmentation(
    policy: TSTPolicy, images: torch.Tensor, labels: torch.Tensor, draw: Draw, random: bool = True
) -> DenseAugmented:
    """One-affine f_DE on normalised N×C×H×W images; label maps follow Â (nearest, 255 from outside)."""
    x_hat, theta = policy.apply_one_affine(images, draw, random)
    return DenseAugmented(x_hat.to(images.dtype), warp_label_maps(labels, theta, IGNORE))


def bounded_wrong(p: torch.Tensor) -> torch.Tensor:
    """−log(1 − p + ε): Eq. 2's student term, ≥ 0, low when p (a probability or an IoU) is low."""
    return -torch.log(1.0 - p + EPS)


def segmentation_search_loss(
    student_out: torch.Tensor,
    teacher_out: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    beta: float,
    ignore: int = IGNORE,
) -> torch.Tensor:
    """Eq. 2 per labelled pixel of N×K×H×W logits (pixels labelled `ignore` left out), mean over pixels."""
    k = student_out.shape[1]
    valid = labels.reshape(-1) != ignore
    rows_s = student_out.movedim(1, -1).reshape(-1, k)[valid]
    rows_t = teacher_out.movedim(1, -1).reshape(-1, k)[valid]
    if rows_s.shape[0] == 0:
        return student_out.sum() * 0.0 + teacher_out.sum() * 0.0
    return tst_search_loss(rows_s, rows_t, labels.reshape(-1)[valid], alpha, beta)


def _pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching rows of two n×4 xyxy tensors (differentiable)."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a + area_b - inter).clamp_min(EPS)


def _two_stage_student(model: nn.Module, out: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_S(y), IoU) over the R-CNN student's foreground proposals."""
    labels = out["roi_labels"]
    positive = torch.nonzero(labels > 0).flatten()
    logits, deltas = out["roi_class_logits"].float(), out["roi_box_regression"].float()
    y = labels[positive]
    p = F.softmax(logits[positive], dim=1).gather(1, y[:, None]).squeeze(1)
    proposals = torch.cat(out["proposals"])[positive]
    coder = model.roi_heads.box_coder
    predicted = coder.decode_single(deltas.reshape(deltas.shape[0], -1, 4)[positive, y], proposals)
    # Not detached: the regression targets carry the boxes' gradient in θ (`boxes_follow_theta`), as the
    # one-stage path's matched boxes do; decode(encode(b, proposal), proposal) = b, gradient included.
    truth = coder.decode_single(out["roi_regression_targets"][positive].float(), proposals)
    return p, _pairwise_iou(predicted, truth)


def _one_stage_student(model: nn.Module, out: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_S(y), IoU) over the one-stage student's matched anchors."""
    from torchvision.models.detection import _utils as det_utils
    from torchvision.ops import box_iou

    matcher = getattr(model, "proposal_matcher", None) or det_utils.Matcher(0.5, 0.4, True)
    ps, ious = [], []
    for i, (target, anchors) in enumerate(zip(out["targets"], out["anchors"])):
        if target["boxes"].numel() == 0:
            continue
        matched = matcher(box_iou(target["boxes"], anchors))
        positive = torch.nonzero(matched >= 0).flatten()
        gt = target["boxes"][matched[positive]]
        y = target["labels"][matched[positive]]
        ps.append(torch.sigmoid(out["cls_logits"][i, positive].float().gather(1, y[:, None]).squeeze(1)))
        codes = out["bbox_regression"][i, positive].float()
        if out["family"] == "fcos":
            predicted = model.box_coder.decode(codes, anchors[positive])
        else:
            predicted = model.box_coder.decode_single(codes, anchors[positive])
        ious.append(_pairwise_iou(predicted, gt.float()))
    if not ps:
        empty = out["cls_logits"].sum() * 0.0
        return empty[None][:0], empty[None][:0]
    return torch.cat(ps), torch.cat(ious)


def _detached(targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets with detached boxes (same values). For an FCOS teacher: torchvision's FCOS loss takes the
    centerness target's square root at every location before keeping the foreground ones, and background
    locations (matched to object 0) give it negative numbers, so a gradient through the boxes is NaN. Its
    loss then sees the boxes fixed, as before; the student's IoU term still gets their gradient."""
    return [{**target, "boxes": target["boxes"].detach()} for target in targets]


def detection_search_loss(
    student: nn.Module,
    teacher: nn.Module,
    images: list[torch.Tensor],
    targets: list[dict[str, Any]],
    alpha: float,
    beta: float,
    autocast: Callable[[], Any],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Our detection Stage II objective (module docstring); returns it and its parts (detached)."""
    from datakd.models.detection.forward import detector_family, run_detector, unwrap

    s_family, t_family = detector_family(student), detector_family(teacher)
    two_stage = s_family in TWO_STAGE
    if two_stage != (t_family in TWO_STAGE):
        raise ConfigError(
            f"TST Stage II pairs a {s_family} student with a {t_family} teacher; it needs both two-stage "
            "or both one-stage detectors"
        )
    with autocast():
        s_out = run_detector(student, images, targets, losses=two_stage)
        if two_stage:
            from torchvision.models.detection.roi_heads import fastrcnn_loss

            t_out = run_detector(teacher, images, None, losses=False, proposals_from=s_out)
            cls_t, box_t = fastrcnn_loss(
                t_out["roi_class_logits"].float(),
                t_out["roi_box_regression"].float(),
                [s_out["roi_labels"]],
                [s_out["roi_regression_targets"]],
            )
            teacher_loss = cls_t + box_t
        else:
            t_targets = _detached(targets) if t_family == "fcos" else targets
            t_out = run_detector(teacher, images, t_targets, losses=True)
            teacher_loss = sum(v.float() for v in t_out["losses"].values())
    inner = unwrap(student)
    p, iou = _two_stage_student(inner, s_out) if two_stage else _one_stage_student(inner, s_out)
    zero = teacher_loss * 0.0
    wrong_cls = bounded_wrong(p).mean() if p.numel() else zero
    wrong_box = bounded_wrong(iou).mean() if iou.numel() else zero
    loss = alpha * teacher_loss + beta * (wrong_cls + wrong_box)
    parts = {
        "teacher": teacher_loss.detach(),
        "student_cls": wrong_cls.detach(),
        "student_box": wrong_box.detach(),
    }
    return loss, parts
