"""The dense data layer: COCO and Cityscapes readers, bad inputs, joint transforms, seeded loaders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from datakd.config import DataConfig
from datakd.data.base import DATASETS
from datakd.data.dense.cityscapes import load_cityscapes
from datakd.data.dense.coco import BOX_TOLERANCE, load_coco
from datakd.data.dense.loaders import DenseEvalLoader, DenseTrainLoader, build_dense_loaders
from datakd.data.dense.transforms import DenseAugment, detection_sample, segmentation_sample, tight_box
from datakd.data.loaders import Normalizer
from datakd.errors import DatakdError

mask_api = pytest.importorskip("pycocotools.mask")
CPU = torch.device("cpu")


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _rect_poly(x1: float, y1: float, x2: float, y2: float) -> list[list[float]]:
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def _hand_written(root: Path) -> dict[str, Any]:
    """A COCO root: gapped category ids (3, 7, 12, listed out of order), a crowd, an empty image,
    polygon, uncompressed RLE and compressed RLE masks."""
    rng = np.random.default_rng(0)
    for split, names in (("train2017", ("a.png", "b.png", "c.png")), ("val2017", ("v.png",))):
        for name in names:
            _png(root / split / name, rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    rle_mask = np.zeros((30, 40), np.uint8, order="F")
    rle_mask[5:15, 20:36] = 1
    compressed = mask_api.encode(np.asfortranarray(rle_mask))
    compressed["counts"] = compressed["counts"].decode()
    # Uncompressed RLE (column-major runs, zeros first): rows 5..14 of columns 20..29.
    uncompressed = {"size": [30, 40], "counts": [30 * 20 + 5, *[10, 20] * 9, 10, 10 * 30 + 15]}
    categories = [{"id": 12, "name": "twelve"}, {"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]
    train = {
        "images": [
            {"id": 5, "file_name": "b.png", "height": 30, "width": 40},
            {"id": 2, "file_name": "a.png", "height": 30, "width": 40},
            {"id": 9, "file_name": "c.png", "height": 30, "width": 40},  # no objects
        ],
        "annotations": [
            {"id": 1, "image_id": 2, "category_id": 7, "bbox": [2, 3, 10, 8], "area": 80, "iscrowd": 0,
             "segmentation": _rect_poly(2, 3, 12, 11)},
            {"id": 2, "image_id": 2, "category_id": 12, "bbox": [20, 5, 16, 10], "area": 160, "iscrowd": 1,
             "segmentation": compressed},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [20, 5, 10, 10], "area": 100, "iscrowd": 0,
             "segmentation": uncompressed},
            # Reaches 0.5 px outside the image: within the 1 px tolerance, clipped.
            {"id": 4, "image_id": 5, "category_id": 12, "bbox": [-0.5, 0, 10.5, 30.4], "area": 300,
             "iscrowd": 0, "segmentation": _rect_poly(0, 0, 10, 30)},
        ],
        "categories": categories,
    }  # fmt: skip
    val = {
        "images": [{"id": 100, "file_name": "v.png", "height": 30, "width": 40}],
        "annotations": [
            {"id": 7, "image_id": 100, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0,
             "segmentation": _rect_poly(1, 1, 6, 6)},
        ],
        "categories": categories,
    }  # fmt: skip
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, data in (("train2017", train), ("val2017", val)):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return {"train": train, "val": val, "rle_mask": rle_mask}


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    _hand_written(tmp_path)
    return tmp_path


def test_coco_reader_maps_gapped_ids_keeps_crowd_and_empty_images(coco_root: Path) -> None:
    split = load_coco(coco_root, "train")
    assert split.category_ids == {1: 3, 2: 7, 3: 12}
    assert split.class_names == ("three", "seven", "twelve")
    assert [r.image_id for r in split.records] == [2, 5, 9]
    a, b, empty = split.records
    assert a.labels.tolist() == [2, 3] and a.iscrowd.tolist() == [0, 1]
    assert a.boxes.dtype == torch.float32
    assert a.boxes[0].tolist() == [2.0, 3.0, 12.0, 11.0]  # xywh -> xyxy
    assert b.boxes[1].tolist() == pytest.approx([0.0, 0.0, 10.0, 30.0])  # clipped after the tolerance
    assert len(empty.labels) == 0 and empty.boxes.shape == (0, 4)
    assert split.labels.tolist() == [0, 0, 0] and len(split.subset(torch.tensor([2, 0]))) == 2
    val = load_coco(coco_root, "val", list(split.category_ids.values()))
    assert val.records[0].labels.tolist() == [1]


def test_coco_masks_decode_polygon_and_both_rle_forms(coco_root: Path) -> None:
    truth = _hand_written(coco_root)
    split = load_coco(coco_root, "train")
    masks_a = split.masks(0)
    assert masks_a.shape == (2, 30, 40) and masks_a.dtype == torch.uint8
    assert torch.equal(tight_box(masks_a[0]), split.records[0].boxes[0])  # polygon
    assert np.array_equal(masks_a[1].numpy(), truth["rle_mask"])  # compressed RLE
    masks_b = split.masks(1)
    assert masks_b[0].sum() == 100 and tight_box(masks_b[0]).tolist() == [20, 5, 30, 15]  # uncompressed
    assert split.masks(2).shape == (0, 30, 40)
    coco = split.to_coco()
    assert {c["id"] for c in coco["categories"]} == {1, 2, 3} and len(coco["annotations"]) == 4


def test_coco_dataset_builder(coco_root: Path) -> None:
    bundle = DATASETS.build("coco", root=str(coco_root), masks=True, scale_range=[0.5, 1.5])
    assert bundle.num_classes == 3 and bundle.default_augment == "flip"
    assert bundle.extra["task"] == "detection" and bundle.extra["category_ids"] == {1: 3, 2: 7, 3: 12}
    assert bundle.extra["loader"]["scale_range"] == (0.5, 1.5) and bundle.image_size == (30, 40)
    assert len(bundle.train) == 3 and len(bundle.test) == 1


def _cityscapes(root: Path, num_classes: int = 19, cities: tuple[str, ...] = ("aachen", "bonn")) -> None:
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for c, city in enumerate(cities):
            stem = f"{city}_{c:06d}_000019"
            _png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                 rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))  # fmt: skip
            label = rng.integers(0, num_classes, (24, 32), dtype=np.uint8)
            label[:2] = 255
            _png(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", label)


def test_cityscapes_reader_pairs_files_and_reads_train_ids(tmp_path: Path) -> None:
    _cityscapes(tmp_path)
    split = load_cityscapes(tmp_path, "train")
    assert len(split) == 2 and [p.parent.name for p in split.images] == ["aachen", "bonn"]
    assert split.label_maps[0].name == "aachen_000000_000019_gtFine_labelTrainIds.png"
    bundle = DATASETS.build("cityscapes", root=str(tmp_path), crop_size=[16, 20])
    assert bundle.num_classes == 19 and bundle.extra["task"] == "segmentation"
    assert bundle.image_size == (24, 32) and bundle.class_names[0] == "road"
    cfg = DataConfig(dataset="cityscapes", batch_size=2, eval_batch_size=2, workers=0)
    train, evaluator = build_dense_loaders(cfg, bundle, CPU, seed=0)
    batch = next(iter(train.epoch(0)))
    assert batch.images.shape == (2, 3, 16, 20) and batch.labels.shape == (2, 16, 20)
    assert batch.labels.dtype == torch.int64
    eval_batch = next(iter(evaluator))
    stored = torch.from_numpy(np.array(Image.open(bundle.test.label_maps[0]))).long()
    assert torch.equal(eval_batch.labels[0], stored)
    (tmp_path / "classes.json").write_text(json.dumps([f"c{i}" for i in range(19)]))
    assert DATASETS.build("cityscapes", root=str(tmp_path)).class_names[3] == "c3"


# ---------------------------------------------------------------- bad inputs: one line, naming the entry


def _edit(root: Path, split: str, change: Any) -> Path:
    path = root / "annotations" / f"instances_{split}2017.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def _set_bbox(bbox: list[float]) -> Any:
    def change(data: dict[str, Any]) -> None:
        data["annotations"][0]["bbox"] = bbox

    return change


def _one_line(exc: pytest.ExceptionInfo[DatakdError], *needles: str) -> None:
    text = str(exc.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        (_set_bbox([2, 3, 0, 8]), ("instances_train2017.json", "annotation #0 (id 1)", "non-positive size")),
        (_set_bbox([2, 3, 10, -1]), ("annotation #0 (id 1)", "width > 0 and height > 0")),
        (_set_bbox([35, 3, 7, 8]), ("annotation #0 (id 1)", "outside its 40×30 image", "x + width <= 40")),
        (_set_bbox([2, -1.5, 5, 5]), ("annotation #0 (id 1)", f"within {BOX_TOLERANCE:g} px")),
        (_set_bbox([2, 3, 10]), ("annotation #0 (id 1)", "valid: [x, y, width, height]")),
        (
            lambda d: d["annotations"][1].update(category_id=4),
            ("annotation #1 (id 2)", "unknown category id 4"),
        ),
        (lambda d: d["annotations"][2].update(image_id=77), ("annotation #2 (id 3)", "image id 77")),
        (lambda d: d["images"][0].pop("height"), ("image #0 (id 5)", "height: int > 0")),
        (lambda d: d["images"][1].update(file_name="gone.png"), ("gone.png", "image id 2", "does not exist")),
        (lambda d: d.pop("categories"), ("instances_train2017.json", "'categories'")),
    ],
)
def test_bad_coco_annotations_fail_in_one_line(
    coco_root: Path, change: Any, needles: tuple[str, ...]
) -> None:
    _edit(coco_root, "train", change)
    with pytest.raises(DatakdError) as exc:
        load_coco(coco_root, "train")
    _one_line(exc, *needles)


def test_degenerate_boxes_can_be_dropped(coco_root: Path) -> None:
    _edit(coco_root, "train", _set_bbox([2, 3, 10, 0]))
    split = load_coco(coco_root, "train", degenerate_boxes="drop")
    assert split.records[0].labels.tolist() == [3]


def test_missing_malformed_and_mismatched_annotation_files(coco_root: Path) -> None:
    path = coco_root / "annotations" / "instances_val2017.json"
    path.write_text('{"images": [}')
    with pytest.raises(DatakdError) as exc:
        DATASETS.build("coco", root=str(coco_root))
    _one_line(exc, "instances_val2017.json", "not valid JSON")
    path.unlink()
    with pytest.raises(DatakdError) as exc:
        load_coco(coco_root, "val")
    _one_line(exc, "instances_val2017.json", "not found")
    _hand_written(coco_root)
    _edit(coco_root, "val", lambda d: d["categories"].append({"id": 90, "name": "extra"}))
    with pytest.raises(DatakdError) as exc:
        DATASETS.build("coco", root=str(coco_root))
    _one_line(exc, "instances_val2017.json", "[3, 7, 12, 90]", "the same categories")


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_fails_in_one_line_from_a_worker(coco_root: Path, workers: int) -> None:
    (coco_root / "train2017" / "a.png").write_bytes(b"not a png")
    bundle = DATASETS.build("coco", root=str(coco_root), cache=False)
    cfg = DataConfig(dataset="coco", batch_size=3, workers=workers)
    train, _ = build_dense_loaders(cfg, bundle, CPU, seed=0)
    with pytest.raises(DatakdError) as exc:
        list(train.epoch(0))
    _one_line(exc, "a.png", "cannot decode")


@pytest.mark.parametrize(
    ("label", "needles"),
    [
        (
            np.zeros((20, 32), np.uint8),
            ("aachen_000000_000019_gtFine_labelTrainIds.png", "32×20", "same size"),
        ),
        (np.full((24, 32), 19, np.uint8), ("labelTrainIds.png", "holds label 19", "valid: 0..18 or 255")),
        (np.zeros((24, 32, 3), np.uint8), ("labelTrainIds.png", "3 channels", "single-channel")),
    ],
)
def test_bad_label_maps_fail_in_one_line(tmp_path: Path, label: np.ndarray, needles: tuple[str, ...]) -> None:
    _cityscapes(tmp_path)
    _png(tmp_path / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelTrainIds.png", label)
    bundle = DATASETS.build("cityscapes", root=str(tmp_path), cache=False)
    train, _ = build_dense_loaders(DataConfig(batch_size=2, image_size=16, workers=0), bundle, CPU, seed=0)
    with pytest.raises(DatakdError) as exc:
        list(train.epoch(0))
    _one_line(exc, *needles)


def test_missing_label_map_fails_at_load(tmp_path: Path) -> None:
    _cityscapes(tmp_path)
    (tmp_path / "gtFine" / "val" / "bonn" / "bonn_000001_000019_gtFine_labelTrainIds.png").unlink()
    with pytest.raises(DatakdError) as exc:
        DATASETS.build("cityscapes", root=str(tmp_path))
    _one_line(exc, "bonn_000001_000019_gtFine_labelTrainIds.png", "does not exist")


# ---------------------------------------------------------------- joint transforms


def _blobs(generator: torch.Generator, n: int, height: int, width: int) -> torch.Tensor:
    """n random ellipses as uint8 masks (non-rectangular, so a wrong flip or crop shows up in the box)."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    masks = []
    for _ in range(n):
        cy, cx = torch.rand(2, generator=generator) * torch.tensor([height, width])
        ry, rx = 3 + torch.rand(2, generator=generator) * torch.tensor([height / 4, width / 4])
        masks.append((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).to(torch.uint8))
    return torch.stack(masks)


