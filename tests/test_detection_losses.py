"""The detection and segmentation loss terms on hand-built TermInputs (tiny fake detector outputs, no model):
FGD's masks against masks worked out by hand, each FGD formula against an independent float64 loop, the
FGD term's assembly and presets, det_kd / seg_kd values and gradients, mimic's adapters, the detector's
own losses and the segmentation CE."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datakd.api.context import SetupContext, TermInputs, View
from datakd.errors import ConfigError
from datakd.losses import fgd_functional as FF
from datakd.losses.base import build_terms
from datakd.losses.det_kd import bernoulli_kd
from datakd.losses.fgd import PRESETS, GlobalContext
from datakd.losses.seg_kd import pixel_kd

# --------------------------------------------------------------------------------------------- helpers


def term_inputs(
    student_outputs: dict[str, Any] | None = None,
    teacher_outputs: dict[str, Any] | None = None,
    student_features: dict[str, torch.Tensor] | None = None,
    teacher_features: dict[str, torch.Tensor] | None = None,
    labels: torch.Tensor | None = None,
    logs: dict[str, Any] | None = None,
) -> TermInputs:
    view = View("main", torch.zeros(1), labels)
    sink = logs if logs is not None else {}
    return TermInputs(
        view,
        torch.zeros(1, 1),
        None,
        student_features or {},
        teacher_features or {},
        0,
        0,
        0,
        1,
        1,
        _log=lambda name, value, count=1: sink.__setitem__(name, float(value)),
        student_outputs=student_outputs or {},
        teacher_outputs=teacher_outputs or {},
    )


def setup_ctx(dense_shapes: dict[str, dict[str, tuple[int, ...]]] | None) -> SetupContext:
    extra = {"dense_shapes": dense_shapes} if dense_shapes is not None else {}
    return SetupContext(
        student=nn.Identity(),
        teacher=nn.Identity(),
        num_classes=3,
        num_train=0,
        train_labels=torch.zeros(0, dtype=torch.long),
        sample_images=torch.zeros(1, 3, 8, 8),
        device=torch.device("cpu"),
        batch_size=2,
        steps_per_epoch=1,
        total_epochs=1,
        normalizer=None,  # type: ignore[arg-type]
        mean=(0.0,),
        std=(1.0,),
        extra=extra,
    )


def built(spec: dict[str, Any], shapes: dict[str, dict[str, tuple[int, ...]]] | None = None):
    (term,) = build_terms(spec)
    if shapes is not None:
        term.setup(setup_ctx(shapes))
    return term


def scalar(x: torch.Tensor) -> float:
    return float(x.detach())


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------- FGD masks
A, B = 1 / 12, 1 / 25
# Box A [0.5, 1.2, 2.5, 3.0]: columns floor(.5)=0 .. ceil(2.5)=3, rows floor(1.2)=1 .. ceil(3)=3 (inclusive)
# -> 4 × 3 cells, 1/12. Box B [2.2, 2, 6, 6] touches the right and bottom edge: columns 2..6, rows 2..6 ->
# 5 × 5 = 25 counted (the authors count before cutting at the edge) though only 4 × 4 are on the map;
# where the two overlap the larger value (A's) wins.
HAND_FG = torch.tensor(
    [
        [0, 0, 0, 0, 0, 0],
        [A, A, A, A, 0, 0],
        [A, A, A, A, B, B],
        [A, A, A, A, B, B],
        [0, 0, B, B, B, B],
        [0, 0, B, B, B, B],
    ]
)
HAND_BG = (HAND_FG == 0).float() / 12  # 36 cells − 24 covered


def test_fgd_masks_match_hand_computed_masks() -> None:
    boxes = torch.tensor([[0.5, 1.2, 2.5, 3.0], [2.2, 2.0, 6.0, 6.0]])
    fg, bg = FF.box_masks([boxes], [(6, 6)], (6, 6))
    torch.testing.assert_close(fg[0], HAND_FG)
    torch.testing.assert_close(bg[0], HAND_BG)


def test_fgd_masks_scale_boxes_by_the_image_size_and_handle_empty_images() -> None:
    # An image of 12 rows × 24 columns on a 6×6 map: x / 4, y / 2 gives back the hand example.
    boxes = torch.tensor([[2.0, 2.4, 10.0, 6.0], [8.8, 4.0, 24.0, 12.0]])
    fg, bg = FF.box_masks([boxes, torch.zeros(0, 4)], [(12, 24), (30, 30)], (6, 6))
    torch.testing.assert_close(fg[0], HAND_FG)
    torch.testing.assert_close(bg[0], HAND_BG)
    assert fg[1].sum() == 0
    torch.testing.assert_close(bg[1], torch.full((6, 6), 1 / 36))


def test_fgd_background_is_zero_when_every_cell_is_foreground() -> None:
    fg, bg = FF.box_masks([torch.tensor([[0.0, 0.0, 6.0, 6.0]])], [(6, 6)], (6, 6))
    torch.testing.assert_close(fg[0], torch.full((6, 6), 1 / 49))
    assert bg.sum() == 0


# ----------------------------------------------------------------------------------- FGD formulas (loops)
def loop_attention(f: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    n, c, h, w = f.shape
    spatial, channel = torch.zeros(n, h, w, dtype=torch.float64), torch.zeros(n, c, dtype=torch.float64)
    for i in range(n):
        s_raw = [[sum(abs(float(f[i, k, y, x])) for k in range(c)) / c for x in range(w)] for y in range(h)]
        z = sum(math.exp(v / t) for row in s_raw for v in row)
        for y in range(h):
            for x in range(w):
                spatial[i, y, x] = h * w * math.exp(s_raw[y][x] / t) / z
        c_raw = [
            sum(abs(float(f[i, k, y, x])) for y in range(h) for x in range(w)) / (h * w) for k in range(c)
        ]
        zc = sum(math.exp(v / t) for v in c_raw)
        for k in range(c):
            channel[i, k] = c * math.exp(c_raw[k] / t) / zc
    return spatial, channel


def maps(seed: int, n: int = 2, c: int = 4, h: int = 3, w: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    return (
        torch.randn(n, c, h, w, generator=g, dtype=torch.float64),
        torch.randn(n, c, h, w, generator=g, dtype=torch.float64),
    )


def test_fgd_attention_matches_loops_and_sums_to_positions_and_channels() -> None:
    fs, _ = maps(0)
    spatial, channel = FF.attention(fs, 0.5)
    ref_s, ref_c = loop_attention(fs, 0.5)
    torch.testing.assert_close(spatial, ref_s)
    torch.testing.assert_close(channel, ref_c)
    torch.testing.assert_close(spatial.sum(dim=(1, 2)), torch.full((2,), 15.0, dtype=torch.float64))
    torch.testing.assert_close(channel.sum(dim=1), torch.full((2,), 4.0, dtype=torch.float64))


def test_fgd_focal_feature_loss_matches_loops() -> None:
    fs, ft = maps(1)
    mask = torch.rand(2, 3, 5, generator=gen(2), dtype=torch.float64)
    spatial_t, channel_t = FF.attention(ft, 0.8)
    got = FF.focal_feature_loss(fs, ft, mask, spatial_t, channel_t)
    n, c, h, w = fs.shape
    ref = 0.0
    for i in range(n):
        for k in range(c):
            for y in range(h):
                for x in range(w):
                    diff = float(fs[i, k, y, x] - ft[i, k, y, x])
                    ref += float(mask[i, y, x] * spatial_t[i, y, x] * channel_t[i, k]) * diff * diff
    assert scalar(got) == pytest.approx(ref / n, rel=1e-12)


def test_fgd_attention_loss_matches_loops() -> None:
    fs, ft = maps(3)
    s_s, c_s = FF.attention(fs, 0.5)
    s_t, c_t = FF.attention(ft, 0.5)
    ref = 0.0
    for i in range(2):
        ref += sum(abs(float(c_s[i, k] - c_t[i, k])) for k in range(4))
        ref += sum(abs(float(s_s[i, y, x] - s_t[i, y, x])) for y in range(3) for x in range(5))
    assert float(FF.attention_loss(s_s, s_t, c_s, c_t)) == pytest.approx(ref / 2, rel=1e-12)


def loop_global_context(block: GlobalContext, f: torch.Tensor) -> torch.Tensor:
    """GC(F) = F + W2·ReLU(LN(W1·context + b1)) + b2 with the block's weights, one number at a time."""
    n, c, h, w = f.shape
    wk, bk = block.key.weight.view(c), float(block.key.bias)
    conv1, ln, conv2 = block.transform[0], block.transform[1], block.transform[3]
    hidden = conv1.out_channels
    out = f.clone()
    for i in range(n):
        keys = [
            [sum(float(wk[k] * f[i, k, y, x]) for k in range(c)) + bk for x in range(w)] for y in range(h)
        ]
        z = sum(math.exp(v) for row in keys for v in row)
        context = [
            sum(math.exp(keys[y][x]) / z * float(f[i, k, y, x]) for y in range(h) for x in range(w))
            for k in range(c)
        ]
        mid = [
            sum(float(conv1.weight[j, k, 0, 0]) * context[k] for k in range(c)) + float(conv1.bias[j])
            for j in range(hidden)
        ]
        mean = sum(mid) / hidden
        var = sum((v - mean) ** 2 for v in mid) / hidden
        normed = [
            (v - mean) / math.sqrt(var + ln.eps) * float(ln.weight[j, 0, 0]) + float(ln.bias[j, 0, 0])
            for j, v in enumerate(mid)
        ]
        relu = [max(v, 0.0) for v in normed]
        for k in range(c):
            add = sum(float(conv2.weight[k, j, 0, 0]) * relu[j] for j in range(hidden)) + float(conv2.bias[k])
            out[i, k] += add
    return out


