"""Every CIFAR-100 feature-baseline recipe loads, follows the RepDistiller protocol, carries its paper
number, matches its generator, and builds loss terms whose taps and connectors fit the zoo models (one
forward step on random 32×32 images, no data needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from datakd.api.context import TermInputs, View, record
from datakd.config import load_config
from datakd.losses.base import build_terms
from datakd.models import create
from tests.helpers import setup_context

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "recipes" / "cifar100" / "baselines"
METHODS = ("fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "crd", "reviewkd")
# The folder also holds the logit baselines' recipes (tests/test_baseline_recipes.py checks those).
RECIPES = sorted(p for m in METHODS for p in FOLDER.glob(f"{m}_*.yaml"))
_MODELS: dict[str, torch.nn.Module] = {}


def model(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        _MODELS[name] = create(name, 100)
    return _MODELS[name]


def generator():
    spec = importlib.util.spec_from_file_location(
        "make_feature_recipes", REPO / "tools" / "make_feature_recipes.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_recipe_per_method_and_pair() -> None:
    assert len(RECIPES) == len(METHODS) * 6
    for method in METHODS:
        assert len(list(FOLDER.glob(f"{method}_*.yaml"))) == 6, method


def test_recipes_match_their_generator() -> None:
    gen = generator()
    for method in [*gen.CRD_TABLE, "reviewkd"]:
        for index, (teacher, student) in enumerate(gen.PAIRS):
            path, text = gen.recipe(method, index, teacher, student)
            assert (REPO / path).read_text() == text, (
                f"{path} is stale: run python tools/make_feature_recipes.py"
            )


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_builds_and_steps(path: Path) -> None:
    cfg = load_config(path)
    method = path.stem.split("_")[0]
    # RepDistiller protocol
    assert (cfg.epochs, cfg.data.batch_size, cfg.data.augment, cfg.data.crop_padding) == (
        240,
        64,
        "crop_flip",
        4,
    )
    assert cfg.optim.lr == (0.01 if cfg.student.name.startswith("shuffle") else 0.05)
    assert (cfg.optim.momentum, cfg.optim.weight_decay) == (0.9, 5e-4)
    assert cfg.schedule.milestones == [150, 180, 210] and cfg.schedule.gamma == 0.1
    assert cfg.teacher.checkpoint == f"teachers/cifar100/{cfg.teacher.name}_vanilla/ckpt_epoch_240.pth"
    assert set(cfg.loss) == {"ce", method} and cfg.loss["ce"]["weight"] == 1.0
    assert isinstance(cfg.reference["top1"], float) and cfg.reference["row"]

    student, teacher = model(cfg.student.name), model(cfg.teacher.name).eval()
    terms = build_terms(cfg.loss)
    ctx = setup_context(
        student,
        teacher,
        torch.randn(2, 3, 32, 32),
        num_classes=100,
        mean=(0.5071, 0.4867, 0.4408),
        std=(0.2675, 0.2565, 0.2761),
        num_train=50_000,
        train_labels=torch.arange(50_000) % 100,
        batch_size=64,
        steps_per_epoch=782,
        total_epochs=240,
    )
    for term in terms:
        term.setup(ctx)
    x = torch.randn(2, 3, 32, 32)
    s_logits, s_feats = record(student, x, [t for term in terms for t in term.student_taps])
    with torch.no_grad():
        t_logits, t_feats = record(teacher, x, [t for term in terms for t in term.teacher_taps])
    view = View("main", x, torch.tensor([3, 7]), indices=torch.tensor([10, 20]))
    inputs = TermInputs(view, s_logits, t_logits, s_feats, t_feats, 30, 0, 0, 782, 240)
    for term in terms:
        value = term(inputs)
        assert value.dim() == 0 and torch.isfinite(value), term.term_name