@pytest.mark.parametrize(
    "spec",
    [
        DenseAugment(flip=True),
        DenseAugment(flip=True, scale_range=(0.5, 1.7)),
        DenseAugment(flip=True, scale_range=(0.8, 1.3), crop_size=(40, 50)),
        DenseAugment(random=False, crop_size=(33, 41)),
    ],
)
def test_detection_transform_keeps_boxes_on_their_masks(spec: DenseAugment) -> None:
    for seed in range(12):
        generator = torch.Generator().manual_seed(seed)
        masks = _blobs(generator, 5, 60, 80)
        masks = masks[masks.flatten(1).any(1).bool()]
        boxes = torch.stack([tight_box(m) for m in masks])
        image = torch.zeros(3, 60, 80, dtype=torch.uint8)
        image[0] = masks.max(0).values * 200  # the objects are visible in the image too
        n = len(masks)
        target = {"boxes": boxes, "labels": torch.arange(1, n + 1), "iscrowd": torch.zeros(n).long(),
                  "area": masks.flatten(1).sum(1).float(), "masks": masks}  # fmt: skip
        out_image, out = detection_sample(image, target, spec, torch.Generator().manual_seed(100 + seed))
        assert out_image.shape[0] == 3 and out["masks"].shape[1:] == out_image.shape[1:]
        assert len(out["boxes"]) == len(out["labels"]) == len(out["iscrowd"]) == len(out["masks"])
        for k in range(len(out["boxes"])):
            tight = tight_box(out["masks"][k])
            assert torch.allclose(out["boxes"][k], tight, atol=1.0), (out["boxes"][k], tight)
        assert torch.equal(out["area"], out["masks"].flatten(1).sum(1).float())
        if len(out["masks"]):  # the image moved with the masks
            assert (out_image[0][out["masks"].amax(0).bool()] > 0).float().mean() > 0.9


