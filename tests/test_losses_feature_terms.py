"""The feature-baseline loss terms on real zoo models: default taps per architecture, connector shapes
for homogeneous and heterogeneous pairs (channel and spatial mismatch), agreement with the pure formulas,
the ReviewKD warm-up, `datakd list methods`, and one-line errors for bad options."""

from __future__ import annotations

import pytest
import torch

from datakd.api.context import SetupContext, TermInputs, View, record
from datakd.api.features import resolve_taps
from datakd.commands.listing import rows
from datakd.errors import ConfigError, DatakdError
from datakd.losses import relations as R
from datakd.losses.base import build_terms
from datakd.losses.feature_connectors import HintRegressor
from datakd.models import create
from tests.helpers import setup_context

METHODS = ("fitnet", "at", "sp", "cc", "rkd", "pkt", "vid", "crd", "reviewkd")
PAIRS = [  # teacher, student (the last two differ in spatial sizes at equal stage index)
    ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"),
    ("vgg13", "mobilenetv2"),
    ("resnet50", "vgg8"),
    ("resnet32x4", "shufflev1"),
]
_MODELS: dict[str, torch.nn.Module] = {}


def model(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        _MODELS[name] = create(name, 100)
    return _MODELS[name]


def setup_ctx(student: torch.nn.Module, teacher: torch.nn.Module) -> SetupContext:
    return setup_context(
        student,
        teacher,
        torch.randn(2, 3, 32, 32),
        num_classes=100,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        num_train=32,
        train_labels=torch.arange(32) % 100,
        batch_size=4,
    )


def built(spec: dict, teacher: str, student: str):
    terms = build_terms(spec)
    ctx = setup_ctx(model(student), model(teacher).eval())
    for term in terms:
        term.setup(ctx)
    return terms


def step_inputs(terms, teacher: str, student: str, b: int = 4, epoch: int = 0) -> TermInputs:
    x = torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    s_taps = [t for term in terms for t in term.student_taps]
    t_taps = [t for term in terms for t in term.teacher_taps]
    s_logits, s_feats = record(model(student), x, s_taps)
    with torch.no_grad():
        t_logits, t_feats = record(model(teacher).eval(), x, t_taps)
    view = View("main", x, torch.arange(b), indices=torch.arange(b))
    return TermInputs(view, s_logits, t_logits, s_feats, t_feats, epoch, 0, 0, 1, 240)


def shapes(name: str, taps: list[str]) -> list[tuple[int, ...]]:
    found = setup_ctx(model(name), model(name)).student_shapes(taps)
    return [found[t] for t in taps]


# ----------------------------------------------------------------------------------------- registry


def test_list_methods_describes_every_feature_baseline() -> None:
    described = dict(rows("methods"))
    for name in METHODS:
        assert name in described and len(described[name]) > 20, name


# ----------------------------------------------------------------------------------------- taps


def test_symbolic_taps_resolve_per_architecture() -> None:
    assert resolve_taps(model("resnet8x4"), ["all_stages"], "t") == ["stage1", "stage2", "stage3"]
    assert resolve_taps(model("vgg8"), ["last_stage"], "t") == ["stage4"]
    assert resolve_taps(model("resnet50"), ["all_stages", "pre_logits"], "t")[-2:] == ["stage4", "pre_logits"]
    with pytest.raises(DatakdError, match="has none"):
        resolve_taps(torch.nn.Linear(2, 2), ["all_stages"], "loss.at.student")


def test_unequal_tap_lists_fail_with_both_lists() -> None:
    with pytest.raises(ConfigError, match="pair one to one"):
        built({"at": {}}, "vgg13", "resnet8x4")  # 4 teacher stages vs 3 student stages


# ----------------------------------------------------------------------------------------- connectors


@pytest.mark.parametrize(("teacher", "student"), PAIRS)
def test_connectors_map_student_shapes_to_teacher_shapes(teacher: str, student: str) -> None:
    spec = {"fitnet": {}, "vid": {}, "cc": {}, "reviewkd": {}, "crd": {"nce_k": 4}, "at": {}, "sp": {}}
    fitnet, vid, cc, review, crd, at, sp = built(spec, teacher, student)
    inputs = step_inputs([fitnet, vid, cc, review, crd, at, sp], teacher, student)

    # FitNet: the regressed stage-2 map has the teacher's stage-2 shape (or the target is pooled to it).
    (fs, ft), regressor = fitnet.pairs(inputs)[0], fitnet.regressors[0]
    out = regressor(fs)
    assert out.shape[1] == ft.shape[1]
    assert out.shape[-2:] == (fs.shape[-2:] if regressor.pool_target else ft.shape[-2:])

    # VID: one regressor per stage, predicting teacher channels at the matched resolution.
    assert len(vid.regressors) == len(vid.student_taps) == len(vid.teacher_taps)
    for (fs, ft), reg in zip(vid.pairs(inputs), vid.regressors):
        ps, pt = R.match_spatial(fs, ft)
        assert reg(ps).shape == pt.shape and reg.variance().shape == (pt.shape[1],)

    # ReviewKD: every fused student level has the teacher level's shape.
    outputs = review.fuse([fs for fs, _ in review.pairs(inputs)])
    for out, (_, ft) in zip(outputs, review.pairs(inputs)):
        assert out.shape == (ft if ft.dim() == 4 else ft.view(*ft.shape, 1, 1)).shape

    # CC and CRD embed penultimate features of any width into 128 dimensions.
    ((fs, ft),) = cc.pairs(inputs)
    assert cc.embed_s[0](fs).shape == cc.embed_t[0](ft).shape == (4, 128)
    assert crd.embed_s(fs).shape == crd.embed_t(ft).shape == (4, 128)
    assert torch.allclose(crd.embed_s(fs).norm(dim=1), torch.ones(4), atol=1e-5)

    # AT over all stages and SP on the last stage give finite values despite channel/size mismatch.
    for term in (at, sp, fitnet, vid, cc, review, crd):
        value = term(inputs)
        assert value.dim() == 0 and torch.isfinite(value), term.term_name
    assert at.student_taps[-1] == sp.student_taps[0]


@pytest.mark.parametrize(
    ("student", "teacher", "kind"),
    [
        ((8, 16, 16), (12, 16, 16), "Conv2d-1"),
        ((8, 16, 16), (12, 8, 8), "Conv2d-3"),
        ((8, 8, 8), (12, 16, 16), "ConvTranspose2d-4"),
        ((8, 6, 6), (12, 4, 4), "Conv2d-3"),  # valid conv with kernel 1 + 6 - 4
        ((8, 4, 4), (12, 16, 16), "pool"),  # no RepDistiller rule: pool the target
    ],
)
def test_hint_regressor_rules(student, teacher, kind) -> None:
    reg = HintRegressor(student, teacher)
    out = reg(torch.randn(2, *student))
    if kind == "pool":
        assert reg.pool_target and out.shape == (2, teacher[0], *student[1:])
    else:
        layer, k = kind.split("-")
        assert type(reg.conv).__name__ == layer and reg.conv.kernel_size[0] == int(k)
        assert out.shape == (2, *teacher) and not reg.pool_target
    assert (out >= 0).all()  # ReLU as in RepDistiller
    assert (HintRegressor(student, teacher, relu=False)(torch.randn(2, *student)) < 0).any()


@pytest.mark.parametrize("method", ["fitnet", "at", "vid"])
def test_map_terms_on_a_vector_tap_fail_clearly(method: str) -> None:
    with pytest.raises(DatakdError, match="C×H×W"):
        built({method: {"student": "pre_logits", "teacher": "pre_logits"}}, "resnet32x4", "resnet8x4")


# ----------------------------------------------------------------------------------------- values


def test_terms_compute_their_formulas() -> None:
    spec = {"at": {}, "sp": {}, "rkd": {}, "pkt": {}}
    at, sp, rkd, pkt = built(spec, "wrn_40_2", "wrn_16_2")
    inputs = step_inputs([at, sp, rkd, pkt], "wrn_40_2", "wrn_16_2")
    stages = ["stage1", "stage2", "stage3"]
    s, t = inputs.student_features, inputs.teacher_features
    expected_at = sum(R.attention_loss(s[k], t[k], 2.0) for k in stages)
    assert torch.allclose(at(inputs), expected_at)
    assert torch.allclose(sp(inputs), R.similarity_preserving_loss(s["stage3"], t["stage3"]))
    e_s, e_t = s["pre_logits"], t["pre_logits"]
    expected_rkd = 25 * R.rkd_distance_loss(e_s, e_t) + 50 * R.rkd_angle_loss(e_s, e_t)
    assert torch.allclose(rkd(inputs), expected_rkd)
    assert torch.allclose(pkt(inputs), R.pkt_loss(e_s, e_t))


def test_cc_forms_and_vid_initial_variance() -> None:
    cc, ccr, vid = built(
        {"cc": {}, "ccr": {"type": "cc", "form": "repdistiller"}, "vid": {}}, "resnet32x4", "resnet8x4"
    )
    ccr.load_state_dict(cc.state_dict())  # same embeddings, different correlation formula
    inputs = step_inputs([cc, ccr, vid], "resnet32x4", "resnet8x4")
    ((fs, ft),) = cc.pairs(inputs)
    zs, zt = cc.embed_s[0](fs), cc.embed_t[0](ft)
    assert torch.allclose(cc(inputs), R.correlation_congruence_loss(zs, zt, 0.4, 2))
    assert torch.allclose(ccr(inputs), R.correlation_congruence_repdistiller(zs, zt))
    assert torch.allclose(vid.regressors[0].variance(), torch.full((64,), 5.0))


def test_reviewkd_warmup_follows_the_epoch() -> None:
    (review,) = built({"reviewkd": {}}, "resnet32x4", "resnet8x4")
    assert [review.warmup_factor(e) for e in (0, 9, 19, 100)] == [0.05, 0.5, 1.0, 1.0]
    full = review(step_inputs([review], "resnet32x4", "resnet8x4", epoch=30))
    first = review(step_inputs([review], "resnet32x4", "resnet8x4", epoch=0))
    assert torch.allclose(first, full * 0.05, rtol=1e-4)


def test_reviewkd_reads_preactivation_teacher_taps() -> None:
    preact = ["layer1.4.act:input", "layer2.4.act:input", "layer3.4.act:input", "pre_logits"]
    (review,) = built({"reviewkd": {"teacher": preact}}, "resnet32x4", "resnet8x4")
    inputs = step_inputs([review], "resnet32x4", "resnet8x4")
    assert (inputs.teacher_features["layer3.4.act:input"] < 0).any()  # before the ReLU
    assert torch.isfinite(review(inputs))


def test_gradients_flow_into_student_and_connectors() -> None:
    spec = {"fitnet": {}, "vid": {}, "reviewkd": {"warmup_epochs": 0}, "cc": {}}
    terms = built(spec, "resnet32x4", "shufflev1")
    student = model("shufflev1")
    for term in terms:
        student.zero_grad()
        term.zero_grad()
        term(step_inputs([term], "resnet32x4", "shufflev1")).backward()
        assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
        assert all(p.grad is not None for p in term.parameters()), term.term_name


# ----------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"at": {"p": 0}}, "at.p"),
        ({"cc": {"form": "gauss"}}, "cc.form 'gauss' is not one of kernel, repdistiller"),
        ({"cc": {"order": -1}}, "cc.order"),
        ({"rkd": {"angle_weight": -1}}, "rkd.distance_weight and rkd.angle_weight"),
        ({"vid": {"init_variance": 0}}, "init_variance"),
        ({"reviewkd": {"warmup_epochs": -1}}, "warmup_epochs"),
        ({"reviewkd": {"levels": [4, 0]}}, "levels"),
        ({"fitnet": {"hint_layer": 2}}, "hint_layer"),
    ],
)
def test_bad_options_fail_with_one_line(spec: dict, message: str) -> None:
    with pytest.raises(DatakdError, match=message) as info:
        build_terms(spec)
    assert "\n" not in str(info.value)