def test_fgd_global_context_and_relation_loss_match_loops() -> None:
    torch.manual_seed(0)
    gs, gt = GlobalContext(4).double(), GlobalContext(4).double()
    for block in (gs, gt):  # W2 starts at zero; give it values so that the whole block is exercised
        with torch.no_grad():
            for p in block.parameters():
                p.add_(0.3 * torch.randn_like(p))
    fs, ft = maps(4)
    with torch.no_grad():
        out_s, out_t = gs(fs), gt(ft)
        torch.testing.assert_close(out_s, loop_global_context(gs, fs))
        torch.testing.assert_close(out_t, loop_global_context(gt, ft))
        ref = float(((loop_global_context(gs, fs) - loop_global_context(gt, ft)) ** 2).sum()) / 2
        assert float(FF.relation_loss(out_s, out_t)) == pytest.approx(ref, rel=1e-10)


def test_fgd_global_context_starts_as_the_identity() -> None:
    fs, _ = maps(5)
    block = GlobalContext(4).double()
    with torch.no_grad():
        torch.testing.assert_close(block(fs), fs)


# --------------------------------------------------------------------------------------------- FGD term
FPN_SHAPES = {"fpn.0": (4, 6, 6), "fpn.1": (4, 3, 3), "fpn.pool": (4, 2, 2)}