def test_flip_happens_for_about_half_the_samples_and_mirrors_everything() -> None:
    masks = _blobs(torch.Generator().manual_seed(0), 3, 30, 40)
    image = (masks.max(0).values * 255).expand(3, -1, -1).contiguous()
    boxes = torch.stack([tight_box(m) for m in masks])
    target = {"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "iscrowd": torch.zeros(3).long(),
              "area": torch.ones(3), "masks": masks}  # fmt: skip
    flips = 0
    for seed in range(40):
        out_image, out = detection_sample(image, target, DenseAugment(), torch.Generator().manual_seed(seed))
        flipped = not torch.equal(out_image, image)
        expected = masks.flip(-1) if flipped else masks
        assert torch.equal(out["masks"], expected) and torch.equal(
            out_image, image.flip(-1) if flipped else image
        )
        flips += flipped
    assert 10 < flips < 30


def test_detection_transform_drops_boxes_that_degenerate() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [70.0, 50.0, 80.0, 60.0]])
    target = {"boxes": boxes, "labels": torch.tensor([1, 2]), "iscrowd": torch.zeros(2, dtype=torch.int64),
              "area": torch.tensor([100.0, 100.0])}  # fmt: skip
    spec = DenseAugment(random=False, crop_size=(30, 30))  # a central crop that misses both boxes
    image = torch.zeros(3, 60, 80, dtype=torch.uint8)
    _, out = detection_sample(image, target, spec, None)
    assert len(out["boxes"]) == 0 and len(out["labels"]) == 0 and len(out["area"]) == 0
    spec = DenseAugment(random=False, crop_size=(60, 75))  # columns 3..77: box 2 clipped at the edge
    _, out = detection_sample(image, target, spec, None)
    assert out["labels"].tolist() == [1, 2]
    assert out["boxes"].tolist() == [[0.0, 0.0, 7.0, 10.0], [67.0, 50.0, 75.0, 60.0]]
    spec = DenseAugment(random=False, crop_size=(60, 71))  # columns 5..75: box 2 keeps 6 px
    _, out = detection_sample(image, target, spec, None)
    assert out["boxes"][1].tolist() == [65.0, 50.0, 71.0, 60.0]


