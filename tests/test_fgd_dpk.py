"""FGD + DPK (paper 004 Eq. 9): the loss is FGD's with DPK's hybrid features F^h in place of the aligned
student map (checked by calling FGD's formulas on F^h), π per FPN level is 1 − CKA clamped to [0, 1] or a
fixed value, the module works on maps whose size changes per batch, options fail in one line, and the term
trains inside a real tiny detection run on the scenes test bed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from datakd.cli import main
from datakd.config import config_from_dict
from datakd.engine.build import build_trainer
from datakd.engine.metrics import read_metrics
from datakd.errors import ConfigError, DatakdError
from datakd.losses import fgd_functional as FF
from datakd.losses.base import build_terms
from datakd.losses.dpk_blocks import sincos_2d_embedding
from datakd.losses.fgd_dpk import DPK_PRESETS, LevelTransform, level_patch
from datakd.metrics import cka_minibatch
from tests.test_detection_losses import det_outputs, setup_ctx, term_inputs

torch.set_num_threads(1)

SMALL = {"width": 16, "heads": 2, "encoder_depth": 1, "decoder_depth": 1}
BOXES = [torch.tensor([[2.0, 2.0, 14.0, 10.0]]), torch.tensor([[0.0, 0.0, 20.0, 20.0], [4.0, 4, 8, 8]])]


def built(options: dict[str, Any], shapes: dict[str, dict[str, tuple[int, ...]]], batch: int = 4):
    (term,) = build_terms({"fgd_dpk": {**SMALL, **options}})
    ctx = setup_ctx(shapes)
    ctx.batch_size = batch
    term.setup(ctx)
    return term


def outputs(batch: int, family: str = "retinanet") -> dict[str, Any]:
    boxes = [BOXES[i % 2] for i in range(batch)]
    sizes = [(24, 24) if i % 2 == 0 else (20, 22) for i in range(batch)]
    return det_outputs(family, boxes, sizes)


def maps(seed: int, batch: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {tap: torch.randn(batch, *shape, generator=g) for tap, shape in shapes.items()}


# ------------------------------------------------------------------------------------------- Eq. 9
def test_eq9_is_fgd_with_the_hybrid_features_in_place_of_the_aligned_student() -> None:
    # Student 2 channels, teacher 4: FGD's align conv feeds the attention and global terms, DPK's patch
    # embedding aligns the channels of F^h; the fg/bg terms see F^h only.
    s_shapes = {"fpn.0": (2, 6, 6), "fpn.1": (2, 3, 3)}
    t_shapes = {"fpn.0": (4, 6, 6), "fpn.1": (4, 3, 3)}
    term = built({"preset": "retinanet", "patch_size": [2, 1]}, {"student": s_shapes, "teacher": t_shapes})
    fs, ft = maps(0, 4, s_shapes), maps(1, 4, t_shapes)
    out = outputs(4)
    sizes = out["image_sizes"]
    torch.manual_seed(7)
    logs: dict[str, Any] = {}
    got = float(term(term_inputs(out, out, fs, ft, logs=logs)).detach())

    alpha, beta, gamma, lam, temp = DPK_PRESETS["retinanet"]
    assert (alpha, beta) == (2e-3, 5e-4)
    torch.manual_seed(7)  # the same random token masks, level by level in the same order
    ref, ref_fgd = 0.0, 0.0
    with torch.no_grad():
        for level in ("0", "1"):
            s, t = fs[f"fpn.{level}"], ft[f"fpn.{level}"]
            ratio = (1.0 - cka_minibatch(t, s)).clamp(0.0, 1.0)
            hybrid = term.hybrid_features(level, s, t, ratio)
            assert hybrid.shape == t.shape
            aligned = term.level_modules[level].align(s)
            boxes = [x["boxes"].float() for x in out["targets"]]
            fg, bg = FF.box_masks(boxes, sizes, tuple(t.shape[-2:]))
            sp_t, ch_t = FF.attention(t, temp)
            sp_s, ch_s = FF.attention(aligned, temp)
            shared = gamma * float(FF.attention_loss(sp_s, sp_t, ch_s, ch_t))
            shared += lam * float(FF.relation_loss(aligned, t))  # GC blocks are the identity at start
            ref += alpha * float(FF.focal_feature_loss(hybrid, t, fg, sp_t, ch_t))
            ref += beta * float(FF.focal_feature_loss(hybrid, t, bg, sp_t, ch_t)) + shared
            ref_fgd += alpha * float(FF.focal_feature_loss(aligned, t, fg, sp_t, ch_t))
            ref_fgd += beta * float(FF.focal_feature_loss(aligned, t, bg, sp_t, ch_t)) + shared
    assert got == pytest.approx(ref, rel=1e-5)
    assert abs(got - ref_fgd) > 1e-3 * abs(ref_fgd)  # not FGD's value: the fg/bg terms saw F^h
    assert {"fgd_dpk_fg", "fgd_dpk_bg", "fgd_dpk_att", "fgd_dpk_rel"} <= set(logs)
    assert {"fgd_dpk_pi_0", "fgd_dpk_pi_1", "fgd_dpk_cka_0", "fgd_dpk_cka_1"} <= set(logs)


def test_presets_follow_the_paper_by_family() -> None:
    shapes = {"fpn.0": (4, 6, 6)}
    term = built({}, {"student": shapes, "teacher": shapes})
    assert term.hyper_parameters("rcnn")[:2] == (5e-5, 2.5e-5)
    assert term.hyper_parameters("maskrcnn")[:2] == (5e-5, 2.5e-5)
    assert term.hyper_parameters("retinanet")[:2] == (2e-3, 5e-4)
    assert term.hyper_parameters("fcos")[:2] == (2e-3, 5e-4)
    assert term.hyper_parameters("retinanet")[2:] == (5e-4, 5e-6, 0.5)  # FGD's γ, λ, T
    assert built({"alpha_fg": 0.1}, {"student": shapes, "teacher": shapes}).hyper_parameters("rcnn")[0] == 0.1


def test_gradients_reach_the_student_both_encoders_the_decoder_and_the_gc_blocks() -> None:
    shapes = {"fpn.0": (4, 6, 6)}
    term = built({"ratio": 0.5}, {"student": shapes, "teacher": shapes})
    for block in (term.level_modules["0"].gc_student, term.level_modules["0"].gc_teacher):
        nn.init.normal_(block.transform[-1].weight, std=0.1)  # as after some training
    fs = {k: v.requires_grad_(True) for k, v in maps(0, 4, shapes).items()}
    term(term_inputs(outputs(4), outputs(4), fs, maps(1, 4, shapes))).backward()
    assert fs["fpn.0"].grad.abs().sum() > 0
    module = term.transforms["0"]
    for part in (module.student_embed, module.teacher_embed, module.decoder, module.head):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters() if p.dim() > 1)
    assert term.level_modules["0"].gc_teacher.key.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------- π per level
def test_pi_per_level_is_one_minus_cka_near_zero_for_equal_maps_and_near_one_for_unrelated() -> None:
    shapes = {"fpn.0": (4, 6, 6), "fpn.1": (4, 3, 3)}
    term = built({}, {"student": shapes, "teacher": shapes}, batch=16)
    ft = maps(1, 16, shapes)
    fs = {"fpn.0": ft["fpn.0"].clone(), "fpn.1": maps(2, 16, shapes)["fpn.1"]}  # level 0 equal, 1 unrelated
    logs: dict[str, Any] = {}
    term(term_inputs(outputs(16), outputs(16), fs, ft, logs=logs))
    assert logs["fgd_dpk_pi_0"] == pytest.approx(0.0, abs=1e-6)
    assert logs["fgd_dpk_pi_1"] > 0.8
    for level in ("0", "1"):
        assert 0.0 <= logs[f"fgd_dpk_pi_{level}"] <= 1.0
        cka = float(cka_minibatch(ft[f"fpn.{level}"], fs[f"fpn.{level}"]))
        assert logs[f"fgd_dpk_cka_{level}"] == pytest.approx(cka)
        assert logs[f"fgd_dpk_pi_{level}"] == pytest.approx(min(max(1.0 - cka, 0.0), 1.0))
    # A negatively aligned level (CKA clamps at its lower end too) keeps π inside [0, 1].
    assert 0.0 <= float(term.last_ratio.max()) <= 1.0


def test_mask_takes_round_pi_n_teacher_tokens_and_a_fixed_ratio_is_honoured() -> None:
    module = LevelTransform(4, 4, 2, 16, 2, 1, 1, 4.0, "sincos", (3, 3))
    fs, ft = torch.randn(3, 4, 6, 6), torch.randn(3, 4, 6, 6)
    for ratio in (0.0, 0.25, 0.6, 1.0):
        _, mask = module(fs, ft, ratio)
        assert mask.shape == (3, 9) and mask.sum(dim=1).tolist() == [math.floor(ratio * 9 + 0.5)] * 3
    with torch.no_grad():  # π = 0: F^h ignores the teacher map; π = 1: it ignores the student map
        a, _ = module(fs, ft, 0.0)
        b, _ = module(fs, torch.randn_like(ft), 0.0)
        c, _ = module(fs, ft, 1.0)
        d, _ = module(torch.randn_like(fs), ft, 1.0)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(c, d)
    shapes = {"fpn.0": (4, 6, 6), "fpn.1": (4, 3, 3)}
    term = built({"ratio": 0.25}, {"student": shapes, "teacher": shapes})
    logs: dict[str, Any] = {}
    term(term_inputs(outputs(4), outputs(4), maps(0, 4, shapes), maps(1, 4, shapes), logs=logs))
    assert logs["fgd_dpk_pi_0"] == logs["fgd_dpk_pi_1"] == 0.25
    assert "fgd_dpk_cka_0" in logs  # CKA is still logged next to a fixed π


def test_a_trailing_batch_of_fewer_than_four_reuses_the_last_pi() -> None:
    shapes = {"fpn.0": (4, 6, 6)}
    term = built({}, {"student": shapes, "teacher": shapes})
    logs: dict[str, Any] = {}
    term(term_inputs(outputs(4), outputs(4), maps(0, 4, shapes), maps(1, 4, shapes), logs=logs))
    first = logs["fgd_dpk_pi_0"]
    term(term_inputs(outputs(2), outputs(2), maps(2, 2, shapes), maps(3, 2, shapes), logs=logs))
    assert logs["fgd_dpk_pi_0"] == first
    fresh = built({}, {"student": shapes, "teacher": shapes})
    with pytest.raises(DatakdError, match="at least 4 images, got 2"):
        fresh(term_inputs(outputs(2), outputs(2), maps(2, 2, shapes), maps(3, 2, shapes)))


# ------------------------------------------------------------------------ map sizes and positional embeddings
@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_maps_of_other_sizes_than_at_setup_are_padded_and_cropped(pos_embed: str) -> None:
    shapes = {"fpn.0": (4, 8, 8)}
    term = built({"pos_embed": pos_embed, "max_tokens": 16}, {"student": shapes, "teacher": shapes})
    assert term.transforms["0"].patch == 2  # 8×8 at patch 2: 16 tokens
    for size in ((8, 8), (7, 9), (11, 5)):  # COCO: each batch's padded size differs
        other = {"fpn.0": (4, *size)}
        fs = {k: v.requires_grad_(True) for k, v in maps(0, 4, other).items()}
        loss = term(term_inputs(outputs(4), outputs(4), fs, maps(1, 4, other)))
        assert torch.isfinite(loss)
        loss.backward()
        assert fs["fpn.0"].grad.abs().sum() > 0
        hybrid = term.hybrid_features("0", fs["fpn.0"], maps(1, 4, other)["fpn.0"], 0.5)
        assert hybrid.shape == (4, 4, *size)


def test_sincos_embedding_separates_rows_and_columns_and_extends_with_the_grid() -> None:
    small, large = sincos_2d_embedding(2, 3, 8)[0], sincos_2d_embedding(4, 5, 8)[0]
    assert small.shape == (6, 8) and large.shape == (20, 8)
    grid = large.reshape(4, 5, 8)
    torch.testing.assert_close(grid[:, 0, :4], grid[:, 3, :4])  # first half: the row only
    torch.testing.assert_close(grid[0, :, 4:], grid[2, :, 4:])  # second half: the column only
    torch.testing.assert_close(grid[:2, :3].reshape(6, 8), small)  # a token keeps its embedding
    assert level_patch(100, 168, 300) == 8 and level_patch(12, 12, 64) == 2 and level_patch(1, 1, 64) == 1


# --------------------------------------------------------------------------------------------- options
def test_bad_options_fail_in_one_line_naming_the_value_and_the_choices() -> None:
    shapes = {"student": {"fpn.0": (4, 6, 6)}, "teacher": {"fpn.0": (4, 6, 6)}}
    cases = [
        ({"preset": "retina"}, r"unknown fgd_dpk.preset 'retina'.*valid choices: auto, fcos, retinanet"),
        (
            {"ratio": "dynamic"},
            r"unknown fgd_dpk.ratio \(or a number in \[0, 1\]\) 'dynamic'.*valid choices: cka",
        ),
        ({"ratio": 1.5}, r"fgd_dpk.ratio must be 'cka' or a number in \[0, 1\], got 1.5"),
        ({"pos_embed": "abs"}, r"unknown fgd_dpk.pos_embed 'abs'.*valid choices: learned, sincos"),
        ({"width": 18, "heads": 4}, r"fgd_dpk.width 18 is not divisible by fgd_dpk.heads 4"),
        ({"width": 6, "heads": 2}, r"divisible by 4 for pos_embed=sincos"),
        ({"patch_size": 0}, r"fgd_dpk.patch_size must be a positive integer, got 0"),
        ({"encoder_depth": -1}, r"fgd_dpk.encoder_depth must be an integer >= 0, got -1"),
        ({"mask_scale": "pad"}, r"unknown fgd_dpk.mask_scale 'pad'.*valid choices: padded, unpadded"),
    ]
    for options, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as info:
            built(options, shapes)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"patch_size has 2 entries for 1 levels"):
        built({"patch_size": [2, 1]}, shapes)
    with pytest.raises(DatakdError, match=r"fgd_dpk.ratio=cka needs batches of at least 4 .* gets 2"):
        built({}, shapes, batch=2)
    built({"ratio": 0.5}, shapes, batch=2)  # a fixed π needs no CKA


# ------------------------------------------------------------------------------ a real tiny detection run
@pytest.fixture(scope="module")
def run(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("pycocotools")
    from datakd.data.dense.scenes import generate_scenes

    root = tmp_path_factory.mktemp("fgd-dpk")
    generate_scenes(fmnist_root, root / "bed", train=32, val=8, seed=1)
    data = {"dataset": "coco", "root": str(root / "bed"), "batch_size": 8, "eval_batch_size": 8, "workers": 0}
    common = {
        "task": "detection",
        "seed": 0,
        "device": "cpu",
        "quiet": True,
        "data": data,
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
        "schedule": {"name": "multistep", "milestones": [16, 22]},
        "engine": {"tensorboard": False},
    }
    teacher = {  # one epoch: a real checkpoint; the test is about the term's mechanics, not mAP
        **common,
        "name": "teacher",
        "out": str(root / "teacher"),
        "epochs": 1,
        "student": {"name": "retinanet_r18_fpn_tiny"},
        "loss": {"detector": {"weight": 1.0}},
    }
    build_trainer(config_from_dict(teacher), "train").fit()
    student = {
        **common,
        "name": "fgd-dpk",
        "out": str(root / "run"),
        "epochs": 3,
        "student": {"name": "retinanet_r18_fpn_nano"},
        "teacher": {"name": "retinanet_r18_fpn_tiny", "checkpoint": str(root / "teacher" / "last.pt")},
        "loss": {"detector": {"weight": 1.0}, "fgd_dpk": {"weight": 1.0, **SMALL}},
    }
    build_trainer(config_from_dict(student), "distill").fit()
    return root / "run"


def test_fgd_dpk_trains_inside_a_real_detection_run_and_plots_pi_per_level(run: Path, tmp_path: Path) -> None:
    rows = read_metrics(run / "metrics.csv")
    assert len(rows) == 3
    assert rows[-1]["loss_fgd_dpk"] < rows[0]["loss_fgd_dpk"]
    assert rows[-1]["loss_total"] < rows[0]["loss_total"]
    for level in ("0", "1", "2", "p6", "p7"):  # RetinaNet's P3-P7
        for r in rows:
            assert 0.0 <= r[f"fgd_dpk_pi_{level}"] <= 1.0
    pytest.importorskip("matplotlib")
    assert main(["plot", "dpk", str(run), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "dpk.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------ recipes
REPO = Path(__file__).resolve().parents[1]
TABLE4 = {  # paper 004 Table 4, mAP: (teacher, student, FGD, FGD + DPK)
    "retinanet_r101-retinanet_r50": (38.9, 37.4, 39.6, 39.7),
    "retinanet_r152-retinanet_r50": (39.9, 37.4, 39.7, 40.2),
    "retinanet_r101-retinanet_r18": (38.9, 33.1, 34.7, 35.8),
    "fasterrcnn_r101-fasterrcnn_r50": (39.9, 38.4, 40.4, 40.6),
    "fasterrcnn_r152-fasterrcnn_r50": (41.6, 38.4, 40.5, 41.2),
    "fasterrcnn_r101-fasterrcnn_r18": (39.9, 33.8, 36.0, 36.7),
}
COCO_LEVELS = {  # FPN levels at an 800×1216 image: RetinaNet P3-P7, Faster R-CNN P2-P5 (+ pool)
    "retinanet": {"0": (100, 152), "1": (50, 76), "2": (25, 38), "p6": (13, 19), "p7": (7, 10)},
    "fasterrcnn": {"0": (200, 304), "1": (100, 152), "2": (50, 76), "3": (25, 38), "pool": (13, 19)},
}


@pytest.mark.parametrize("folder", sorted(TABLE4))
def test_table4_recipes_carry_the_schedule_the_reference_and_build(folder: str) -> None:
    from datakd.config import load_config
    from datakd.models.registry import get_entry

    detector = folder.split("_")[0]
    _, _, fgd_map, dpk_map = TABLE4[folder]
    for arm, paper_map in (("fgd", fgd_map), ("fgd_dpk", dpk_map)):
        cfg = load_config(REPO / "recipes" / "coco" / "dpk" / folder / f"{arm}.yaml")
        assert (cfg.task, cfg.data.dataset, cfg.epochs, cfg.data.batch_size) == ("detection", "coco", 24, 16)
        assert (cfg.optim.name, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.9, 1e-4)
        assert cfg.optim.lr == (0.02 if detector == "fasterrcnn" else 0.01)
        assert cfg.schedule.milestones == [16, 22] and cfg.schedule.warmup_epochs > 0
        for model in (cfg.student.name, cfg.teacher.name):
            assert model.startswith(detector) and get_entry(model).family == "detection"
        ref = cfg.reference
        assert (ref["paper"], ref["table"], ref["map"]) == ("004", 4, paper_map)
        assert (ref["teacher_map"], ref["student_map"], ref["fgd_map"], ref["fgd_dpk_map"]) == TABLE4[folder]
        assert set(cfg.loss) == {"detector", arm}
    # The DPK term builds on COCO-sized levels with one patch per level (one token per 64×64 px).
    (term,) = build_terms({"fgd_dpk": {k: v for k, v in cfg.loss["fgd_dpk"].items() if k != "weight"}})
    shapes = {f"fpn.{k}": (256, *hw) for k, hw in COCO_LEVELS[detector].items()}
    ctx = setup_ctx({"student": shapes, "teacher": shapes})
    ctx.batch_size = cfg.data.batch_size
    term.setup(ctx)
    strides = [8, 16, 32, 64, 128] if detector == "retinanet" else [4, 8, 16, 32]
    assert [m.patch for m in term.transforms.values()] == [max(1, 64 // s) for s in strides]


def test_the_testbed_recipe_uses_the_tiny_teacher_and_nano_student() -> None:
    from datakd.config import load_config

    cfg = load_config(REPO / "recipes" / "testbed" / "retinanet_fgd_dpk.yaml")
    assert cfg.teacher.name.endswith("_tiny") and cfg.student.name.endswith("_nano")
    assert set(cfg.loss) == {"detector", "fgd_dpk"} and cfg.loss["fgd_dpk"]["width"] <= 128
    baseline = load_config(REPO / "recipes" / "testbed" / "retinanet_fgd.yaml")
    for part in ("data", "optim", "schedule", "teacher", "student"):
        assert getattr(cfg, part) == getattr(baseline, part), part
    assert cfg.epochs == baseline.epochs