def det_outputs(family: str, boxes: list[torch.Tensor], sizes: list[tuple[int, int]]) -> dict[str, Any]:
    return {
        "family": family,
        "targets": [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.long)} for b in boxes],
        "image_sizes": sizes,
        "padded_size": (24, 24),
    }


def fpn(seed: int, channels: int = 4) -> dict[str, torch.Tensor]:
    g = gen(seed)
    return {tap: torch.randn(2, channels, *shape[1:], generator=g) for tap, shape in FPN_SHAPES.items()}


def test_fgd_term_sums_the_weighted_parts_over_the_default_levels() -> None:
    term = built({"fgd": {"preset": "two_stage"}}, {"student": FPN_SHAPES, "teacher": FPN_SHAPES})
    assert term.levels == ["0", "1"]  # R-CNN's "pool" is not one of FGD's levels (P2-P5)
    assert term.student_taps == ["fpn.0", "fpn.1"] == term.teacher_taps
    assert all(isinstance(m.align, nn.Identity) for m in term.level_modules.values())
    boxes = [torch.tensor([[2.0, 2.0, 14.0, 10.0]]), torch.tensor([[0.0, 0.0, 20.0, 20.0], [4.0, 4, 8, 8]])]
    outputs = det_outputs("rcnn", boxes, [(24, 24), (20, 22)])
    fs, ft = fpn(0), fpn(1)
    logs: dict[str, Any] = {}
    got = term(term_inputs(outputs, outputs, fs, ft, logs=logs)).detach()
    alpha, beta, gamma, lam, temp = PRESETS["two_stage"]
    ref = 0.0
    for level in ("0", "1"):
        s, t = fs[f"fpn.{level}"], ft[f"fpn.{level}"]
        fg, bg = FF.box_masks([b.float() for b in boxes], [(24, 24), (20, 22)], tuple(t.shape[-2:]))
        sp_t, ch_t = FF.attention(t, temp)
        sp_s, ch_s = FF.attention(s, temp)
        ref += alpha * float(FF.focal_feature_loss(s, t, fg, sp_t, ch_t))
        ref += beta * float(FF.focal_feature_loss(s, t, bg, sp_t, ch_t))
        ref += gamma * float(FF.attention_loss(sp_s, sp_t, ch_s, ch_t))
        ref += lam * float(FF.relation_loss(s, t))  # GC blocks are the identity at start
    assert scalar(got) == pytest.approx(ref, rel=1e-5)
    assert set(logs) == {"fgd_fg", "fgd_bg", "fgd_att", "fgd_rel"}


