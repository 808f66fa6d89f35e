"""Every seed 001 recipe loads and builds its loss terms, augmenter and events; the ×k rows scale epochs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datakd.api.context import SetupContext, TermInputs, View, record
from datakd.augmenters.base import build_augmenter
from datakd.config import load_config
from datakd.engine.optim import LRSchedule
from datakd.events.base import build_events
from datakd.losses.base import build_terms
from datakd.models import create
from datakd.models.registry import get_entry

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("recipes/cifar100/tl", "recipes/tiny-imagenet/tl", "recipes/imagenet/tl")
RECIPES = sorted(p for folder in FOLDERS for p in (REPO / folder).rglob("*.yaml"))


def test_recipes_exist_for_every_table_row() -> None:
    names = {str(p.relative_to(REPO)) for p in RECIPES}
    pairs = [
        "wrn40-2_wrn16-2",
        "resnet56_resnet20",
        "resnet32x4_resnet8x4",
        "vgg13_vgg8",
        "vgg13_mobilenetv2",
        "resnet50_vgg8",
        "resnet32x4_shufflev2",
    ]
    for pair in pairs:
        for row in ("kd", "kd960", "tlcutmix", "pick", "pick960", "cutout"):
            assert f"recipes/cifar100/tl/{pair}/{row}.yaml" in names
        for row in ("kd", "kd480", "tlcutmix", "pick", "pick480"):
            assert f"recipes/tiny-imagenet/tl/{pair}/{row}.yaml" in names
    for pair in ("wrn40-2_wrn16-2", "resnet56_resnet20", "vgg13_vgg8"):
        for row in ("tlmixup", "cutmix_ce", "pick_tent", "pick_sent"):
            assert f"recipes/cifar100/tl/{pair}/{row}.yaml" in names
    for row in ("kd", "kd200", "tlcutmix", "pick", "pick200"):
        assert f"recipes/imagenet/tl/resnet34_resnet18/{row}.yaml" in names
    # Table 9: AT/CC/SP/PKT/VID (+KD) with and without TLCutMix, ResNet110 -> ResNet20 instead of ResNet56
    table9 = [p for p in pairs if p != "resnet56_resnet20"] + ["resnet110_resnet20"]
    for pair in table9:
        for method in ("at", "cc", "sp", "pkt", "vid"):
            for row in (method, f"{method}_tlcutmix"):
                assert f"recipes/cifar100/tl/{pair}/{row}.yaml" in names
    # Tables 3 and 4: CRD, CRD+TLCutMix+pick, CRD+TLCutMix+pick960 / pick480
    for pair in pairs:
        for row in ("crd", "crd_pick", "crd_pick960"):
            assert f"recipes/cifar100/tl/{pair}/{row}.yaml" in names
        for row in ("crd", "crd_pick", "crd_pick480"):
            assert f"recipes/tiny-imagenet/tl/{pair}/{row}.yaml" in names


def test_recipes_match_the_generator() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_tl_recipes.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPO / "recipes")) for p in RECIPES])
def test_recipe_builds(path: Path) -> None:
    cfg = load_config(path)
    terms = build_terms(cfg.loss)
    augmenter = build_augmenter(cfg.augmenter)
    build_events(cfg.events)
    for term in terms:
        assert set(term.views) <= set(augmenter.view_names), term.term_name
    get_entry(cfg.student.name)
    ref = cfg.reference
    assert ref and ref["paper"] == "001" and isinstance(ref["top1"], float) and 40 < ref["top1"] < 80
    if "teachers" in path.parts:
        assert list(cfg.loss) == ["ce"]
        return
    get_entry(cfg.teacher.name)
    assert cfg.teacher.checkpoint
    # KD on the main view, 0.1·CE + 0.9·KD at τ = 4, in every row
    assert cfg.loss["ce"] == {"weight": 0.1} and cfg.loss["kd"] == {"weight": 0.9, "temperature": 4.0}
    mix_terms = [t for t in terms if "mix" in t.views]
    if "mix" in augmenter.view_names:
        assert len(mix_terms) == 1 and mix_terms[0].weight == 0.9
        label_term = cfg.augmenter["name"] == "cutmix_ce"
        assert mix_terms[0].needs_teacher != label_term
    else:
        assert not mix_terms
    if cfg.data.dataset == "imagefolder":
        assert (cfg.data.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (256, 0.1, 1e-4)
        assert cfg.schedule.milestones == [30, 60, 90] and cfg.epochs == 100
    else:
        small_lr = cfg.student.name in ("mobilenetv2", "shufflev2")
        assert (cfg.data.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (
            64,
            0.01 if small_lr else 0.05,
            5e-4,
        )
        assert cfg.schedule.milestones == [150, 180, 210] and cfg.epochs == 240
        assert cfg.data.crop_padding == (8 if cfg.data.dataset == "tiny-imagenet" else 4)


@pytest.mark.parametrize(
    "recipe,total,decays",
    [
        ("recipes/cifar100/tl/vgg13_vgg8/pick960.yaml", 960, (600, 720, 840)),
        ("recipes/cifar100/tl/vgg13_vgg8/kd960.yaml", 960, (600, 720, 840)),
        ("recipes/tiny-imagenet/tl/vgg13_vgg8/pick480.yaml", 480, (300, 360, 420)),
        ("recipes/imagenet/tl/resnet34_resnet18/pick200.yaml", 200, (60, 120, 180)),
        ("recipes/cifar100/tl/vgg13_vgg8/pick.yaml", 240, (150, 180, 210)),
    ],
)
def test_epoch_scaling_rule(recipe: str, total: int, decays: tuple[int, int, int]) -> None:
    cfg = load_config(REPO / recipe)
    assert cfg.total_epochs == total
    steps = 10
    schedule = LRSchedule(cfg.schedule, steps, cfg.total_epochs, base_lr=cfg.optim.lr)
    for k, decay in enumerate(decays):
        assert schedule.factor((decay - 1) * steps + steps - 1) == pytest.approx(0.1**k)
        assert schedule.factor(decay * steps) == pytest.approx(0.1 ** (k + 1))


FEATURE_TERMS = {"at": 1000.0, "cc": 0.02, "sp": 3000.0, "pkt": 30000.0, "vid": 1.0, "crd": 0.8}
# The rows that add a feature term to the TL protocol: the TLCutMix / pick variant of each (the rows
# without the augmenter carry the same main-view terms, checked below against their partner).
FEATURE_MIX_RECIPES = sorted(
    p for p in RECIPES if p.stem.split("_")[0] in FEATURE_TERMS and p.stem.endswith(("_tlcutmix", "_pick"))
)
_MODELS: dict[tuple[str, int], torch.nn.Module] = {}


def _model(name: str, classes: int) -> torch.nn.Module:
    if (name, classes) not in _MODELS:
        _MODELS[(name, classes)] = create(name, classes)
    return _MODELS[(name, classes)]


@pytest.mark.parametrize(
    "path", FEATURE_MIX_RECIPES, ids=[str(p.relative_to(REPO / "recipes")) for p in FEATURE_MIX_RECIPES]
)
def test_feature_rows_build_on_the_zoo_models_and_step(path: Path) -> None:
    """X+TLCutMix(+pick): the TL protocol plus RepDistiller's β·X on the main view; X's taps and connectors
    fit the pair (one forward of every term on random images, at the dataset's resolution)."""
    cfg = load_config(path)
    method = path.stem.split("_")[0]
    assert list(cfg.loss) == ["ce", "kd", method, "kd_mix"]
    assert cfg.loss[method]["weight"] == FEATURE_TERMS[method]
    assert cfg.loss[method].get("views", ["main"]) == ["main"]
    base = load_config(path.with_name(f"{method}.yaml"))
    assert base.augmenter["name"] == "none" and base.loss == {k: cfg.loss[k] for k in ("ce", "kd", method)}
    tiny = cfg.data.dataset == "tiny-imagenet"
    classes, size = (200, 64) if tiny else (100, 32)
    student, teacher = _model(cfg.student.name, classes), _model(cfg.teacher.name, classes).eval()
    terms = build_terms(cfg.loss)
    ctx = SetupContext(
        student=student,
        teacher=teacher,
        num_classes=classes,
        num_train=100_000 if tiny else 50_000,
        train_labels=torch.arange(100_000 if tiny else 50_000) % classes,
        sample_images=torch.randn(2, 3, size, size),
        device=torch.device("cpu"),
        batch_size=64,
        steps_per_epoch=782,
        total_epochs=cfg.total_epochs,
        normalizer=None,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    for term in terms:
        term.setup(ctx)
    x = torch.randn(2, 3, size, size)
    s_logits, s_feats = record(student, x, [t for term in terms for t in term.student_taps])
    with torch.no_grad():
        t_logits, t_feats = record(teacher, x, [t for term in terms for t in term.teacher_taps])
    view = View("main", x, torch.tensor([3, 7]), indices=torch.tensor([10, 20]))
    inputs = TermInputs(view, s_logits, t_logits, s_feats, t_feats, 30, 0, 0, 782, cfg.total_epochs)
    for term in terms:
        if "main" in term.views:
            value = term(inputs)
            assert value.dim() == 0 and torch.isfinite(value), term.term_name