@pytest.mark.parametrize(
    "spec",
    [
        DenseAugment(crop_size=(24, 24)),
        DenseAugment(crop_size=(48, 70)),  # larger than the image: padded with 255
        DenseAugment(random=False, crop_size=(20, 30)),
    ],
)
def test_segmentation_transform_moves_label_map_with_image(spec: DenseAugment) -> None:
    generator = torch.Generator().manual_seed(3)
    label = torch.randint(0, 19, (40, 50), generator=generator, dtype=torch.uint8)
    image = torch.stack([label * 10, label, torch.full_like(label, 7)])  # channel 0 encodes the label
    for seed in range(6):
        out_image, out_label = segmentation_sample(image, label, spec, torch.Generator().manual_seed(seed))
        assert out_label.shape == spec.crop_size and out_image.shape[1:] == spec.crop_size
        real = out_label != 255
        assert torch.equal(out_image[0][real], out_label[real] * 10)
        assert (out_image[:, ~real] == 0).all()
        assert real.sum() == min(40, spec.crop_size[0]) * min(50, spec.crop_size[1])


def test_segmentation_scale_jitter_resizes_labels_by_nearest() -> None:
    label = torch.zeros(40, 50, dtype=torch.uint8)
    label[:, 25:] = 3
    image = (label * 50).expand(3, -1, -1).contiguous()
    spec = DenseAugment(flip=False, scale_range=(1.5, 1.5), crop_size=(60, 75))
    out_image, out_label = segmentation_sample(image, label, spec, torch.Generator().manual_seed(0))
    assert set(out_label.unique().tolist()) <= {0, 3}
    agree = (out_image[0] > 75) == (out_label == 3)
    assert agree.float().mean() > 0.97