def test_fgd_is_zero_for_equal_features_and_trains_both_gc_blocks() -> None:
    term = built({"fgd": {"levels": ["fpn.0"]}}, {"student": FPN_SHAPES, "teacher": FPN_SHAPES})
    outputs = det_outputs("retinanet", [torch.tensor([[2.0, 2.0, 14.0, 10.0]])] * 2, [(24, 24)] * 2)
    same = fpn(0)
    assert scalar(term(term_inputs(outputs, outputs, same, same))) == 0.0
    student = {k: v.clone().requires_grad_(True) for k, v in fpn(1).items()}
    for module in term.level_modules.values():  # as after some training: W2 no longer zero
        for block in (module.gc_student, module.gc_teacher):
            nn.init.normal_(block.transform[-1].weight, std=0.1)
    term(term_inputs(outputs, outputs, student, same)).backward()
    level = term.level_modules["0"]
    for block in (level.gc_student, level.gc_teacher):
        assert block.key.weight.grad is not None and block.key.weight.grad.abs().sum() > 0
        assert block.transform[-1].weight.grad.abs().sum() > 0
    assert student["fpn.0"].grad.abs().sum() > 0


def test_fgd_presets_by_family_overrides_and_align_conv() -> None:
    shapes = {"student": {"fpn.0": (2, 6, 6)}, "teacher": {"fpn.0": (4, 6, 6)}}
    term = built({"fgd": {"temperature": 0.3, "beta_bg": 0.0}}, shapes)
    assert isinstance(term.level_modules["0"].align, nn.Conv2d)
    assert term.level_modules["0"].align.in_channels == 2
    assert term.level_modules["0"].gc_student.key.in_channels == 4
    assert term.hyper_parameters("fcos") == (1.6e-3, 0.0, 8e-4, 8e-6, 0.3)
    assert term.hyper_parameters("maskrcnn") == (5e-5, 0.0, 5e-5, 5e-7, 0.3)
    fixed = built({"fgd": {"preset": "retinanet"}})
    assert fixed.hyper_parameters("rcnn") == PRESETS["retinanet"]


def test_fgd_and_mimic_options_fail_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"unknown fgd.preset 'retina'.*valid choices"):
        built({"fgd": {"preset": "retina"}})
    with pytest.raises(ConfigError, match=r"unknown fgd.mask_scale 'pad'.*valid choices: padded, unpadded"):
        built({"fgd": {"mask_scale": "pad"}})
    with pytest.raises(ConfigError, match=r"fgd\.temperature must be positive"):
        built({"fgd": {"temperature": 0}})
    with pytest.raises(ConfigError, match="task: detection only"):
        built({"fgd": {}}, {})
    with pytest.raises(ConfigError, match=r"teacher has no FPN level 'p7'; valid choices: 0, 1, pool"):
        built({"mimic": {"levels": ["p7"]}}, {"student": {"fpn.p7": (4, 1, 1)}, "teacher": FPN_SHAPES})


# ------------------------------------------------------------------------------------------------ mimic
def test_mimic_builds_one_adapter_per_level_and_averages_the_mse() -> None:
    shapes = {
        "student": {"fpn.0": (2, 6, 6), "fpn.1": (2, 3, 3)},
        "teacher": {"fpn.0": (5, 6, 6), "fpn.1": (5, 3, 3)},
    }
    term = built({"mimic": {}}, shapes)
    assert list(term.adapters) == ["0", "1"]
    for adapter in term.adapters.values():
        assert (adapter.in_channels, adapter.out_channels, adapter.kernel_size) == (2, 5, (1, 1))
    assert {n for n, _ in term.named_parameters()} == {
        f"adapters.{k}.{p}" for k in "01" for p in ("weight", "bias")
    }
    g = gen(0)
    fs = {"fpn.0": torch.randn(2, 2, 6, 6, generator=g), "fpn.1": torch.randn(2, 2, 3, 3, generator=g)}
    ft = {"fpn.0": torch.randn(2, 5, 6, 6, generator=g), "fpn.1": torch.randn(2, 5, 3, 3, generator=g)}
    got = term(term_inputs(student_features=fs, teacher_features=ft))
    with torch.no_grad():
        ref = sum(F.mse_loss(term.adapters[k](fs[f"fpn.{k}"]), ft[f"fpn.{k}"]) for k in "01") / 2
    assert scalar(got) == pytest.approx(float(ref))


