"""DPK recipes load and build; `datakd info --recipe` reports the transformation modules' parameters and
FLOPs, which match the paper's Table 17 (ResNet34 → ResNet18, last stage) as inferred in spec §5.2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from datakd.augmenters.base import build_augmenter
from datakd.cli import main
from datakd.commands.info import dummy_context, recipe_input, recipe_models
from datakd.config import load_config
from datakd.events.base import build_events
from datakd.losses.base import build_terms
from datakd.losses.dpk import DynamicPriorKnowledge
from datakd.models import create

REPO = Path(__file__).resolve().parents[1]
CIFAR = sorted((REPO / "recipes" / "cifar100" / "dpk").glob("*.yaml"))
IMAGENET = sorted((REPO / "recipes" / "imagenet" / "dpk").glob("*.yaml"))


def test_the_recipes_are_there() -> None:
    assert len(CIFAR) == 6 and len(IMAGENET) == 3


@pytest.mark.parametrize("path", CIFAR + IMAGENET, ids=lambda p: p.stem)
def test_recipe_loads_and_builds_without_data(path: Path) -> None:
    cfg = load_config(path)
    terms = build_terms(cfg.loss)
    build_augmenter(cfg.augmenter)
    build_events(cfg.events)
    weights = {t.term_name: t.weight for t in terms}
    assert weights == {"ce": 1.0, "kd": 0.8, "dpk": 0.2}
    assert cfg.loss["kd"]["temperature"] == (1.0 if path in IMAGENET else 4.0)
    assert cfg.reference["paper"] == "004" and isinstance(cfg.reference["top1"], float)
    assert cfg.teacher.name and cfg.teacher.checkpoint


@pytest.mark.parametrize("path", CIFAR, ids=lambda p: p.stem)
def test_cifar_recipe_sets_up_all_stages(path: Path) -> None:
    cfg = load_config(path, ["loss.dpk.width=16", "loss.dpk.heads=2", "loss.dpk.encoder_depth=1"])
    student, teacher = recipe_models(cfg, 100)
    images = torch.randn(2, *recipe_input(cfg))
    (term,) = [t for t in build_terms(cfg.loss) if isinstance(t, DynamicPriorKnowledge)]
    term.setup(dummy_context(cfg, student, teacher, 100, images))
    patches = [s["patch"] for s in term.describe_stages()]
    assert patches == ([2, 1, 1, 1] if cfg.student.name == "vgg8" else [4, 2, 1])
    assert all(len(m.decoder.blocks) == 4 for m in term.stages.values())


def test_imagenet_heterogeneous_recipe_sets_up() -> None:
    cfg = load_config(
        REPO / "recipes/imagenet/dpk/r50-mobilenetv1.yaml",
        ["loss.dpk.width=16", "loss.dpk.heads=2", "loss.dpk.encoder_depth=1", "loss.dpk.decoder_depth=1"],
    )
    student, teacher = recipe_models(cfg, 1000)
    assert recipe_input(cfg) == (3, 224, 224)
    (term,) = [t for t in build_terms(cfg.loss) if isinstance(t, DynamicPriorKnowledge)]
    term.setup(dummy_context(cfg, student, teacher, 1000, torch.randn(1, 3, 224, 224)))
    stages = term.describe_stages()
    assert [s["patch"] for s in stages] == [8, 4, 2, 1] and {s["tokens"] for s in stages} == {49}
    assert [s["channels"] for s in stages] == [(128, 256), (256, 512), (512, 1024), (1024, 2048)]


# Table 17 (ResNet34 → ResNet18, last stage): #params of the transformation modules, in millions.
TABLE_17 = {(1, 1): 10.5, (2, 2): 20.0, (4, 2): 32.6, (4, 4): 38.9, (6, 4): 51.5}


@pytest.fixture(scope="module")
def r34_r18() -> tuple:
    cfg = load_config(REPO / "recipes/imagenet/dpk/r34-r18-last.yaml")
    student, teacher = create("tv:resnet18", 1000).eval(), create("tv:resnet34", 1000).eval()
    return cfg, dummy_context(cfg, student, teacher, 1000, torch.randn(1, 3, 224, 224))


@pytest.mark.parametrize(("depths", "millions"), TABLE_17.items(), ids=lambda v: str(v))
def test_parameter_counts_match_table_17(r34_r18: tuple, depths: tuple[int, int], millions: float) -> None:
    _, ctx = r34_r18
    (term,) = build_terms(
        {
            "dpk": {
                "student": "stage4",
                "teacher": "stage4",
                "encoder_depth": depths[0],
                "decoder_depth": depths[1],
            }
        }
    )
    term.setup(ctx)
    params = sum(p.numel() for p in term.parameters())
    # d = 512, k = 1: 12·d² + 13·d per block, 2 encoders + decoder, 4 d×d projections, 3 positional
    # embeddings of 49 tokens and 3 final LayerNorms.
    d, n = 512, 49
    expected = (2 * depths[0] + depths[1]) * (12 * d * d + 13 * d) + 4 * (d * d + d) + 3 * n * d + 3 * 2 * d
    assert params == expected
    assert abs(params / 1e6 - millions) < 0.1


def test_info_recipe_reports_parameters_and_flops(capsys) -> None:
    recipe = REPO / "recipes/imagenet/dpk/r34-r18-last.yaml"
    args = ["info", "--recipe", str(recipe), "--batch", "4"]
    args += ["--set", "loss.dpk.encoder_depth=1", "--set", "loss.dpk.decoder_depth=1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    row = re.search(r"^dpk\s+dpk\s+([\d,]+)\s+([\d.]+)$", text, re.MULTILINE)
    assert row is not None, text
    assert int(row[1].replace(",", "")) == 10_586_112  # Table 17 (1-1): 10.5M
    # FLOPs per image (2 per multiply-add) of the (1-1) module at d = 512 on 49 tokens: four d×d token
    # projections, three blocks of 12·d² linear work plus attention scores and mixing (4·N²·d).
    d, n = 512, 49
    expected = 2 * n * 4 * d * d + 3 * (2 * n * 12 * d * d + 4 * n * n * d)
    assert float(row[2]) * 1e9 == pytest.approx(expected, rel=0.01)
    assert re.search(r"^ce\s+ce\s+0\s", text, re.MULTILINE)
    assert "stages.stage4" in text


def test_info_needs_model_or_recipe(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["info"])
    assert main(["info", "--recipe", "no/such.yaml"]) == 2


@pytest.mark.parametrize("mask", ["random", "block", "grid"])
def test_table6_mask_recipes_differ_from_the_last_stage_recipe_only_in_the_mask(mask: str) -> None:
    """Table 6's fixed-ratio rows: r34-r18-last.yaml with ratio 0.75 and the row's mask strategy."""
    path = REPO / f"recipes/imagenet/dpk/table6/mask-{mask}.yaml"
    cfg, base = (
        load_config(path).to_dict(),
        load_config(REPO / "recipes/imagenet/dpk/r34-r18-last.yaml").to_dict(),
    )
    (term,) = [t for t in build_terms(load_config(path).loss) if isinstance(t, DynamicPriorKnowledge)]
    assert (term.mask, term.ratio) == (mask, 0.75)
    assert (
        cfg["reference"]["table"] == 6
        and cfg["reference"]["top1"] == {"random": 72.36, "block": 72.36, "grid": 72.32}[mask]
    )
    for key in ("name", "reference", "loss"):
        cfg.pop(key), base.pop(key)
    assert cfg == base
    assert load_config(path).loss["dpk"] == {
        **load_config(REPO / "recipes/imagenet/dpk/r34-r18-last.yaml").loss["dpk"],
        "ratio": 0.75,
        "mask": mask,
    }
