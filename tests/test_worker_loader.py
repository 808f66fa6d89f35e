"""The DataLoader path on an ImageNet-layout folder: worker-count-independent batches, crop geometry,
and a short training run through the trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from datakd.data.base import ImageFiles
from datakd.data.file_loader import WorkerLoader, random_resized_crop_params
from datakd.data.loaders import Normalizer, generator_for
from datakd.engine.build import build_trainer
from tests.helpers import tiny_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder tree of real Fashion-MNIST images (from the embedded subset), 3 classes × 12 images."""
    from datakd.data.quickstart import _load

    train, test = _load()
    root = tmp_path_factory.mktemp("imagefolder")
    for split, arrays, per_class in (("train", train, 12), ("val", test, 4)):
        for c in range(3):
            out = root / split / f"class{c}"
            out.mkdir(parents=True)
            idx = (arrays.labels == c).nonzero().flatten()[:per_class]
            for i in idx.tolist():
                image = torch.nn.functional.interpolate(arrays.images[i : i + 1].float(), size=48)[0]
                write_png(image.repeat(3, 1, 1).round().to(torch.uint8), str(out / f"{i}.png"))
    return root


def files(root: Path) -> ImageFiles:
    from datakd.data.imagefolder import imagefolder

    return imagefolder(str(root)).train


def test_batches_do_not_depend_on_worker_count(folder: Path) -> None:
    norm = Normalizer((0.5,) * 3, (0.25,) * 3, CPU)
    batches = []
    for workers in (0, 2):
        loader = WorkerLoader(
            files(folder), 8, norm, CPU, seed=1, augment="imagenet", image_size=32, workers=workers
        )
        batches.append([b.images for b in loader.epoch(3, start_step=1)])
    assert len(batches[0]) == 4
    assert all(torch.equal(a, b) for a, b in zip(*batches))


def test_random_resized_crop_params_respect_bounds() -> None:
    g = generator_for(0)
    areas = []
    for _ in range(300):
        top, left, h, w = random_resized_crop_params(60, 80, g)
        assert top >= 0 and top + h <= 60 and left >= 0 and left + w <= 80
        areas.append(h * w / (60 * 80))
    assert min(areas) < 0.2 and max(areas) > 0.8  # scale (0.08, 1) is explored


def test_training_run_on_imagefolder_with_workers(folder: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path / "run",
        epochs=1,
        student={"name": "resnet8", "kwargs": {}},
        data={
            "dataset": "imagefolder",
            "root": str(folder),
            "loader": "workers",
            "workers": 2,
            "augment": "imagenet",
            "image_size": 32,
            "batch_size": 12,
            "eval_batch_size": 12,
            "train_subset": None,
            "test_subset": None,
        },
    )
    summary = build_trainer(cfg, "train").fit()
    assert summary["epochs"] == 1 and 0.0 <= summary["top1_last"] <= 100.0
