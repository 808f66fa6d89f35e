"""Every role-wise KD recipe loads, names valid models/terms/events/augmenter, carries its paper number, and
matches its generator (tools/make_rolewise_recipes.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from datakd.augmenters.base import build_augmenter
from datakd.augmenters.pba_policy import POLICY_LENGTH, Schedule
from datakd.config import load_config
from datakd.events.base import build_events
from datakd.losses.base import build_terms
from datakd.models.registry import get_entry

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("cifar*/rolewise/*.yaml"))


def test_there_is_a_recipe_per_table():
    assert len(RECIPES) == 85 + 37  # + the clip: weighted twins (paper Eq. 10) of the 37 II-KD recipes
    tables = {load_config(p).reference["table"] for p in RECIPES}
    assert tables == {1, 2, 3, 4}


@pytest.mark.parametrize("path", RECIPES, ids=[f"{p.parent.parent.name}/{p.stem}" for p in RECIPES])
def test_recipe_builds_without_data(path, tmp_path):
    cfg = load_config(path)
    assert cfg.reference["paper"] == "002" and isinstance(cfg.reference["top1"], float)
    assert cfg.epochs == 200 and cfg.data.batch_size == 128 and cfg.data.dataset == path.parent.parent.name
    student = get_entry(cfg.student.name)
    terms = build_terms(cfg.loss)
    events = build_events(cfg.events)
    assert len(events) == len(cfg.events)
    for event in cfg.events:
        assert set(event["terms"]) <= set(cfg.loss)
    augmenter_spec = dict(cfg.augmenter)
    if augmenter_spec["name"] == "pba":
        schedule = Path(augmenter_spec["schedule"])
        assert schedule.parts[0] == "schedules" and schedule.name == "schedule.json"
        assert augmenter_spec["cutout"] == (8 if cfg.data.dataset == "cifar100" else 16)
        stand_in = Schedule([(0,) * POLICY_LENGTH]).save(tmp_path / "schedule.json")
        augmenter_spec["schedule"] = str(stand_in)
    augmenter = build_augmenter(augmenter_spec)
    for term in terms:
        assert set(term.views) <= set(augmenter.view_names)
    if any(t.needs_teacher for t in terms):
        assert cfg.teacher.checkpoint and get_entry(cfg.teacher.name)
        assert cfg.teacher.checkpoint.startswith(f"runs/rolewise-{cfg.data.dataset}-")
        if "@" in cfg.student.name:  # quantised copies of the teacher start from its weights
            assert cfg.student.init_from_teacher and cfg.student.name.split("@")[0] == cfg.teacher.name
            assert cfg.optim.name == "adam" and cfg.optim.lr == 1e-3 and cfg.optim.weight_decay == 1e-5
    assert student.family == "cifar"


def test_recipes_match_their_generator(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "make_rolewise_recipes", REPO / "tools" / "make_rolewise_recipes.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    module.main()
    generated = sorted(tmp_path.glob("cifar*/rolewise/*.yaml"))
    assert [p.relative_to(tmp_path) for p in generated] == [p.relative_to(REPO / "recipes") for p in RECIPES]
    for new, old in zip(generated, RECIPES):
        assert new.read_text() == old.read_text(), old.name


def test_fashion_mnist_rolewise_files_load_and_their_schedules_replay():
    """The Stage-α/β Fashion-MNIST recipes and schedules that docs/methods/rolewise.md measures."""
    folder = REPO / "benchmarks" / "rolewise"  # moved from the retired benchmarks/fmnist
    student = load_config(folder / "student_w4a4.yaml")
    assert student.student.name == "resnet8@w4a4" and "iikd" in student.loss
    assert load_config(folder / "teacher.yaml").student.name == "resnet20"
    searched = Schedule.load(folder / "search16_schedule.json")
    member = Schedule.load(folder / "member10_schedule.json")
    assert searched.epochs == member.epochs == 12
    assert not any(any(policy) for policy in searched.policies)  # the search kept the empty policy
    # Member 10: empty for epochs 0-7, operations from epoch 8; a 6-epoch replay reads epochs 0, 2, ..., 10.
    assert [any(member.policy_at(e, 6)) for e in range(6)] == [False] * 4 + [True] * 2
    build_augmenter({"name": "pba", "schedule": str(folder / "member10_schedule.json")})


DML = sorted(p for p in RECIPES if "_dml" in p.stem)
TABLE4_IIKD = sorted(p for p in RECIPES if "_from_" in p.stem and p.stem.endswith("_iikd"))


@pytest.mark.parametrize("path", DML, ids=[p.stem for p in DML])
def test_dml_rows_train_a_copy_of_the_teacher_alongside_the_student(path):
    """Tables 1/3 DML: CE + the dml term whose peer starts as the Stage-alpha teacher (role-kd's code)."""
    cfg = load_config(path)
    assert cfg.loss["dml"]["init"] == "teacher" and cfg.loss["ce"] == {"weight": 1.0}
    assert cfg.student.init_from_teacher and cfg.teacher.checkpoint
    assert cfg.reference["table"] in (1, 3) and "DML" in cfg.reference["row"]
    (dml,) = [t for t in build_terms(cfg.loss) if t.term_name == "dml"]
    assert not dml.needs_teacher  # the frozen teacher is not run; the peer is the term's own


def test_table4_covers_every_published_pair():
    names = {p.stem for p in RECIPES}
    for student, teacher in (("wrn_16_4", "wrn_28_10"), ("preresnet56", "wrn_28_10"),
                             ("preresnet32", "preresnet164"), ("preresnet44", "pyramidnet_200_240"),
                             ("wrn_16_2", "pyramidnet_200_240")):  # fmt: skip
        for row in ("vanilla", "alpha", "iikd", "beta"):
            assert f"{student}_from_{teacher}_{row}" in names
    assert {"preresnet164_alpha", "pyramidnet_200_240_alpha", "wrn_28_10_alpha"} <= names


@pytest.mark.parametrize("path", TABLE4_IIKD, ids=[p.stem for p in TABLE4_IIKD])
def test_table4_iikd_connectors_fit_the_new_pairs(path):
    """II-KD with 1x1 connectors sets up and runs on each Table 4 teacher/student pair (random weights)."""
    import torch

    from datakd.api.context import SetupContext, TermInputs, View, record
    from datakd.models import create

    cfg = load_config(path)
    student, teacher = create(cfg.student.name, 100), create(cfg.teacher.name, 100).eval()
    terms = build_terms(cfg.loss)
    ctx = SetupContext(
        student=student, teacher=teacher, num_classes=100, num_train=512,
        train_labels=torch.arange(512) % 100, sample_images=torch.randn(2, 3, 32, 32),
        device=torch.device("cpu"), batch_size=128, steps_per_epoch=4, total_epochs=200,
        normalizer=None, mean=(0.5,) * 3, std=(0.25,) * 3,
    )  # fmt: skip
    for term in terms:
        term.setup(ctx)
    x = torch.randn(8, 3, 32, 32)
    s_logits, s_feats = record(student, x, [tap for t in terms for tap in t.student_taps])
    with torch.no_grad():
        t_logits, t_feats = record(teacher, x, [tap for t in terms for tap in t.teacher_taps])
    inputs = TermInputs(
        View("main", x, torch.arange(8)), s_logits, t_logits, s_feats, t_feats, 0, 0, 0, 4, 200
    )
    for term in terms:
        value = term(inputs)
        assert value.dim() == 0 and torch.isfinite(value), term.term_name