def test_mimic_rejects_levels_of_different_sizes() -> None:
    shapes = {"student": {"fpn.0": (2, 6, 6)}, "teacher": {"fpn.0": (5, 3, 3)}}
    with pytest.raises(ConfigError, match="same strides"):
        built({"mimic": {}}, shapes)


# ----------------------------------------------------------------------------------------------- det_kd
def one_stage(logits: torch.Tensor, family: str = "retinanet") -> dict[str, Any]:
    return {"family": family, "cls_logits": logits}


def two_stage(logits: torch.Tensor) -> dict[str, Any]:
    return {"family": "rcnn", "roi_class_logits": logits}


def test_det_kd_is_zero_for_equal_logits_and_positive_otherwise() -> None:
    term = built({"det_kd": {}})
    cls = torch.randn(2, 30, 4, generator=gen(0))
    assert scalar(term(term_inputs(one_stage(cls), one_stage(cls.clone())))) == 0.0
    assert scalar(term(term_inputs(one_stage(cls), one_stage(cls + 0.5)))) > 0
    roi = torch.randn(12, 4, generator=gen(1))
    assert scalar(term(term_inputs(two_stage(roi), two_stage(roi.clone())))) == pytest.approx(0.0, abs=1e-7)
    assert scalar(term(term_inputs(two_stage(roi), two_stage(roi.flip(1))))) > 0


def test_det_kd_one_stage_is_the_per_class_bernoulli_kl() -> None:
    s = torch.randn(2, 5, 3, generator=gen(2), dtype=torch.float64)
    t = torch.randn(2, 5, 3, generator=gen(3), dtype=torch.float64)
    tau = 2.0
    ref = 0.0
    for i in range(2):
        for a in range(5):
            for k in range(3):
                p = 1 / (1 + math.exp(-float(t[i, a, k]) / tau))
                q = 1 / (1 + math.exp(-float(s[i, a, k]) / tau))
                ref += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    got = bernoulli_kd(s, t, tau)
    assert scalar(got) == pytest.approx(tau**2 * ref / 10, rel=1e-10)
    term = built({"det_kd": {"temperature": tau}})
    assert scalar(term(term_inputs(one_stage(s, "fcos"), one_stage(t, "fcos")))) == pytest.approx(scalar(got))


def test_det_kd_two_stage_is_hinton_kd_on_the_box_head() -> None:
    s, t = torch.randn(6, 4, generator=gen(4)), torch.randn(6, 4, generator=gen(5))
    ref = 0.0
    for r in range(6):
        p, q = F.softmax(t[r], 0), F.log_softmax(s[r], 0)
        ref += float((p * (p.log() - q)).sum())
    term = built({"det_kd": {}})
    assert scalar(term(term_inputs(two_stage(s), {**two_stage(t), "family": "maskrcnn"}))) == pytest.approx(
        ref / 6, rel=1e-5
    )


def test_det_kd_gradients_pass_gradcheck() -> None:
    t = torch.randn(2, 4, 3, generator=gen(6), dtype=torch.float64)
    s = torch.randn(2, 4, 3, generator=gen(7), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: bernoulli_kd(x, t, 1.5), (s,))
    term = built({"det_kd": {"temperature": 2.0}})
    t_roi = torch.randn(5, 4, generator=gen(8), dtype=torch.float64)
    s_roi = torch.randn(5, 4, generator=gen(9), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: term(term_inputs(two_stage(x), two_stage(t_roi))), (s_roi,))


def test_det_kd_needs_matching_families_and_shapes() -> None:
    term = built({"det_kd": {}})
    with pytest.raises(ConfigError, match="pairs a retinanet student with a rcnn teacher"):
        term(term_inputs(one_stage(torch.zeros(1, 3, 2)), two_stage(torch.zeros(3, 2))))
    with pytest.raises(ConfigError, match="same anchors and classes"):
        term(term_inputs(one_stage(torch.zeros(1, 3, 2)), one_stage(torch.zeros(1, 4, 2))))
    with pytest.raises(ConfigError, match=r"det_kd\.temperature must be positive"):
        built({"det_kd": {"temperature": -1}})


