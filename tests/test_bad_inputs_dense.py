"""The bad-input catalogue for detection and segmentation data (docs/reliability.md): each bad input, fed
through the real CLI, ends in one line naming the file, the entry and what is valid (exit 2, no
traceback) and leaves an earlier run exactly as it was."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from datakd.cli import main
from datakd.data.dense.scenes import generate_scenes

pytest.importorskip("pycocotools")

DETECTION = {
    "name": "bad",
    "task": "detection",
    "epochs": 1,
    "device": "cpu",
    "data": {"dataset": "coco", "batch_size": 4, "workers": 0},
    "student": {"name": "retinanet_r18_fpn_nano"},
    "loss": {"detector": {}},
    "engine": {"tensorboard": False},
}
SEGMENTATION = {
    **DETECTION,
    "task": "segmentation",
    "data": {"dataset": "cityscapes", "batch_size": 4, "workers": 0, "image_size": 64},
    "student": {"name": "pspnet_r18_nano"},
    "loss": {"seg_ce": {}},
}
TRAIN_JSON = Path("annotations") / "instances_train2017.json"


@pytest.fixture(scope="module")
def world(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-dense")
    bed = root / "bed"
    generate_scenes(fmnist_root, bed, train=8, val=4, size=64, seed=2)
    recipes = {}
    for name, values in (("detection", DETECTION), ("segmentation", SEGMENTATION)):
        recipes[name] = root / f"{name}.yaml"
        recipes[name].write_text(yaml.safe_dump(values))
    earlier = root / "earlier"
    args = ["train", "--config", str(recipes["detection"]), "--data-root", str(bed), "--out", str(earlier)]
    assert main([*args, "--quiet"]) == 0
    return {"bed": bed, "earlier": earlier, **recipes}


def edit_json(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(bed: Path) -> None:
        path = bed / TRAIN_JSON
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return edit


def first_box(value: list[float]) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        data["annotations"][0]["bbox"] = value

    return change


def relabel(data: dict) -> None:
    data["annotations"][0]["category_id"] = 4  # a gap in the test bed's ids 1, 2, 3, 5, 7, ...


def one_label_map(change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def edit(bed: Path) -> None:
        path = sorted((bed / "gtFine" / "train").rglob("*_labelTrainIds.png"))[0]
        path.write_bytes(b"")
        Image.fromarray(change(np.zeros((64, 64), dtype=np.uint8))).save(path)

    return edit


def out_of_range(labels: np.ndarray) -> np.ndarray:
    labels[3, 3] = 42  # 11 classes + 255 are valid
    return labels


# case -> (recipe, how the data is broken, the line's pattern)
CASES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "annotations-missing": (
        "detection",
        lambda bed: (bed / TRAIN_JSON).unlink(),
        r"instances_train2017\.json",
    ),
    "annotations-malformed": (
        "detection",
        lambda bed: (bed / TRAIN_JSON).write_text('{"images": ['),
        r"instances_train2017\.json",
    ),
    "box-zero-width": (
        "detection",
        edit_json(first_box([3.0, 3.0, 0.0, 5.0])),
        r"annotation.*degenerate|size",
    ),
    "box-outside-image": ("detection", edit_json(first_box([60.0, 60.0, 30.0, 30.0])), r"outside|image"),
    "unknown-category": ("detection", edit_json(relabel), r"categor.*4"),
    "label-map-wrong-size": (
        "segmentation",
        one_label_map(lambda labels: np.zeros((32, 64), dtype=np.uint8)),
        r"labelTrainIds\.png.*(size|32)",
    ),
    "label-out-of-range": ("segmentation", one_label_map(out_of_range), r"labelTrainIds\.png.*42"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_dense_input_is_one_line_and_changes_nothing(
    case: str, world: dict, tmp_path: Path, capsys
) -> None:
    recipe, breaker, pattern = CASES[case]
    bed = tmp_path / "bed"
    shutil.copytree(world["bed"], bed)
    breaker(bed)
    before = {p: p.read_bytes() for p in sorted(world["earlier"].rglob("*")) if p.is_file()}
    out = tmp_path / "run"
    code = main(
        ["train", "--config", str(world[recipe]), "--data-root", str(bed), "--out", str(out), "--quiet"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    assert re.search(pattern, err, re.IGNORECASE), err
    assert {p: p.read_bytes() for p in sorted(world["earlier"].rglob("*")) if p.is_file()} == before
    # label maps are read when a batch needs them (decoding all of Cityscapes up front would take minutes):
    # such a run stops at its first step, having written only its config
    written = {p.name for p in out.iterdir()} if out.exists() else set()
    assert written <= ({"config.yaml"} if recipe == "segmentation" else set()), written


@pytest.mark.parametrize(
    ("recipe", "dataset", "pattern"),
    [
        (
            "detection",
            "quickstart",
            r"task 'detection' cannot train on dataset 'quickstart', a classification",
        ),
        ("segmentation", "coco", r"task 'segmentation' cannot train on dataset 'coco', a detection dataset"),
    ],
)
def test_a_recipe_on_another_tasks_dataset_is_one_line(
    recipe: str, dataset: str, pattern: str, world: dict, tmp_path: Path, capsys
) -> None:
    args = ["train", "--config", str(world[recipe]), f"data.dataset={dataset}", "--out", str(tmp_path / "r")]
    if dataset != "quickstart":
        args += ["--data-root", str(world["bed"])]
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(pattern, err), err


def test_a_classification_recipe_on_coco_is_one_line(world: dict, tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "cls.yaml"
    values = {**DETECTION, "task": "classification", "student": {"name": "resnet8"}, "loss": {"ce": {}}}
    recipe.write_text(yaml.safe_dump(values))
    args = ["train", "--config", str(recipe), "--data-root", str(world["bed"]), "--out", str(tmp_path / "r")]
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(r"task 'classification' cannot train on dataset 'coco', a detection dataset", err), err
