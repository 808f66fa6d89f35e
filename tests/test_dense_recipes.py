"""The detection and segmentation recipes: they load, name registered models and terms of their task, carry
the paper's schedule and reference, and are exactly what tools/make_dense_recipes.py writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from datakd.config import load_config
from datakd.losses.base import LOSSES
from datakd.models.registry import get_entry

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("recipes/testbed", "recipes/coco/tst_table3", "recipes/cityscapes/tst_table4")
BASELINE_FILES = [
    p
    for folder in FOLDERS
    for p in sorted((REPO / folder).rglob("*.yaml"))
    if "tst" not in p.stem and "dpk" not in p.stem  # TST's and DPK's own rows come from their tools
]


def test_there_is_a_recipe_for_every_baseline_row() -> None:
    names = {p.relative_to(REPO).as_posix() for p in BASELINE_FILES}
    for pair in ("cmrcnn_x101-frcnn_r50", "retinanet_x101-retinanet_r50", "fcos_r101-fcos_r50"):
        for arm in ("teacher", "student", "kd", "kd_mimic"):
            assert f"recipes/coco/tst_table3/{pair}/{arm}.yaml" in names
    assert "recipes/coco/tst_table3/fcos_r101-fcos_r50/fgd.yaml" in names
    for arm in ("teacher", "student", "seg_kd"):
        assert f"recipes/cityscapes/tst_table4/{arm}.yaml" in names
    for family in ("retinanet", "fasterrcnn"):
        for arm in ("teacher", "student", "kd", "mimic", "kd_mimic", "fgd"):
            assert f"recipes/testbed/{family}_{arm}.yaml" in names


@pytest.mark.parametrize("path", BASELINE_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_recipe_is_consistent(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.task in ("detection", "segmentation")
    assert cfg.data.dataset == ("coco" if cfg.task == "detection" else "cityscapes")
    assert get_entry(cfg.student.name).family == cfg.task
    for name, options in cfg.loss.items():
        assert cfg.task in LOSSES.get(options.get("type", name)).tasks, name
    if cfg.teacher.checkpoint:
        assert get_entry(cfg.teacher.name).family == cfg.task
        assert cfg.teacher.name != cfg.student.name
    paper = "testbed" not in path.as_posix()
    if paper:
        assert cfg.reference and cfg.reference["paper"] == "000"
    if paper and cfg.task == "detection":
        assert (cfg.epochs, cfg.data.batch_size, cfg.schedule.milestones) == (24, 16, [16, 22])
        two_stage = cfg.student.name.startswith(("fasterrcnn", "maskrcnn"))
        assert cfg.optim.lr == (0.02 if two_stage else 0.01)
        assert cfg.data.options["degenerate_boxes"] == "drop"  # two zero-height boxes in train2017
    if paper and cfg.task == "segmentation":
        assert cfg.schedule.name == "poly" and cfg.schedule.eta_min == 1e-4 and cfg.optim.lr == 0.01


def test_the_tool_writes_the_committed_recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location(
        "make_dense_recipes", REPO / "tools" / "make_dense_recipes.py"
    )
    tool = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(tool)
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    tool.main()
    written = sorted(tmp_path.rglob("*.yaml"))
    assert len(written) == len(BASELINE_FILES)
    for path in written:
        assert path.read_text() == (REPO / path.relative_to(tmp_path)).read_text(), path
