"""Every shipped TST recipe loads and builds its loss terms, augmenter and events (no data needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from datakd.augmenters.base import build_augmenter
from datakd.augmenters.tst.attack import TSTAttack
from datakd.augmenters.tst.augmenter import TSTAugmenter
from datakd.config import load_config
from datakd.events.base import build_events
from datakd.events.tst_search import TSTSearch
from datakd.losses.base import build_terms
from datakd.models.registry import get_entry

REPO = Path(__file__).resolve().parents[1]
DENSE = ("coco", "cityscapes")  # detection / segmentation TST recipes: tests/test_tst_dense.py
RECIPES = [
    *sorted(
        p
        for p in (REPO / "recipes").glob("*/tst/**/*.yaml")
        if p.relative_to(REPO / "recipes").parts[0] not in DENSE
    ),
    REPO / "recipes" / "tiny" / "tst.yaml",
]


def test_all_tables_are_covered() -> None:
    names = {p.relative_to(REPO / "recipes").as_posix() for p in RECIPES if p.parent.name != "tiny"}
    assert len([n for n in names if n.startswith("cifar100/tst/") and "/ablations/" not in n]) == 9
    for table, count in (("table5", 12), ("table6", 8), ("table7", 6), ("table8", 20), ("table9", 3)):
        assert len([n for n in names if f"/ablations/{table}/" in n]) == count, table
    assert "imagenet/tst/resnet34-resnet18.yaml" in names
    assert "imagenet/tst/resnet50-mobilenetv1.yaml" in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(REPO / "recipes").as_posix())
def test_recipe_builds(path: Path) -> None:
    cfg = load_config(path)
    terms = build_terms(cfg.loss)
    assert {t.term_name for t in terms} == {"ce", "kd"}
    augmenter = build_augmenter(cfg.augmenter)
    events = build_events(cfg.events)
    if path.name.endswith("-attack.yaml"):  # Table 7 "Attack": the images are searched every step
        assert isinstance(augmenter, TSTAttack) and not events
        assert augmenter.steps == 1 and augmenter.epsilon == pytest.approx(8 / 255)
    else:
        assert isinstance(augmenter, TSTAugmenter)
    assert all(isinstance(e, TSTSearch) for e in events)
    get_entry(cfg.student.name)
    if cfg.teacher.name:  # (the tiny recipe takes the architecture from its teacher checkpoint)
        get_entry(cfg.teacher.name)
    if path.parent.name == "tiny":
        return
    ref = cfg.reference
    assert ref is not None and ref["paper"] == "000" and ref["table"] in (1, 2, 5, 6, 7, 8, 9) and ref["row"]
    assert ref["top1"] is not None or ref["table"] == 7  # Table 7's no-prior row is NaN in the paper
    if ref["table"] == 1:
        assert len(events) == 1 and events[0].epochs in (1, 5, 10, 30)
    if "fixed" in path.name or path.name.endswith("search0.yaml"):
        assert not events  # no Stage II (Table 5 "No", Table 6 n_encoder = 0)


@pytest.mark.parametrize("percent", [25, 50, 75])
def test_few_shot_rows_keep_their_share_of_cifar100(percent: int) -> None:
    """Table 9: ResNet56 -> ResNet20 on 25/50/75 % of the 50,000 training images, the authors' few-shot
    config otherwise (Stage II at 30/90 for 1 epoch, lr 0.1, weights 1)."""
    cfg = load_config(REPO / f"recipes/cifar100/tst/ablations/table9/resnet56-resnet20-data{percent}.yaml")
    assert cfg.data.train_subset == 50_000 * percent // 100
    assert (cfg.teacher.name, cfg.student.name) == ("resnet56", "resnet20")
    assert cfg.optim.lr == 0.1 and cfg.loss["kd"]["weight"] == 1.0
    assert cfg.events == [{"name": "tst_search", "at": [30, 90], "epochs": 1}]
    assert cfg.reference["top1"] == {25: 66.28, 50: 70.22, 75: 71.80}[percent]


def test_resnet50_mobilenetv1_follows_the_paper_protocol() -> None:
    cfg = load_config(REPO / "recipes/imagenet/tst/resnet50-mobilenetv1.yaml")
    assert (cfg.teacher.name, cfg.student.name) == ("tv:resnet50", "mobilenetv1")
    assert (cfg.epochs, cfg.data.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (100, 512, 0.1, 1e-4)
    assert cfg.schedule.milestones == [30, 60, 90] and cfg.loss["kd"]["temperature"] == 1.0
    assert cfg.events == [{"name": "tst_search", "at": [10, 20], "epochs": 5}]
    assert (cfg.reference["top1"], cfg.reference["top5"]) == (72.31, 90.7)
