"""Every EffDstl recipe loads, builds its terms, target transform and events, and matches its generator."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from datakd.config import load_config
from datakd.engine.optim import LRSchedule, merge_section
from datakd.events.base import build_events
from datakd.events.builtin import SetLossWeights, SwitchTeacher
from datakd.losses.base import build_terms
from datakd.models.registry import get_entry
from datakd.targets.base import build_target_transform

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*/effdstl/*.yaml"))


def _generator():
    spec = importlib.util.spec_from_file_location(
        "make_effdstl_recipes", REPO / "tools" / "make_effdstl_recipes.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_model(name: str) -> None:
    get_entry(name)  # timm: names need timm, which the `dev` extra installs (no weights are downloaded)


def test_recipes_exist_and_match_the_generator() -> None:
    generator = _generator()
    expected = generator.all_recipes()
    assert {str(p.relative_to(REPO / "recipes")) for p in RECIPES} == set(expected)
    for relative, recipe in expected.items():
        assert (REPO / "recipes" / relative).read_text() == generator.render(recipe), relative


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_recipe_builds_without_data(path: Path) -> None:
    cfg = load_config(path)
    terms = {t.term_name: t for t in build_terms(cfg.loss)}
    transform = build_target_transform(cfg.target_transform)
    events = build_events(cfg.events)
    _check_model(cfg.student.name)
    if cfg.teacher.name:
        _check_model(cfg.teacher.name)
    assert cfg.reference is not None and cfg.reference["paper"] == "003"
    schedule = LRSchedule(cfg.schedule, 100, cfg.total_epochs, cfg.optim.lr)
    for event in events:
        if isinstance(event, SwitchTeacher):
            _check_model(event.name)
            stage2 = merge_section(cfg.schedule, event.schedule, "schedule")
            merge_section(cfg.optim, event.optim, "optim")
            LRSchedule(stage2, 100, cfg.total_epochs, event.optim["lr"], start_epoch=event.at)
        if isinstance(event, SetLossWeights):
            assert set(event.weights) <= set(terms), event.weights
    if "ckm" in terms:  # EffDstl: both events fire at one epoch, the CKM term is off until then
        switch, weights = events
        assert isinstance(switch, SwitchTeacher) and isinstance(weights, SetLossWeights)
        assert switch.at == weights.at and terms["ckm"].weight == 0.0
        assert weights.weights == {"ce": 0.0, "wsl": 0.0, "ckm": 1.0}
        assert transform is not None and transform.views == ("main",)
        if cfg.schedule.name == "cosine":  # stage 1 anneals to its floor exactly at the switch
            assert cfg.schedule.decay_epochs == switch.at
            assert schedule.factor(100 * switch.at) == pytest.approx(cfg.schedule.eta_min / cfg.optim.lr)


def test_imagenet_effdstl_recipes_carry_table_1() -> None:
    expected = {
        "resnet18_effdstl.yaml": (74.07, 91.54),
        "resnet18_effdstl_100ep.yaml": (72.17, 90.95),
        "mobilenetv1_effdstl.yaml": (75.49, 92.32),
        "mobilenetv1_effdstl_100ep.yaml": (71.91, 90.38),
        "resnet18_wsl.yaml": (73.44, 91.22),
        "mobilenetv1_wsl_100ep.yaml": (71.52, 90.34),
    }
    for name, (top1, top5) in expected.items():
        cfg = load_config(REPO / "recipes" / "imagenet" / "effdstl" / name)
        assert (cfg.reference["top1"], cfg.reference["top5"]) == (top1, top5), name
    advanced = load_config(REPO / "recipes" / "imagenet" / "effdstl" / "resnet18_effdstl.yaml")
    assert (advanced.epochs, advanced.data.batch_size, advanced.optim.lr, advanced.optim.weight_decay) == (
        300,
        1024,
        0.5,
        4e-5,
    )
    switch = build_events(advanced.events)[0]
    assert (switch.at, switch.name, switch.optim) == (
        240,
        "timm:resnet34d",
        {"lr": 0.05, "weight_decay": 0.0},
    )
    assert advanced.teacher.name == "tv:resnet34"
    wsl = load_config(REPO / "recipes" / "imagenet" / "effdstl" / "resnet18_wsl.yaml")
    assert wsl.loss["wsl"] == {"weight": 2.5, "temperature": 2.0, "variant": "official"}
