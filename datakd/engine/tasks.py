"""What differs between classification, detection and segmentation, so that one loop trains all three.

A task says how a model runs on a view (the student with gradient and its own losses, the teacher in eval
mode without gradient), what the terms receive besides logits and taps (`TermInputs.student_outputs`),
how a model is evaluated and which number is the run's headline metric. The trainer holds one `Task` and
never branches on the task itself; the loss terms of each task read what its forward returns
(docs/methods/detection.md lists the keys).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from datakd.api import distributed as D
from datakd.api.context import View, record
from datakd.api.features import FeatureRecorder
from datakd.engine.evaluate import evaluate as evaluate_classifier
from datakd.engine.fastpath import unwrap
from datakd.errors import ConfigError, choice_error

TASKS = ("classification", "detection", "segmentation")
# FPN levels of a detector appear among the features under these tap names (e.g. "fpn.0", "fpn.p6").
FPN_PREFIX = "fpn."

Forward = tuple[torch.Tensor | None, dict[str, torch.Tensor], dict[str, Any]]


class Task:
    """Classification: the model maps images to logits; accuracy is the metric."""

    name = "classification"
    #: the headline metric (a key of `evaluate`'s result); best.pt and `*_best` follow it.
    metric = "top1"
    #: dense tasks run the student's components directly (torchvision detectors), so the student is not
    #: wrapped in DDP/compile; its gradients are all-reduced by hand instead.
    wraps_student = True

    def forward(
        self,
        model: nn.Module,
        view: View,
        taps: Sequence[str],
        *,
        teacher: bool = False,
        student_outputs: dict[str, Any] | None = None,
    ) -> Forward:
        """(logits, {tap: feature}, outputs) of one model on one view."""
        logits, features = record(model, view.images, taps)
        return logits, features, {}

    def evaluate(
        self,
        model: nn.Module,
        batches: Iterable[Any],
        autocast: Callable[[], Any] = contextlib.nullcontext,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        progress: bool = False,
        desc: str = "eval",
    ) -> dict[str, float]:
        return evaluate_classifier(model, batches, autocast, reduce, progress, desc)

    def summary(self, last: dict[str, Any], best: dict[str, Any], split: str) -> dict[str, Any]:
        """Extra summary.json fields (classification's summary predates tasks and stays as it was)."""
        return {}


class SegmentationTask(Task):
    """Models return {"out": N×K×H×W, "aux": ...}; labels are N×H×W maps with 255 = ignore; mIoU."""

    name = "segmentation"
    metric = "miou"
    wraps_student = True

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def forward(
        self,
        model: nn.Module,
        view: View,
        taps: Sequence[str],
        *,
        teacher: bool = False,
        student_outputs: dict[str, Any] | None = None,
    ) -> Forward:
        out, features = record(model, view.images, taps)
        outputs = _segmentation_outputs(out)
        features["logits"] = outputs["out"]
        return outputs["out"], features, outputs

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        batches: Iterable[Any],
        autocast: Callable[[], Any] = contextlib.nullcontext,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        progress: bool = False,
        desc: str = "eval",
    ) -> dict[str, float]:
        from datakd.dense_metrics import confusion_matrix, miou

        was_training = model.training
        model.eval()
        conf = None
        loss_sum = torch.zeros(2, dtype=torch.float64)
        try:
            for batch in tqdm(batches, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
                with autocast():
                    out = _segmentation_outputs(model(batch.images))["out"].float()
                labels = batch.labels
                loss = F.cross_entropy(out, labels, ignore_index=self.ignore_index, reduction="sum")
                loss_sum += torch.tensor([loss.item(), float((labels != self.ignore_index).sum())])
                part = confusion_matrix(out.argmax(1), labels, self.num_classes, self.ignore_index)
                conf = part if conf is None else conf + part
        finally:
            model.train(was_training)
        if conf is None:
            return {"miou": float("nan"), "pixel_acc": float("nan"), "loss": float("nan")}
        if reduce is not None:
            conf = reduce(conf.to(_reduce_device()).double()).cpu()
            loss_sum = reduce(loss_sum.to(_reduce_device())).cpu()
        scores = miou(conf)
        return {
            "miou": float(scores["miou"]),
            "pixel_acc": float(scores["pixel_acc"]),
            "loss": float(loss_sum[0] / max(float(loss_sum[1]), 1.0)),
        }

    def summary(self, last: dict[str, Any], best: dict[str, Any], split: str) -> dict[str, Any]:
        return _dense_summary(self.metric, ("miou", "pixel_acc"), last, best, split)


class DetectionTask(Task):
    """torchvision detectors: the student returns its own losses with its intermediates; COCO mAP."""

    name = "detection"
    metric = "map"
    wraps_student = False

    def __init__(
        self, area_scale: float = 1.0, category_ids: Sequence[int] | Mapping[int, int] | None = None
    ) -> None:
        self.area_scale = area_scale
        self.category_ids = category_ids  # label 1..K -> the dataset's category id, for COCO's evaluator

    def forward(
        self,
        model: nn.Module,
        view: View,
        taps: Sequence[str],
        *,
        teacher: bool = False,
        student_outputs: dict[str, Any] | None = None,
    ) -> Forward:
        from datakd.models.detection.forward import run_detector

        inner = unwrap(model)
        inner = getattr(inner, "module", inner)  # under DDP (not used for detectors, but harmless)
        hooked = [t for t in dict.fromkeys(taps) if not t.startswith(FPN_PREFIX) and t != "logits"]
        images = list(view.images)
        recorder = FeatureRecorder(inner, hooked) if hooked else None
        try:
            outputs = run_detector(
                inner,
                images,
                view.annotations,
                losses=not teacher,
                # an R-CNN teacher scores the student's sampled proposals (two-stage det_kd)
                proposals_from=student_outputs if teacher and _two_stage(student_outputs) else None,
            )
            features = dict(recorder.features) if recorder is not None else {}
        finally:
            if recorder is not None:
                recorder.remove()
        for key, value in outputs["features"].items():
            features[f"{FPN_PREFIX}{key}"] = value
        logits = outputs.get("cls_logits", outputs.get("roi_class_logits"))
        if logits is not None:
            features["logits"] = logits
        missing = [t for t in taps if t not in features and t != "logits"]
        if missing:
            levels = ", ".join(f"{FPN_PREFIX}{k}" for k in outputs["features"])
            raise ConfigError(f"taps {missing} are not outputs of this detector; its FPN levels are {levels}")
        return logits, features, outputs

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        batches: Iterable[Any],
        autocast: Callable[[], Any] = contextlib.nullcontext,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        progress: bool = False,
        desc: str = "eval",
    ) -> dict[str, float]:
        from datakd.dense_metrics import coco_map

        inner = unwrap(model)
        inner = getattr(inner, "module", inner)
        was_training = inner.training
        inner.eval()
        truth: list[dict[str, Any]] = []
        predictions: list[dict[str, Any]] = []
        with_masks = False
        try:
            for batch in tqdm(batches, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
                with autocast():
                    detections = inner(list(batch.images))
                for image, target, found in zip(batch.images, batch.annotations, detections):
                    height, width = int(image.shape[-2]), int(image.shape[-1])
                    truth.append(_to_cpu({**target, "height": height, "width": width}))
                    prediction = {"image_id": target["image_id"], **found}
                    if "masks" in found:
                        with_masks = True
                        prediction["masks"] = (found["masks"][:, 0] > 0.5).to(torch.uint8)
                    predictions.append(_to_cpu(prediction))
        finally:
            inner.train(was_training)
        if D.world_size() > 1:
            truth, predictions = _gather(truth), _gather(predictions)
        scores = {
            _metric_key(k): v
            for k, v in coco_map(
                truth, predictions, "bbox", area_scale=self.area_scale, category_ids=self.category_ids
            ).items()
        }
        if with_masks:
            segm = coco_map(
                truth, predictions, "segm", area_scale=self.area_scale, category_ids=self.category_ids
            )
            scores.update({f"mask_{_metric_key(k)}": v for k, v in segm.items()})
        return scores

    def summary(self, last: dict[str, Any], best: dict[str, Any], split: str) -> dict[str, Any]:
        return _dense_summary(self.metric, ("map", "ap50", "ap75"), last, best, split)


def _two_stage(outputs: dict[str, Any] | None) -> bool:
    return bool(outputs) and outputs.get("roi_class_logits") is not None


def _metric_key(name: str) -> str:
    """COCO's AP, AP50, APs ... as metrics.csv keys: map, ap50, aps ..."""
    return "map" if name == "AP" else name.lower()


def _to_cpu(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in item.items()}


def _gather(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    gathered: list[Any] = [None] * D.world_size()
    torch.distributed.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def _reduce_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo takes CPU ones."""
    if D.is_distributed() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _segmentation_outputs(out: Any) -> dict[str, torch.Tensor]:
    if isinstance(out, dict):
        if "out" not in out:
            raise ConfigError(f"a segmentation model must return a dict with 'out'; got keys {sorted(out)}")
        return dict(out)
    if isinstance(out, torch.Tensor) and out.dim() == 4:
        return {"out": out}
    raise ConfigError(
        "a segmentation model must return {'out': N×K×H×W, 'aux': ...} or an N×K×H×W tensor, "
        f"got {type(out).__name__}"
    )


def _dense_summary(
    metric: str, keys: Sequence[str], last: dict[str, Any], best: dict[str, Any], split: str
) -> dict[str, Any]:
    fields: dict[str, Any] = {"task_metric": metric}
    for key in keys:
        fields[f"{key}_last"] = last.get(f"{split}_{key}")
        fields[f"{key}_best"] = best.get(f"{split}_{key}")
    return fields


def make_task(name: str, bundle: Any) -> Task:
    """The task a recipe names, checked against what the dataset provides."""
    if name not in TASKS:
        raise choice_error("task", name, TASKS, ConfigError)
    provided = bundle.extra.get("task", "classification")
    if provided != name:
        raise ConfigError(
            f"task {name!r} cannot train on dataset {bundle.name!r}, a {provided} dataset; "
            f"set task: {provided} or pick a {name} dataset"
        )
    if name == "detection":
        return DetectionTask(bundle.extra.get("area_scale", 1.0), bundle.extra.get("category_ids"))
    if name == "segmentation":
        return SegmentationTask(bundle.num_classes, bundle.extra.get("ignore_index", 255))
    return Task()
