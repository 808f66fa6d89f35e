"""The CIFAR-100 logit-baseline recipes: they load, their methods build, they follow the RepDistiller
protocol, carry the published numbers, and match their generator (tools/make_baseline_recipes.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from datakd.augmenters.base import build_augmenter
from datakd.config import load_config
from datakd.data.base import DATASETS
from datakd.events.base import build_events
from datakd.losses.base import build_terms
from datakd.losses.dist import DIST
from datakd.losses.dkd import DecoupledKD
from datakd.models.registry import get_entry

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "cifar100" / "baselines"
PAIRS = [
    ("resnet56", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
    ("vgg13", "vgg8"),
    ("vgg13", "mobilenetv2"),
    ("resnet50", "mobilenetv2"),
    ("resnet32x4", "shufflev1"),
    ("resnet32x4", "shufflev2"),
    ("wrn_40_2", "shufflev1"),
]
# DKD.BETA in megvii-research/mdistiller configs/cifar100/dkd/*.yaml (8.0 = the CFG default where unset).
MDISTILLER_BETA = {
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("resnet32x4", "resnet8x4"): 8.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
    ("vgg13", "vgg8"): 6.0,
    ("vgg13", "mobilenetv2"): 6.0,
    ("resnet50", "mobilenetv2"): 8.0,
    ("resnet32x4", "shufflev1"): 8.0,
    ("resnet32x4", "shufflev2"): 8.0,
    ("wrn_40_2", "shufflev1"): 8.0,
}
DIST_REPORTED = {
    ("resnet56", "resnet20"),
    ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_40_1"),
    ("resnet50", "mobilenetv2"),
    ("resnet32x4", "shufflev1"),
    ("resnet32x4", "shufflev2"),
}
ALL = [(m, t, s) for m in ("kd", "dkd", "dist") for t, s in PAIRS]


def test_exactly_the_expected_recipes_are_shipped() -> None:
    # The folder also holds the feature baselines' recipes (tests/test_feature_recipes.py checks those).
    ours = sorted(p.name for m in ("kd", "dkd", "dist") for p in RECIPES.glob(f"{m}_*.yaml"))
    assert ours == sorted(f"{m}_{t}_{s}.yaml" for m, t, s in ALL)


@pytest.mark.parametrize(("method", "teacher", "student"), ALL)
def test_recipe_loads_and_builds(method: str, teacher: str, student: str) -> None:
    cfg = load_config(RECIPES / f"{method}_{teacher}_{student}.yaml")
    # Names are registered and the method's options are valid constructor arguments.
    assert cfg.data.dataset in DATASETS
    get_entry(cfg.student.name)
    get_entry(cfg.teacher.name)
    terms = {t.term_name: t for t in build_terms(cfg.loss)}
    build_augmenter(cfg.augmenter)
    build_events(cfg.events)
    # RepDistiller protocol.
    assert (cfg.student.name, cfg.teacher.name) == (student, teacher)
    assert cfg.teacher.checkpoint.startswith("teachers/cifar100/") and cfg.teacher.checkpoint.endswith(
        "_vanilla/ckpt_epoch_240.pth"
    )
    assert cfg.epochs == 240 and cfg.data.batch_size == 64
    assert (cfg.data.augment, cfg.data.crop_padding) == ("crop_flip", 4)
    assert cfg.optim.name == "sgd" and cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 5e-4
    small = student in ("mobilenetv2", "shufflev1", "shufflev2")
    assert cfg.optim.lr == (0.01 if small else 0.05)
    assert cfg.schedule.name == "multistep" and cfg.schedule.milestones == [150, 180, 210]
    assert cfg.schedule.gamma == 0.1
    # Method settings.
    if method == "kd":
        assert (terms["ce"].weight, terms["kd"].weight, terms["kd"].temperature) == (0.1, 0.9, 4.0)
    elif method == "dkd":
        dkd = terms["dkd"]
        assert isinstance(dkd, DecoupledKD) and terms["ce"].weight == 1.0 and dkd.weight == 1.0
        assert (dkd.alpha, dkd.temperature, dkd.warmup_epochs, dkd.warmup_mode) == (1.0, 4.0, 20.0, "epoch")
        assert dkd.beta == MDISTILLER_BETA[(teacher, student)]
    else:
        dist = terms["dist"]
        assert isinstance(dist, DIST) and (dist.beta, dist.gamma, dist.temperature) == (1.0, 1.0, 4.0)
    # Published numbers: every KD/DKD pair is in the DKD tables; DIST reports six pairs.
    ref = cfg.reference
    if method == "dist" and (teacher, student) not in DIST_REPORTED:
        assert ref is None
    else:
        assert ref is not None and {"paper", "table", "row", "top1"} <= ref.keys()
        assert 60.0 < ref["top1"] < 80.0


def test_published_numbers_spot_checks() -> None:
    top1 = {
        "dkd_resnet32x4_resnet8x4": 76.32,
        "dkd_resnet32x4_shufflev2": 77.07,
        "kd_resnet56_resnet20": 70.66,
        "kd_resnet50_mobilenetv2": 67.35,
        "dist_resnet32x4_resnet8x4": 76.31,
        "dist_wrn_40_2_wrn_40_1": 74.43,
    }
    for name, value in top1.items():
        assert load_config(RECIPES / f"{name}.yaml").reference["top1"] == value, name


def test_recipes_match_their_generator(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location(
        "make_baseline_recipes", REPO / "tools" / "make_baseline_recipes.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    assert module.main(["--check", "--out", str(RECIPES)]) == 0, capsys.readouterr().out