# ---------------------------------------------------------------- loaders


def _synthetic_coco(root: Path, n: int = 10, crowd_every: int = 3) -> None:
    """n images of 36×44 with 1-3 rectangles each (polygons), every `crowd_every`-th object a crowd."""
    rng = np.random.default_rng(5)
    images, annotations = [], []
    for split, count in (("train2017", n), ("val2017", 4)):
        images, annotations = [], []
        for i in range(count):
            name = f"{i:012d}.png"
            _png(root / split / name, rng.integers(0, 255, (36, 44, 3), dtype=np.uint8))
            images.append({"id": i + 1, "file_name": name, "height": 36, "width": 44})
            for _ in range(int(rng.integers(1, 4))):
                x, y = (int(v) for v in rng.integers(0, 30, 2))
                w, h = (int(v) for v in rng.integers(3, 13, 2))
                w, h = min(w, 44 - x), min(h, 36 - y)
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 4,
                                    "bbox": [x, y, w, h], "area": w * h,
                                    "iscrowd": int(len(annotations) % crowd_every == 0),
                                    "segmentation": _rect_poly(x, y, x + w, y + h)})  # fmt: skip
        data = {"images": images, "annotations": annotations, "categories": [{"id": 4, "name": "box"}]}
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


@pytest.fixture
def synthetic_bundle(tmp_path: Path) -> Any:
    _synthetic_coco(tmp_path)
    return DATASETS.build("coco", root=str(tmp_path), masks=True, scale_range=[0.75, 1.25], crop_size=32)


