"""One forward of a torchvision detector that returns what distillation needs, not just losses or detections.

torchvision's detectors return a loss dict in train mode and post-processed detections in eval mode; neither
exposes the FPN features, the dense head outputs, or the sampled ROIs that feature- and logit-distillation
read. `run_detector` calls the detector's own components in torchvision's order (transform, backbone, head /
anchor generator / compute_loss, or rpn pieces / roi sampling / box head / fastrcnn loss) so that with
``losses=True`` its loss dict equals ``model(images, targets)`` under the same random seed, and it never runs
detection post-processing (NMS of final boxes). The RPN's own proposal NMS is part of training and is kept.

Typical use (the task layer): the student in train mode with ``losses=True``; then the teacher in eval mode,
under ``torch.no_grad()`` (left to the caller, so methods that back-propagate through a frozen teacher can),
with ``losses=False`` and, for R-CNN teachers, ``proposals_from=student_outputs`` so the teacher's box head
scores the student's sampled proposals in the same order.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from datakd.errors import DatakdError

if TYPE_CHECKING:
    from torchvision.models.detection.image_list import ImageList

FAMILIES = ("rcnn", "retinanet", "fcos", "maskrcnn")


def detector_family(model: nn.Module) -> str:
    """The family name ("rcnn", "maskrcnn", "retinanet", "fcos") of a torchvision detector, unwrapped."""
    from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet

    inner = unwrap(model)
    if isinstance(inner, MaskRCNN):
        return "maskrcnn"
    if isinstance(inner, FasterRCNN):
        return "rcnn"
    if isinstance(inner, RetinaNet):
        return "retinanet"
    if isinstance(inner, FCOS):
        return "fcos"
    name = getattr(inner, "datakd_name", type(inner).__name__)
    raise DatakdError(f"model {name!r} is not a torchvision detector (Faster/Mask R-CNN, RetinaNet or FCOS)")


def unwrap(model: nn.Module) -> nn.Module:
    """The detector inside DataParallel / DDP / a compiled wrapper."""
    for _ in range(3):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


def _check_targets(targets: Sequence[dict[str, Tensor]], count: int, needs_masks: bool) -> None:
    if len(targets) != count:
        raise DatakdError(f"{count} images but {len(targets)} target dicts")
    for index, target in enumerate(targets):
        boxes = target.get("boxes")
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise DatakdError(f"target {index}: 'boxes' must be an n x 4 tensor (xyxy pixels)")
        if not boxes.is_floating_point():
            raise DatakdError(f"target {index}: 'boxes' must be float, got {boxes.dtype}")
        labels = target.get("labels")
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != boxes.shape[:1]:
            raise DatakdError(f"target {index}: 'labels' must be an int64 tensor with one label per box")
        if needs_masks and "masks" not in target:
            raise DatakdError(f"target {index}: Mask R-CNN needs 'masks' (n x H x W) in every target")


def _check_resized_boxes(targets: list[dict[str, Tensor]]) -> None:
    for index, target in enumerate(targets):
        boxes = target["boxes"]
        bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if bad.any():
            box = boxes[bad.nonzero()[0, 0]].tolist()
            raise DatakdError(f"target {index}: boxes need positive width and height, found {box}")


def run_detector(
    model: nn.Module,
    images: Sequence[Tensor] | Tensor,
    targets: Sequence[dict[str, Tensor]] | None,
    *,
    losses: bool,
    proposals_from: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run `model` on `images` (list of C x H x W in [0, 1]) and return the contract's outputs dict.

    Keys: family, features (FPN levels), image_sizes, padded_size, targets (resized); one-stage cls_logits,
    bbox_regression, (FCOS) bbox_ctrness, num_anchors_per_level, anchors; two-stage roi_class_logits,
    roi_box_regression, roi_labels, roi_regression_targets, proposals (None when there is nothing to score:
    an R-CNN teacher without `proposals_from`); ``losses`` (torchvision's loss names) when `losses`.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise DatakdError(
            "run_detector bypasses DistributedDataParallel's forward (gradients would not be synchronised): "
            "wrap the detector as DDP(DetectorRunner(model)) and call that"
        )
    detector = unwrap(model)
    family = detector_family(detector)
    image_list = list(images)
    if not image_list:
        raise DatakdError("run_detector needs at least one image")
    if targets is not None:
        _check_targets(targets, len(image_list), family == "maskrcnn" and losses)
    elif losses:
        raise DatakdError("detection losses need targets (boxes and labels per image)")
    batched, resized = detector.transform(image_list, list(targets) if targets is not None else None)
    if resized is not None:
        _check_resized_boxes(resized)
    features = detector.backbone(batched.tensors)
    if isinstance(features, Tensor):
        features = OrderedDict([("0", features)])
    out: dict[str, Any] = {
        "family": family,
        "features": features,
        "image_sizes": [tuple(int(v) for v in size) for size in batched.image_sizes],
        "padded_size": tuple(int(v) for v in batched.tensors.shape[-2:]),
        "targets": resized,
    }
    if family in ("retinanet", "fcos"):
        if proposals_from is not None:
            raise DatakdError(f"proposals_from is for R-CNN teachers; this model is a {family}")
        _one_stage(detector, family, batched, features, resized, losses, out)
    else:
        _two_stage(detector, family, batched, features, resized, losses, proposals_from, out)
    return out


class DetectorRunner(nn.Module):
    """`run_detector` as a module's forward, so DistributedDataParallel (which prepares gradient
    synchronisation in its own forward) can wrap it: ``DDP(DetectorRunner(model))(images, targets,
    losses=True)``. The detector is ``.module``, which `unwrap`, `model_taps` and checkpoints see through.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[dict[str, Tensor]] | None,
        losses: bool,
        proposals_from: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return run_detector(self.module, images, targets, losses=losses, proposals_from=proposals_from)


