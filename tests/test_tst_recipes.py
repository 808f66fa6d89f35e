"""Every shipped TST recipe loads and builds its loss terms, augmenter and events (no data needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from datakd.augmenters.base import build_augmenter
from datakd.augmenters.tst.augmenter import TSTAugmenter
from datakd.config import load_config
from datakd.events.base import build_events
from datakd.events.tst_search import TSTSearch
from datakd.losses.base import build_terms
from datakd.models.registry import get_entry

REPO = Path(__file__).resolve().parents[1]
RECIPES = [*sorted((REPO / "recipes").glob("*/tst/**/*.yaml")), REPO / "recipes" / "tiny" / "tst.yaml"]


def test_all_tables_are_covered() -> None:
    names = {p.relative_to(REPO / "recipes").as_posix() for p in RECIPES if p.parent.name != "tiny"}
    assert len([n for n in names if n.startswith("cifar100/tst/") and "/ablations/" not in n]) == 9
    for table, count in (("table5", 12), ("table6", 8), ("table7", 4), ("table8", 20)):
        assert len([n for n in names if f"/ablations/{table}/" in n]) == count, table
    assert "imagenet/tst/resnet34-resnet18.yaml" in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(REPO / "recipes").as_posix())
def test_recipe_builds(path: Path) -> None:
    cfg = load_config(path)
    terms = build_terms(cfg.loss)
    assert {t.term_name for t in terms} == {"ce", "kd"}
    augmenter = build_augmenter(cfg.augmenter)
    assert isinstance(augmenter, TSTAugmenter)
    events = build_events(cfg.events)
    assert all(isinstance(e, TSTSearch) for e in events)
    get_entry(cfg.student.name)
    if cfg.teacher.name:  # (the tiny recipe takes the architecture from its teacher checkpoint)
        get_entry(cfg.teacher.name)
    if path.parent.name == "tiny":
        return
    ref = cfg.reference
    assert ref is not None and ref["paper"] == "000" and ref["table"] in (1, 2, 5, 6, 7, 8) and ref["row"]
    assert ref["top1"] is not None or ref["table"] == 7  # Table 7's no-prior row is NaN in the paper
    if ref["table"] == 1:
        assert len(events) == 1 and events[0].epochs in (1, 5, 10, 30)
    if "fixed" in path.name or path.name.endswith("search0.yaml"):
        assert not events  # no Stage II (Table 5 "No", Table 6 n_encoder = 0)