def _fingerprint(batch: Any) -> list[Any]:
    out = [batch.indices.tolist()]
    for image, target in zip(batch.images, batch.annotations):
        out.append(
            (image.sum().item(), tuple(image.shape), target["boxes"].tolist(), target["masks"].sum().item())
        )
    return out


def test_detection_loader_is_deterministic_resumes_and_leaves_global_rng(synthetic_bundle: Any) -> None:
    cfg = DataConfig(dataset="coco", batch_size=4, workers=0)
    train, _ = build_dense_loaders(cfg, synthetic_bundle, CPU, seed=7)
    assert len(train) == 3
    state = torch.random.get_rng_state()
    full = [_fingerprint(b) for b in train.epoch(2)]
    assert torch.equal(state, torch.random.get_rng_state())
    again, _ = build_dense_loaders(cfg, synthetic_bundle, CPU, seed=7)
    assert [_fingerprint(b) for b in again.epoch(2)] == full
    resumed = [_fingerprint(b) for b in again.epoch(2, start_step=1)]
    assert resumed == full[1:]
    assert [_fingerprint(b) for b in again.epoch(3)] != full  # a new epoch: new order and draws
    other, _ = build_dense_loaders(cfg, synthetic_bundle, CPU, seed=8)
    assert [_fingerprint(b) for b in other.epoch(2)] != full
    workers, _ = build_dense_loaders(DataConfig(batch_size=4, workers=2), synthetic_bundle, CPU, seed=7)
    state = torch.random.get_rng_state()
    assert [_fingerprint(b) for b in workers.epoch(2)] == full  # independent of the worker count
    assert torch.equal(state, torch.random.get_rng_state())


def test_resume_does_not_decode_skipped_batches(synthetic_bundle: Any) -> None:
    train, _ = build_dense_loaders(DataConfig(batch_size=4, workers=0), synthetic_bundle, CPU, seed=0)
    train.cache = False
    seen: list[int] = []
    decode = train.dataset.decode

    def counting(index: int) -> Any:
        seen.append(index)
        return decode(index)

    train.dataset.decode = counting  # type: ignore[method-assign]
    list(train.epoch(0, start_step=2))
    assert len(seen) == 2  # only the last batch (10 images, batch 4: 4 + 4 + 2)


def test_detection_batches_follow_the_contract(synthetic_bundle: Any) -> None:
    cfg = DataConfig(dataset="coco", batch_size=10, eval_batch_size=3, workers=0)
    train, evaluator = build_dense_loaders(cfg, synthetic_bundle, CPU, seed=0)
    batch = next(iter(train.epoch(0)))
    assert batch.labels is None and len(batch.images) == len(batch.annotations) == len(batch) == 10
    for image, target in zip(batch.images, batch.annotations):
        assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
        assert max(image.shape[1:]) <= 32 * 1.0 and image.shape[0] == 3
        assert target["iscrowd"].sum() == 0  # crowds never reach training
        assert target["labels"].dtype == torch.int64 and (target["labels"] == 1).all()
        assert target["masks"].dtype == torch.uint8 and target["image_id"].dim() == 0
    records = evaluator.split.records
    crowds = sum(int(r.iscrowd.sum()) for r in records)
    seen_crowds, count = 0, 0
    for eval_batch in evaluator:
        for index, image, target in zip(
            eval_batch.indices.tolist(), eval_batch.images, eval_batch.annotations
        ):
            record = records[index]
            assert torch.equal(target["boxes"], record.boxes)  # original coordinates, nothing dropped
            assert image.shape == (3, record.height, record.width)
            assert int(target["image_id"]) == record.image_id
            seen_crowds += int(target["iscrowd"].sum())
            count += 1
    assert count == len(records) and seen_crowds == crowds
    assert len(evaluator) == 2


