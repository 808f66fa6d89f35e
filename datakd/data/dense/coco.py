"""COCO 2017 instances: `root/{train,val}2017/` images and `root/annotations/instances_{split}2017.json`.

Category ids (COCO's 1..90 have gaps) map to contiguous labels 1..K in ascending id order, taken from the
train file and required to be identical in val, so label 0 stays free for a detector's background. Boxes
are converted from COCO's [x, y, w, h] to xyxy pixels; a box must have positive size and lie inside its
image up to a tolerance of `BOX_TOLERANCE` (1 px, for annotation rounding), and is then clipped to the
image. Crowd objects and images without objects are kept (the training loader drops crowds, evaluation
treats them as ignore regions). Masks (polygons or RLE) are decoded with pycocotools only on demand.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datakd.data.base import DatasetBundle, register_dataset, require_root
from datakd.errors import ConfigError, DatakdError, choice_error

SPLITS = {"train": "train2017", "val": "val2017"}
# How far (pixels) a box may reach outside its image before it is an error; it is clipped afterwards.
BOX_TOLERANCE = 1.0
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEGENERATE = ("error", "drop")


@dataclass
class DetectionRecord:
    """One image and its objects: boxes xyxy float32 n×4, labels 1..K, iscrowd, area, raw segmentations."""

    image_id: int
    path: Path
    height: int
    width: int
    boxes: torch.Tensor
    labels: torch.Tensor
    iscrowd: torch.Tensor
    area: torch.Tensor
    segmentation: list[Any] = field(default_factory=list)


@dataclass
class DetectionSplit:
    """A detection split: records, the label -> COCO category id map and class names.

    `labels` is a zeros vector (one per image) so the generic subset/validation-split code, which
    stratifies by `labels`, works unchanged (it then draws a plain seeded random subset).
    """

    records: list[DetectionRecord]
    category_ids: dict[int, int]
    class_names: tuple[str, ...]
    annotation_file: Path | None = None

    @property
    def labels(self) -> torch.Tensor:
        return torch.zeros(len(self.records), dtype=torch.int64)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, indices: torch.Tensor) -> DetectionSplit:
        return DetectionSplit(
            [self.records[i] for i in indices.tolist()],
            self.category_ids,
            self.class_names,
            self.annotation_file,
        )

    def masks(self, index: int) -> torch.Tensor:
        """uint8 n×H×W instance masks of record `index` (polygons and RLE, via pycocotools)."""
        record = self.records[index]
        return decode_masks(record.segmentation, record.height, record.width, record.path)

    def to_coco(self) -> dict[str, Any]:
        """The split as a COCO ground-truth dict with contiguous category ids (for COCOeval)."""
        images, annotations = [], []
        for record in self.records:
            images.append(
                {
                    "id": record.image_id,
                    "file_name": record.path.name,
                    "height": record.height,
                    "width": record.width,
                }
            )
            for k in range(len(record.labels)):
                x1, y1, x2, y2 = record.boxes[k].tolist()
                ann = {
                    "id": len(annotations) + 1,
                    "image_id": record.image_id,
                    "category_id": int(record.labels[k]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(record.area[k]),
                    "iscrowd": int(record.iscrowd[k]),
                }
                if record.segmentation and record.segmentation[k] is not None:
                    ann["segmentation"] = record.segmentation[k]
                annotations.append(ann)
        categories = [
            {"id": label, "name": self.class_names[label - 1]} for label in sorted(self.category_ids)
        ]
        return {"images": images, "annotations": annotations, "categories": categories}


def _mask_api() -> Any:
    try:
        from pycocotools import mask
    except ImportError:
        raise DatakdError(
            "decoding COCO masks needs pycocotools: pip install 'datakd[detection]' (or pycocotools)"
        ) from None
    return mask


def decode_masks(segmentations: list[Any], height: int, width: int, where: Path | str = "") -> torch.Tensor:
    """Polygon lists, uncompressed RLE (counts list) and compressed RLE (counts str) -> uint8 n×H×W."""
    if not segmentations:
        return torch.zeros((0, height, width), dtype=torch.uint8)
    api = _mask_api()
    out = np.zeros((len(segmentations), height, width), dtype=np.uint8)
    with warnings.catch_warnings():
        # pycocotools 2.0 under numpy 2 warns about its own __array__ on every decode; harmless here.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
        for k, segm in enumerate(segmentations):
            _decode_one(api, segm, height, width, where, k, out)
    return torch.from_numpy(out)


def _decode_one(
    api: Any, segm: Any, height: int, width: int, where: Path | str, k: int, out: np.ndarray
) -> None:
    """Decode object `k`'s segmentation into out[k] (left empty when the object has none)."""
    if segm is None or (isinstance(segm, list) and not segm):
        return
    try:
        if isinstance(segm, list):  # polygons: one object may have several parts
            rle = api.merge(api.frPyObjects([list(map(float, p)) for p in segm], height, width))
        elif isinstance(segm.get("counts"), list):
            rle = api.frPyObjects(segm, height, width)
        else:
            counts = segm["counts"]
            rle = {"size": segm["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
        out[k] = api.decode(rle)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise DatakdError(
            f"cannot decode segmentation {k} of image {str(where)!r} ({exc}); valid: a list of "
            "polygons [x1, y1, x2, y2, ...] or an RLE dict {size: [h, w], counts: ...}"
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatakdError(
            f"COCO annotation file {str(path)!r} not found; valid: root/annotations/instances_{{train,val}}"
            "2017.json next to root/train2017 and root/val2017"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatakdError(f"COCO annotation file {str(path)!r} is not valid JSON ({reason})") from None
    if not isinstance(data, dict):
        raise DatakdError(
            f"COCO annotation file {str(path)!r} holds a {type(data).__name__}; valid: an object with "
            "'images', 'annotations' and 'categories'"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatakdError(
                f"COCO annotation file {str(path)!r} has no list {key!r}; valid: an object with "
                "'images', 'annotations' and 'categories' lists"
            )
    return data


def _entry_error(path: Path, kind: str, index: int, entry: Any, problem: str) -> DatakdError:
    ident = entry.get("id") if isinstance(entry, dict) else None
    where = f"{kind} #{index}" + (f" (id {ident})" if ident is not None else "")
    return DatakdError(f"COCO annotation file {str(path)!r}: {where} {problem}")


def read_categories(path: Path, data: dict[str, Any]) -> tuple[list[int], list[str]]:
    """Category ids (sorted ascending) and their names."""
    found: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or isinstance(cat["id"], bool):
            raise _entry_error(path, "category", i, cat, "needs an integer 'id'; valid: {id: int, name: str}")
        if cat["id"] in found:
            raise _entry_error(path, "category", i, cat, "repeats an id; valid: unique category ids")
        found[cat["id"]] = str(cat.get("name", cat["id"]))
    if not found:
        raise DatakdError(f"COCO annotation file {str(path)!r} lists no categories; valid: at least one")
    ids = sorted(found)
    return ids, [found[i] for i in ids]


def _image_table(path: Path, data: dict[str, Any], image_dir: Path) -> dict[int, tuple[str, int, int]]:
    table: dict[int, tuple[str, int, int]] = {}
    for i, img in enumerate(data["images"]):
        ok = isinstance(img, dict) and isinstance(img.get("id"), int)
        ok = (
            ok
            and isinstance(img.get("file_name"), str)
            and all(isinstance(img.get(k), int) and img[k] > 0 for k in ("height", "width"))
        )
        if not ok:
            raise _entry_error(
                path,
                "image",
                i,
                img,
                "is malformed; valid: {id: int, file_name: str, height: int > 0, width: int > 0}",
            )
        if img["id"] in table:
            raise _entry_error(path, "image", i, img, "repeats an image id; valid: unique image ids")
        table[img["id"]] = (img["file_name"], img["height"], img["width"])
    present = set(os.listdir(image_dir)) if image_dir.is_dir() else set()
    for image_id, (name, _, _) in table.items():
        if name not in present and not (image_dir / name).is_file():
            raise DatakdError(
                f"COCO image {str(image_dir / name)!r} (image id {image_id} in {str(path)!r}) does not "
                f"exist; valid: every file_name of the annotation file present under {str(image_dir)!r}"
            )
    return table


def load_coco(
    root: str | Path,
    split: str,
    category_ids: list[int] | None = None,
    degenerate_boxes: str = "error",
) -> DetectionSplit:
    """Read one split of a COCO 2017 root; `category_ids` (the train split's) are checked identical."""
    if split not in SPLITS:
        raise choice_error("COCO split", split, SPLITS)
    if degenerate_boxes not in DEGENERATE:
        raise choice_error("coco option degenerate_boxes", degenerate_boxes, DEGENERATE)
    root = Path(root)
    path = root / "annotations" / f"instances_{SPLITS[split]}.json"
    image_dir = root / SPLITS[split]
    data = _read_json(path)
    ids, names = read_categories(path, data)
    if category_ids is not None and ids != list(category_ids):
        raise DatakdError(
            f"COCO annotation file {str(path)!r} has category ids {ids}, the train split "
            f"{list(category_ids)}; valid: the same categories in every split"
        )
    contiguous = {cat: label for label, cat in enumerate(ids, start=1)}
    table = _image_table(path, data, image_dir)
    per_image = _parse_annotations(path, data["annotations"], table, contiguous, degenerate_boxes)
    records = []
    for image_id, (name, height, width) in table.items():
        boxes, labels, crowd, area, segm = per_image.get(image_id, _EMPTY)
        records.append(
            DetectionRecord(
                image_id=image_id,
                path=image_dir / name,
                height=height,
                width=width,
                boxes=torch.from_numpy(boxes),
                labels=torch.from_numpy(labels),
                iscrowd=torch.from_numpy(crowd),
                area=torch.from_numpy(area),
                segmentation=segm,
            )
        )
    records.sort(key=lambda r: r.image_id)
    return DetectionSplit(records, {label: cat for cat, label in contiguous.items()}, tuple(names), path)


_EMPTY = (
    np.zeros((0, 4), np.float32),
    np.zeros(0, np.int64),
    np.zeros(0, np.int64),
    np.zeros(0, np.float32),
    [],
)


def _parse_annotations(
    path: Path,
    annotations: list[Any],
    table: dict[int, tuple[str, int, int]],
    contiguous: dict[int, int],
    degenerate_boxes: str,
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[Any]]]:
    """Validate every annotation (vectorised where possible) and group them by image."""
    n = len(annotations)
    boxes = np.zeros((n, 4), np.float64)
    image_ids = np.zeros(n, np.int64)
    labels = np.zeros(n, np.int64)
    crowd = np.zeros(n, np.int64)
    area = np.zeros(n, np.float32)
    sizes = np.zeros((n, 2), np.float64)
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise _entry_error(path, "annotation", i, ann, "is not an object; valid: {image_id, bbox, ...}")
        bbox = ann.get("bbox")
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
        ):
            raise _entry_error(path, "annotation", i, ann, f"has bbox {bbox!r}; valid: [x, y, width, height]")
        info = table.get(ann.get("image_id"))  # type: ignore[arg-type]
        if info is None:
            raise _entry_error(
                path, "annotation", i, ann, f"refers to image id {ann.get('image_id')!r}, not in 'images'"
            )
        cat = ann.get("category_id")
        if cat not in contiguous:
            raise _entry_error(
                path,
                "annotation",
                i,
                ann,
                f"has unknown category id {cat!r}; valid: {sorted(contiguous)}",
            )
        area_value = ann.get("area", bbox[2] * bbox[3])
        if not isinstance(area_value, int | float) or isinstance(area_value, bool):
            raise _entry_error(path, "annotation", i, ann, f"has area {area_value!r}; valid: a number")
        boxes[i] = bbox
        image_ids[i] = ann["image_id"]
        labels[i] = contiguous[cat]
        crowd[i] = int(bool(ann.get("iscrowd", 0)))
        area[i] = float(area_value)
        sizes[i] = (info[1], info[2])
    keep = np.ones(n, dtype=bool)
    degenerate = (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)
    if degenerate.any():
        if degenerate_boxes == "error":
            i = int(np.flatnonzero(degenerate)[0])
            raise _entry_error(
                path,
                "annotation",
                i,
                annotations[i],
                f"has bbox {annotations[i]['bbox']} of non-positive size ({int(degenerate.sum())} such "
                "boxes); valid: width > 0 and height > 0, or data.options.degenerate_boxes=drop to skip them",
            )
        keep &= ~degenerate
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    outside = (x1 < -BOX_TOLERANCE) | (y1 < -BOX_TOLERANCE)
    outside |= (x2 > sizes[:, 1] + BOX_TOLERANCE) | (y2 > sizes[:, 0] + BOX_TOLERANCE)
    outside &= keep
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        h, w = int(sizes[i, 0]), int(sizes[i, 1])
        raise _entry_error(
            path,
            "annotation",
            i,
            annotations[i],
            f"has bbox {annotations[i]['bbox']} outside its {w}×{h} image (image id {image_ids[i]}); valid: "
            f"0 <= x, y and x + width <= {w}, y + height <= {h}, within {BOX_TOLERANCE:g} px",
        )
    height, width = sizes[:, 0], sizes[:, 1]
    xyxy = np.stack(
        [np.clip(x1, 0, width), np.clip(y1, 0, height), np.clip(x2, 0, width), np.clip(y2, 0, height)], axis=1
    ).astype(np.float32)
    kept = np.flatnonzero(keep)
    order = kept[np.argsort(image_ids[kept], kind="stable")]
    grouped: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[Any]]] = {}
    if len(order) == 0:
        return grouped
    starts = np.flatnonzero(np.r_[True, image_ids[order][1:] != image_ids[order][:-1]])
    ends = np.r_[starts[1:], len(order)]
    for s, e in zip(starts.tolist(), ends.tolist()):
        idx = order[s:e]
        grouped[int(image_ids[idx[0]])] = (
            xyxy[idx],
            labels[idx],
            crowd[idx],
            area[idx],
            [annotations[j].get("segmentation") for j in idx.tolist()],
        )
    return grouped


def most_common_size(records: list[DetectionRecord]) -> tuple[int, int]:
    """The commonest (height, width) of a split: the bundle's nominal image size."""
    if not records:
        return (0, 0)
    return Counter((r.height, r.width) for r in records).most_common(1)[0][0]


def loader_options(**options: Any) -> dict[str, Any]:
    """The loader options a dense dataset builder accepts, validated here so a typo fails at build."""
    from datakd.data.dense.transforms import parse_scale_range, parse_size

    return {
        "scale_range": parse_scale_range(options.get("scale_range")),
        "crop_size": parse_size(options.get("crop_size"), "crop_size"),
        "cache": options.get("cache"),
    }


@register_dataset("coco")
def coco(
    root: str | None = None,
    download: bool = False,
    masks: bool = False,
    degenerate_boxes: str = "error",
    scale_range: list[float] | None = None,
    crop_size: int | list[int] | None = None,
    cache: bool | None = None,
    area_scale: float = 1.0,
) -> DatasetBundle:
    """COCO 2017 instances (train2017 / val2017 as test); K contiguous labels 1..K, masks on request.

    `area_scale` multiplies COCO's small/medium/large area limits (32², 96² px) in evaluation, for images
    much smaller than COCO's (the 96-px test bed uses 0.25: limits at 16² and 48² px).
    """
    if not (isinstance(area_scale, int | float) and not isinstance(area_scale, bool) and area_scale > 0):
        raise ConfigError(f"coco option area_scale must be a positive number, got {area_scale!r}")
    if download:
        raise DatakdError("coco is read from a local COCO 2017 root; download it and pass --data-root DIR")
    path = require_root("coco", root)
    train = load_coco(path, "train", degenerate_boxes=degenerate_boxes)
    test = load_coco(path, "val", list(train.category_ids.values()), degenerate_boxes)
    return DatasetBundle(
        name="coco",
        train=train,  # type: ignore[arg-type]
        test=test,  # type: ignore[arg-type]
        num_classes=train.num_classes,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=train.class_names,
        image_size=most_common_size(train.records),
        default_augment="flip",
        attribution="COCO 2017 (cocodataset.org): annotations CC BY 4.0, images under Flickr terms",
        extra={
            "task": "detection",
            "category_ids": dict(train.category_ids),
            "area_scale": float(area_scale),
            "masks": bool(masks),
            "loader": loader_options(scale_range=scale_range, crop_size=crop_size, cache=cache),
        },
    )