def _one_stage(
    detector: nn.Module,
    family: str,
    batched: ImageList,
    features: OrderedDict[str, Tensor],
    targets: list[dict[str, Tensor]] | None,
    losses: bool,
    out: dict[str, Any],
) -> None:
    levels = list(features.values())
    head_outputs = detector.head(levels)
    anchors = detector.anchor_generator(batched, levels)
    positions = [level.shape[-2] * level.shape[-1] for level in levels]
    total = head_outputs["cls_logits"].shape[1]
    per_location = total // sum(positions)
    out["cls_logits"] = head_outputs["cls_logits"]
    out["bbox_regression"] = head_outputs["bbox_regression"]
    if family == "fcos":
        out["bbox_ctrness"] = head_outputs["bbox_ctrness"]
    out["num_anchors_per_level"] = [count * per_location for count in positions]
    out["anchors"] = anchors
    if losses:
        assert targets is not None
        if family == "fcos":
            out["losses"] = detector.compute_loss(
                targets, head_outputs, anchors, out["num_anchors_per_level"]
            )
        else:
            out["losses"] = detector.compute_loss(targets, head_outputs, anchors)


def _rpn(
    detector: nn.Module,
    batched: ImageList,
    features: OrderedDict[str, Tensor],
    targets: list[dict[str, Tensor]] | None,
    losses: bool,
) -> tuple[list[Tensor], dict[str, Tensor]]:
    """torchvision's RegionProposalNetwork.forward, step by step, with losses in either mode."""
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    rpn = detector.rpn
    levels = list(features.values())
    objectness, deltas = rpn.head(levels)
    anchors = rpn.anchor_generator(batched, levels)
    per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
    boxes, _scores = rpn.filter_proposals(proposals, objectness, batched.image_sizes, per_level)
    if not losses:
        return boxes, {}
    labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
    regression_targets = rpn.box_coder.encode(matched, anchors)
    loss_objectness, loss_box = rpn.compute_loss(objectness, deltas, labels, regression_targets)
    return boxes, {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}