# ----------------------------------------------------------------------------------------------- seg_kd
def test_seg_kd_weights_out_and_aux_and_matches_per_pixel_loops() -> None:
    g = gen(10)
    s_out, t_out = torch.randn(2, 3, 2, 4, generator=g), torch.randn(2, 3, 2, 4, generator=g)
    s_aux, t_aux = torch.randn(2, 3, 2, 4, generator=g), torch.randn(2, 3, 2, 4, generator=g)

    def loop_kd(s: torch.Tensor, t: torch.Tensor) -> float:
        total = 0.0
        for i in range(2):
            for y in range(2):
                for x in range(4):
                    p, q = F.softmax(t[i, :, y, x], 0), F.log_softmax(s[i, :, y, x], 0)
                    total += float((p * (p.log() - q)).sum())
        return total / 16

    term = built({"seg_kd": {}})  # τ = 1, out 1.5, aux 0.5 (TST)
    logs: dict[str, Any] = {}
    got = term(term_inputs({"out": s_out, "aux": s_aux}, {"out": t_out, "aux": t_aux}, logs=logs))
    ref = 1.5 * loop_kd(s_out, t_out) + 0.5 * loop_kd(s_aux, t_aux)
    assert scalar(got) == pytest.approx(ref, rel=1e-5)
    assert logs["seg_kd_out"] == pytest.approx(loop_kd(s_out, t_out), rel=1e-5)
    assert float(pixel_kd(s_out, s_out.clone())) == pytest.approx(0.0, abs=1e-7)


def test_seg_kd_gradcheck_and_missing_aux() -> None:
    t = torch.randn(1, 3, 2, 2, generator=gen(11), dtype=torch.float64)
    s = torch.randn(1, 3, 2, 2, generator=gen(12), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: pixel_kd(x, t, 2.0), (s,))
    term = built({"seg_kd": {}})
    with pytest.raises(ConfigError, match="teacher has no auxiliary head"):
        term(term_inputs({"out": s, "aux": s}, {"out": t}))
    no_aux = built({"seg_kd": {"aux_weight": 0}})
    assert scalar(no_aux(term_inputs({"out": s}, {"out": t}))) > 0


# ------------------------------------------------------------------------------------ detector / seg_ce
def test_detector_term_sums_the_loss_dict_and_logs_each_part() -> None:
    term = built({"detector": {}})
    assert not term.needs_teacher and not term.needs_labels
    losses = OrderedDict(
        loss_classifier=torch.tensor(0.5),
        loss_box_reg=torch.tensor(0.25),
        loss_objectness=torch.tensor(0.125),
    )
    logs: dict[str, Any] = {}
    assert scalar(term(term_inputs({"losses": losses}, logs=logs))) == pytest.approx(0.875)
    assert logs == {"det_classifier": 0.5, "det_box_reg": 0.25, "det_objectness": 0.125}
    with pytest.raises(ConfigError, match="task: detection only"):
        term(term_inputs({}))


def test_seg_ce_ignores_255_and_adds_the_weighted_aux_head() -> None:
    g = gen(13)
    out, aux = torch.randn(2, 3, 2, 3, generator=g), torch.randn(2, 3, 2, 3, generator=g)
    labels = torch.tensor([[[0, 1, 255], [2, 2, 1]], [[255, 255, 0], [1, 0, 2]]])
    term = built({"seg_ce": {}})
    assert not term.needs_teacher and term.needs_labels

    def loop_ce(logits: torch.Tensor) -> float:
        total, count = 0.0, 0
        for i in range(2):
            for y in range(2):
                for x in range(3):
                    if labels[i, y, x] != 255:
                        total -= float(F.log_softmax(logits[i, :, y, x], 0)[labels[i, y, x]])
                        count += 1
        return total / count

    got = term(term_inputs({"out": out, "aux": aux}, labels=labels))
    assert scalar(got) == pytest.approx(loop_ce(out) + 0.4 * loop_ce(aux), rel=1e-5)
    ignored = torch.full_like(labels, 255)
    assert scalar(term(term_inputs({"out": out, "aux": aux}, labels=ignored))) == 0.0
    with pytest.raises(ConfigError, match="no auxiliary head"):
        term(term_inputs({"out": out}, labels=labels))