def test_ddp_shards_split_the_global_batch(synthetic_bundle: Any) -> None:
    cfg = DataConfig(dataset="coco", batch_size=4, workers=0)
    single, _ = build_dense_loaders(cfg, synthetic_bundle, CPU, seed=3)
    single.drop_last = True  # what a DDP loader does, so the step counts match
    rank0, eval0 = build_dense_loaders(cfg, synthetic_bundle, CPU, seed=3, rank=0, world=2)
    rank1, eval1 = build_dense_loaders(cfg, synthetic_bundle, CPU, seed=3, rank=1, world=2)
    assert len(rank0) == len(rank1) == len(single) == 2
    for whole, a, b in zip(single.epoch(1), rank0.epoch(1), rank1.epoch(1)):
        assert _fingerprint(whole)[1:] == _fingerprint(a)[1:] + _fingerprint(b)[1:]
        assert whole.indices.tolist() == a.indices.tolist() + b.indices.tolist()
    shards = [i for batch in eval0 for i in batch.indices.tolist()] + [
        i for b in eval1 for i in b.indices.tolist()
    ]
    assert sorted(shards) == list(range(len(synthetic_bundle.test)))


def test_cache_gives_the_same_batches(synthetic_bundle: Any) -> None:
    normalizer = Normalizer((0.5,) * 3, (0.25,) * 3, CPU)
    spec = DenseAugment(scale_range=(0.5, 1.0))
    cached = DenseTrainLoader(synthetic_bundle.train, 5, normalizer, CPU, 1, spec, masks=True, cache=True)
    plain = DenseTrainLoader(synthetic_bundle.train, 5, normalizer, CPU, 1, spec, masks=True, cache=False)
    assert [_fingerprint(b) for b in cached.epoch(0)] == [_fingerprint(b) for b in plain.epoch(0)]
    assert cached.dataset.cache is not None and plain.dataset.cache is None
    evaluator = DenseEvalLoader(synthetic_bundle.test, 2, normalizer, CPU, cache=True)
    assert sum(len(b) for b in evaluator) == 4


def test_segmentation_loader_resumes_and_pads_with_ignore(tmp_path: Path) -> None:
    _cityscapes(tmp_path, cities=("a", "b", "c", "d", "e"))
    bundle = DATASETS.build("cityscapes", root=str(tmp_path), scale_range=[0.5, 2.0])
    cfg = DataConfig(dataset="cityscapes", batch_size=2, image_size=40, workers=0)
    train, evaluator = build_dense_loaders(cfg, bundle, CPU, seed=0)
    state = torch.random.get_rng_state()
    full = [(b.images.clone(), b.labels.clone()) for b in train.epoch(4)]
    assert torch.equal(state, torch.random.get_rng_state())
    assert len(full) == 3 and full[0][0].shape == (2, 3, 40, 40) and full[-1][0].shape == (1, 3, 40, 40)
    resumed = list(train.epoch(4, start_step=2))
    assert torch.equal(resumed[0].images, full[2][0]) and torch.equal(resumed[0].labels, full[2][1])
    assert any((labels == 255).any() for _, labels in full)
    for batch in evaluator:
        assert batch.images.shape[-2:] == (24, 32) and batch.labels.dtype == torch.int64


def test_dense_options_and_augment_are_checked(coco_root: Path) -> None:
    with pytest.raises(DatakdError, match="scale_range"):
        DATASETS.build("coco", root=str(coco_root), scale_range=[2, 1])
    with pytest.raises(DatakdError, match="crop_size"):
        DATASETS.build("coco", root=str(coco_root), crop_size=[0, 4])
    with pytest.raises(DatakdError, match="crop_sizes"):
        DATASETS.build("coco", root=str(coco_root), crop_sizes=4)
    bundle = DATASETS.build("coco", root=str(coco_root))
    with pytest.raises(DatakdError, match=r"data\.augment"):
        build_dense_loaders(DataConfig(augment="imagenet"), bundle, CPU, seed=0)
    with pytest.raises(DatakdError, match=r"data\.loader=device"):
        build_dense_loaders(DataConfig(loader="device"), bundle, CPU, seed=0)
    train, _ = build_dense_loaders(DataConfig(augment="none", batch_size=3, workers=0), bundle, CPU, seed=0)
    batch = next(iter(train.epoch(1)))
    records = bundle.train.records
    for index, target in zip(batch.indices.tolist(), batch.annotations):
        keep = records[index].iscrowd == 0
        assert torch.equal(target["boxes"], records[index].boxes[keep])  # augment none: untouched