def _two_stage(
    detector: nn.Module,
    family: str,
    batched: ImageList,
    features: OrderedDict[str, Tensor],
    targets: list[dict[str, Tensor]] | None,
    losses: bool,
    proposals_from: dict[str, Any] | None,
    out: dict[str, Any],
) -> None:
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    heads = detector.roi_heads
    out.update(roi_class_logits=None, roi_box_regression=None, roi_labels=None, proposals=None)
    out["roi_regression_targets"] = None
    if proposals_from is not None:
        if losses:
            raise DatakdError(
                "proposals_from is for a teacher (losses=False): its losses need its own proposals"
            )
        proposals = _foreign_proposals(proposals_from, out)
        class_logits, box_regression = _score(heads, features, proposals, batched.image_sizes)
        out.update(roi_class_logits=class_logits, roi_box_regression=box_regression, proposals=proposals)
        out["roi_labels"] = proposals_from.get("roi_labels")
        out["roi_regression_targets"] = proposals_from.get("roi_regression_targets")
        return
    if targets is None or not (losses or detector.training):
        return  # a teacher without the student's proposals: features only
    own, rpn_losses = _rpn(detector, batched, features, targets, losses)
    proposals, matched, labels, regression_targets = heads.select_training_samples(own, targets)
    class_logits, box_regression = _score(heads, features, proposals, batched.image_sizes)
    out.update(roi_class_logits=class_logits, roi_box_regression=box_regression, proposals=proposals)
    out["roi_labels"] = torch.cat(labels)
    out["roi_regression_targets"] = torch.cat(regression_targets)
    if not losses:
        return
    loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
    detector_losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
    if family == "maskrcnn":
        detector_losses["loss_mask"] = _mask_loss(
            heads, features, proposals, matched, labels, targets, batched
        )
    out["losses"] = detector_losses | rpn_losses  # GeneralizedRCNN's order: detector losses, then RPN's


def _score(
    heads: nn.Module,
    features: OrderedDict[str, Tensor],
    proposals: list[Tensor],
    sizes: list[tuple[int, int]],
) -> tuple[Tensor, Tensor]:
    pooled = heads.box_roi_pool(features, proposals, sizes)
    return heads.box_predictor(heads.box_head(pooled))


def _foreign_proposals(source: dict[str, Any], out: dict[str, Any]) -> list[Tensor]:
    """The student's sampled proposals, after checking they live in this model's resized image frame."""
    proposals = source.get("proposals")
    if proposals is None:
        family = source.get("family", "unknown")
        raise DatakdError(f"proposals_from carries no proposals (a {family} student samples none)")
    if (
        list(source.get("image_sizes", [])) != out["image_sizes"]
        or tuple(source.get("padded_size", ())) != out["padded_size"]
    ):
        raise DatakdError(
            f"teacher and student resize images differently (student {source.get('image_sizes')} padded to "
            f"{source.get('padded_size')}, teacher {out['image_sizes']} padded to {out['padded_size']}): "
            "give both the same min_size / max_size so the teacher can score the student's proposals"
        )
    return list(proposals)


def _mask_loss(
    heads: nn.Module,
    features: OrderedDict[str, Tensor],
    proposals: list[Tensor],
    matched: list[Tensor],
    labels: list[Tensor],
    targets: list[dict[str, Tensor]],
    batched: ImageList,
) -> Tensor:
    """RoIHeads' training mask branch: positives only, matched to their ground-truth masks."""
    from torchvision.models.detection.roi_heads import maskrcnn_loss

    positives = [torch.where(image_labels > 0)[0] for image_labels in labels]
    mask_proposals = [p[index] for p, index in zip(proposals, positives)]
    positive_matches = [m[index] for m, index in zip(matched, positives)]
    pooled = heads.mask_roi_pool(features, mask_proposals, batched.image_sizes)
    mask_logits = heads.mask_predictor(heads.mask_head(pooled))
    gt_masks = [t["masks"] for t in targets]
    gt_labels = [t["labels"] for t in targets]
    return maskrcnn_loss(mask_logits, mask_proposals, gt_masks, gt_labels, positive_matches)
