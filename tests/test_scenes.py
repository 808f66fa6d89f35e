"""The scenes test bed: deterministic, both layouts readable, tight boxes, half-visible objects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datakd.cli import main
from datakd.data.base import DATASETS
from datakd.data.dense.cityscapes import load_cityscapes
from datakd.data.dense.coco import load_coco
from datakd.data.dense.scenes import (
    BACKGROUND,
    CATEGORY_IDS,
    MIN_VISIBLE,
    generate_scenes,
    render_canvas,
    rle_counts,
)
from datakd.data.dense.transforms import tight_box
from datakd.data.fashion_mnist import read_split
from datakd.errors import DatakdError

pytest.importorskip("pycocotools")
TRAIN, VAL, SIZE = 8, 4, 64


@pytest.fixture(scope="module")
def scenes(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scenes") / "bed"
    generate_scenes(fmnist_root, out, train=TRAIN, val=VAL, size=SIZE, seed=3)
    return out


def test_same_seed_same_bytes_other_seed_other_bytes(
    scenes: Path, fmnist_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["data", "scenes", "--source", str(fmnist_root), "--train", str(TRAIN), "--val", str(VAL)]
    assert main([*args, "--out", str(tmp_path / "again"), "--size", str(SIZE), "--seed", "3"]) == 0
    assert "8 train / 4 val canvases" in capsys.readouterr().out
    manifest = (scenes / "MANIFEST.sha256").read_text()
    assert (tmp_path / "again" / "MANIFEST.sha256").read_text() == manifest
    lines = manifest.splitlines()
    listed = {line.split("  ", 1)[1] for line in lines}
    on_disk = {p.relative_to(scenes).as_posix() for p in scenes.rglob("*") if p.is_file()}
    assert listed == on_disk - {"MANIFEST.sha256"} and len(lines) == 3 * (TRAIN + VAL) + 4
    generate_scenes(fmnist_root, tmp_path / "other", train=TRAIN, val=VAL, size=SIZE, seed=4)
    assert (tmp_path / "other" / "MANIFEST.sha256").read_text() != manifest
    # Writing into a used folder needs --overwrite; a folder with foreign files is refused.
    assert main([*args, "--out", str(tmp_path / "again"), "--size", str(SIZE)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DatakdError, match=r"notes\.txt"):
        generate_scenes(fmnist_root, tmp_path / "mine", train=1, val=1, size=SIZE, overwrite=True)


def test_coco_layout_reads_back_with_gapped_ids_and_tight_boxes(scenes: Path) -> None:
    raw = json.loads((scenes / "annotations" / "instances_train2017.json").read_text())
    assert [c["id"] for c in raw["categories"]] == list(CATEGORY_IDS)
    split = load_coco(scenes, "train")
    assert split.category_ids == dict(enumerate(CATEGORY_IDS, start=1)) and len(split) == TRAIN
    for index, record in enumerate(split.records):
        assert 2 <= len(record.labels) <= 8 and record.iscrowd.sum() == 0
        assert record.labels.min() >= 1 and record.labels.max() <= 10
        masks = split.masks(index)
        union = torch.zeros(SIZE, SIZE, dtype=torch.int64)
        for k, mask in enumerate(masks):
            assert torch.equal(record.boxes[k], tight_box(mask))  # tight around the visible mask
            assert record.area[k] == mask.sum()
            side = max(
                float(record.boxes[k, 2] - record.boxes[k, 0]), float(record.boxes[k, 3] - record.boxes[k, 1])
            )
            assert side <= SIZE / 2 + 1
            union += mask
        assert union.max() <= 1  # visible masks do not overlap
        label_map = np.array(
            Image.open(scenes / "gtFine" / "train" / "scene" / _stem(index, "gtFine_labelTrainIds"))
        )
        for k, mask in enumerate(masks):  # the label map is the class of the visible object's pixels
            assert (label_map[mask.numpy().astype(bool)] == int(record.labels[k]) - 1).all()
        assert (label_map[union.numpy() == 0] == BACKGROUND).all()
        coco_image = np.array(Image.open(record.path))
        city_image = np.array(
            Image.open(scenes / "leftImg8bit" / "train" / "scene" / _stem(index, "leftImg8bit"))
        )
        assert np.array_equal(coco_image, city_image) and coco_image.shape == (SIZE, SIZE, 3)
    assert len(load_coco(scenes, "val")) == VAL


def _stem(index: int, suffix: str) -> str:
    return f"scene_{index:06d}_000019_{suffix}.png"


def test_cityscapes_layout_and_bundles(scenes: Path) -> None:
    split = load_cityscapes(scenes, "val", 11)
    assert len(split) == VAL
    seg = DATASETS.build("cityscapes", root=str(scenes))
    assert seg.num_classes == 11 and seg.class_names[BACKGROUND] == "background"
    assert seg.image_size == (SIZE, SIZE)
    det = DATASETS.build("coco", root=str(scenes), masks=True)
    assert det.num_classes == 10 and det.class_names[0] == "T-shirt/top" and det.image_size == (SIZE, SIZE)


def test_every_object_stays_at_least_half_visible(fmnist_root: Path) -> None:
    arrays = read_split(fmnist_root, "test")
    pool, labels = arrays.images[:500, 0], arrays.labels[:500].numpy()
    for i in range(12):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([9, i])))
        canvas = render_canvas(rng, pool, labels, 96)
        assert 2 <= len(canvas.classes) <= 8 and len(canvas.full) == len(canvas.classes)
        for k, full in enumerate(canvas.full):
            assert canvas.visible_mask(k).sum() >= MIN_VISIBLE * full
        assert canvas.image.dtype == np.uint8 and canvas.image.shape == (96, 96, 3)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools 2.0 under numpy 2
def test_rle_counts_round_trip() -> None:
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for first in (0, 1):
        mask = rng.random((7, 9)) > 0.5
        mask[0, 0] = bool(first)
        rle = mask_api.frPyObjects({"size": [7, 9], "counts": rle_counts(mask)}, 7, 9)
        assert np.array_equal(mask_api.decode(rle).astype(bool), mask)
