"""The DPK loss term: its formula against a float64 loop reference, gradients, masking, ratios, variants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from datakd.errors import ConfigError, DatakdError
from datakd.losses import dpk_masks
from datakd.losses.dpk_blocks import auto_patch_size, masked_count, random_token_mask
from datakd.losses.dpk_transforms import PRIORS, TRANSFORMS
from datakd.metrics import cka_minibatch
from tests.dpk_helpers import TwoStage, forward, make_term, term_inputs

# ----------------------------------------------------------------------------- float64 loop reference


def layer_norm(x: list[float], w: torch.Tensor, b: torch.Tensor) -> list[float]:
    mean = sum(x) / len(x)
    var = sum((v - mean) ** 2 for v in x) / len(x)
    return [(v - mean) / math.sqrt(var + 1e-5) * float(w[i]) + float(b[i]) for i, v in enumerate(x)]


def linear(x: list[float], w: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [sum(float(w[o, i]) * x[i] for i in range(len(x))) + float(b[o]) for o in range(w.shape[0])]


def gelu(v: float) -> float:
    return 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))


def vit_block(
    tokens: list[list[float]], p: dict[str, torch.Tensor], prefix: str, heads: int
) -> list[list[float]]:
    """Pre-LN block with per-head softmax attention written out token by token."""
    d = len(tokens[0])
    dh = d // heads
    normed = [layer_norm(t, p[f"{prefix}.norm1.weight"], p[f"{prefix}.norm1.bias"]) for t in tokens]
    qkv = [linear(t, p[f"{prefix}.attn.qkv.weight"], p[f"{prefix}.attn.qkv.bias"]) for t in normed]
    attended = []
    for i in range(len(tokens)):
        out = []
        for h in range(heads):
            q = qkv[i][h * dh : (h + 1) * dh]
            scores = [
                sum(q[c] * qkv[j][d + h * dh + c] for c in range(dh)) / math.sqrt(dh)
                for j in range(len(tokens))
            ]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            total = sum(weights)
            out += [
                sum(weights[j] / total * qkv[j][2 * d + h * dh + c] for j in range(len(tokens)))
                for c in range(dh)
            ]
        attended.append(linear(out, p[f"{prefix}.attn.proj.weight"], p[f"{prefix}.attn.proj.bias"]))
    tokens = [[a + b for a, b in zip(t, at)] for t, at in zip(tokens, attended)]
    result = []
    for t in tokens:
        h = layer_norm(t, p[f"{prefix}.norm2.weight"], p[f"{prefix}.norm2.bias"])
        h = [gelu(v) for v in linear(h, p[f"{prefix}.mlp.0.weight"], p[f"{prefix}.mlp.0.bias"])]
        h = linear(h, p[f"{prefix}.mlp.2.weight"], p[f"{prefix}.mlp.2.bias"])
        result.append([a + b for a, b in zip(t, h)])
    return result


def encode(
    fmap: torch.Tensor, p: dict[str, torch.Tensor], side: str, k: int, heads: int
) -> list[list[float]]:
    """Patch tokens (row-major k×k patches through the embedding) + pos-emb, one block, final LN."""
    _, h, w = fmap.shape
    tokens = []
    for r in range(h // k):
        for col in range(w // k):
            patch = fmap[:, r * k : (r + 1) * k, col * k : (col + 1) * k]
            weight, bias = p[f"{side}.embed.proj.weight"], p[f"{side}.embed.proj.bias"]
            tokens.append([float((weight[o] * patch).sum() + bias[o]) for o in range(weight.shape[0])])
    pos = p[f"{side}.pos"][0]
    tokens = [[v + float(pos[j, i]) for i, v in enumerate(t)] for j, t in enumerate(tokens)]
    tokens = vit_block(tokens, p, f"{side}.encoder.blocks.0", heads)
    return [layer_norm(t, p[f"{side}.encoder.norm.weight"], p[f"{side}.encoder.norm.bias"]) for t in tokens]


def reference_stage_loss(
    fs: torch.Tensor, ft: torch.Tensor, mask: torch.Tensor, p: dict[str, torch.Tensor], k: int, heads: int,
    loss_on: str,
) -> float:  # fmt: skip
    """DPK's stage loss in float64 with explicit loops: teacher map 2×2-averaged to the student grid."""
    b, c_t = ft.shape[:2]
    h, w = fs.shape[2:]
    target = ft.double().reshape(b, c_t, h, 2, w, 2).mean((3, 5))  # bilinear ×½ = 2×2 mean
    total, count = 0.0, 0
    for i in range(b):
        s_tok = encode(fs[i].double(), p, "student", k, heads)
        t_tok = encode(target[i], p, "teacher", k, heads)
        hybrid = [t_tok[j] if mask[i, j] else s_tok[j] for j in range(len(s_tok))]
        pos = p["decoder_pos"][0]
        tokens = [
            [
                v + float(pos[j, q])
                for q, v in enumerate(linear(t, p["decoder_embed.weight"], p["decoder_embed.bias"]))
            ]
            for j, t in enumerate(hybrid)
        ]
        tokens = vit_block(tokens, p, "decoder.blocks.0", heads)
        tokens = [layer_norm(t, p["decoder.norm.weight"], p["decoder.norm.bias"]) for t in tokens]
        for j, t in enumerate(tokens):
            if loss_on == "non_masked" and mask[i, j]:
                continue
            out = linear(t, p["head.weight"], p["head.bias"])  # C_t·k² values in (channel, row, col) order
            r0, c0 = (j // (w // k)) * k, (j % (w // k)) * k
            for ch in range(c_t):
                for u in range(k):
                    for v in range(k):
                        diff = out[ch * k * k + u * k + v] - float(target[i, ch, r0 + u, c0 + v])
                        total += diff * diff
                        count += 1
    return total / count


@pytest.mark.parametrize("loss_on", ["full", "non_masked"])
def test_stage_loss_matches_float64_loop_reference(loss_on: str, monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    student, teacher = TwoStage(3, 4), TwoStage(5, 6)
    term = make_term(
        student, teacher, torch.zeros(2, 1, 8, 8), student="stage2", teacher="stage1", width=8, heads=2,
        encoder_depth=1, decoder_depth=1, patch_size=2, ratio=0.5, loss_on=loss_on,
    )  # fmt: skip
    fs = torch.randn(4, 4, 4, 4, generator=g)  # student stage2: 4 ch at 4×4 → 4 tokens of 2×2
    ft = torch.randn(4, 5, 8, 8, generator=g)  # teacher stage1: 5 ch at 8×8, resized to 4×4
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=torch.bool)
    monkeypatch.setattr(dpk_masks, "random_token_mask", lambda *a, **k: mask)
    value = term(term_inputs({"stage2": fs}, {"stage1": ft})).detach()
    params = {k: v.double() for k, v in term.stages["stage2"].state_dict().items()}
    expected = reference_stage_loss(fs, ft, mask, params, 2, 2, loss_on)
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_gradcheck_float64(monkeypatch) -> None:
    g = torch.Generator().manual_seed(1)
    student, teacher = TwoStage(2, 4), TwoStage(3, 4)
    term = make_term(
        student, teacher, torch.zeros(2, 1, 2, 2), student="stage1", teacher="stage1", width=4, heads=2,
        encoder_depth=1, decoder_depth=1, patch_size=1, ratio=0.5,
    )  # fmt: skip
    term.double()
    mask = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0]], dtype=torch.bool)
    monkeypatch.setattr(dpk_masks, "random_token_mask", lambda *a, **k: mask)
    ft = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    fs = torch.randn(2, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: term(term_inputs({"stage1": x}, {"stage1": ft})), (fs,))
    # …and with respect to the transformation module's own weights (here the student patch embedding).
    weight = term.stages["stage1"].student.embed.proj.weight

    def loss_of(w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            weight.copy_(w)
        return term(term_inputs({"stage1": fs.detach()}, {"stage1": ft})).detach()

    analytic = torch.autograd.grad(term(term_inputs({"stage1": fs.detach()}, {"stage1": ft})), weight)[0]
    base, eps = weight.detach().clone(), 1e-6
    for index in [(0, 0, 0, 0), (2, 1, 0, 0), (3, 0, 0, 0)]:
        plus, minus = base.clone(), base.clone()
        plus[index] += eps
        minus[index] -= eps
        numeric = (float(loss_of(plus)) - float(loss_of(minus))) / (2 * eps)
        assert float(analytic[index]) == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    loss_of(base)


# ----------------------------------------------------------------------------- masking


@pytest.mark.parametrize("ratio", [0.0, 0.15, 0.5, 0.55, 0.95, 1.0])
def test_mask_has_exactly_round_pi_n_per_sample(ratio: float) -> None:
    mask = random_token_mask(torch.tensor(ratio, dtype=torch.float64), 16, 49)
    expected = math.floor(ratio * 49 + 0.5)
    assert mask.dtype == torch.bool and mask.shape == (16, 49)
    assert mask.sum(1).tolist() == [expected] * 16
    assert int(masked_count(0.5, 7)) == 4 and int(masked_count(1.5, 7)) == 7  # halves up, clamped


def test_mask_randomness_uniform_and_independent_per_sample() -> None:
    gen = torch.Generator().manual_seed(0)
    masks = torch.stack([random_token_mask(0.25, 8, 16, generator=gen) for _ in range(2000)]).float()
    # Every position is masked with probability π (binomial σ ≈ 0.0034 over 16k draws per position).
    assert (masks.mean((0, 1)) - 0.25).abs().max() < 0.02
    # Two samples of one batch are independent: their masks overlap at π²·N positions on average
    # (dependent draws, e.g. one mask shared by the batch, would overlap at π·N = 4).
    overlap = (masks[:, 0] * masks[:, 1]).sum(1).mean()
    assert float(overlap) == pytest.approx(0.25 * 4, abs=0.1)
    same_seed = random_token_mask(0.5, 4, 16, generator=torch.Generator().manual_seed(5))
    assert torch.equal(same_seed, random_token_mask(0.5, 4, 16, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(
        same_seed, random_token_mask(0.5, 4, 16, generator=torch.Generator().manual_seed(6))
    )


@pytest.mark.parametrize("prior", PRIORS)
def test_hybrid_tokens_take_the_prior_at_masked_positions_only(prior: str) -> None:
    g = torch.Generator().manual_seed(2)
    student, teacher = TwoStage(3, 4), TwoStage(5, 6)
    term = make_term(
        student, teacher, torch.zeros(2, 1, 8, 8), student="stage1", teacher="stage1", width=8, heads=2,
        encoder_depth=1, decoder_depth=1, patch_size=2, ratio=0.4, prior=prior,
    )  # fmt: skip
    module = term.stages["stage1"]
    fs, ft = torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 5, 8, 8, generator=g)
    captured = {}
    module.decoder_embed.register_forward_pre_hook(lambda m, a: captured.update(hybrid=a[0].detach()))
    out = module(fs, ft, 0.4)
    hybrid, s_tok = captured["hybrid"], module.student(fs).detach()
    if prior == "teacher":
        prior_tok = module.teacher(ft).detach()
    elif prior == "learnable":
        prior_tok = module.mask_token.detach().expand_as(s_tok)
    else:
        prior_tok = torch.zeros_like(s_tok)
    from_student = (hybrid == s_tok).all(-1)
    from_prior = (hybrid == prior_tok).all(-1)
    assert torch.equal(from_student, ~from_prior)  # every token is exactly one of the two
    assert from_prior.sum(1).tolist() == [round(0.4 * 16)] * 6
    kept = out.student_positions[:, 0, ::2, ::2].reshape(6, 16)  # pixel mask back on the token grid
    assert torch.equal(kept, from_student)
    assert len({tuple(r.tolist()) for r in from_prior}) > 1  # masks differ between samples


# ----------------------------------------------------------------------------- shapes, gradients


@pytest.mark.parametrize(
    ("teacher_name", "student_name"),
    [("resnet56", "resnet20"), ("vgg13", "vgg8"), ("resnet50", "vgg8"), ("wrn_40_2", "shufflev1")],
)
def test_shapes_for_zoo_pairs_including_spatial_mismatch(teacher_name: str, student_name: str) -> None:
    from datakd.models import create

    student, teacher = create(student_name, 100), create(teacher_name, 100).eval()
    images = torch.randn(4, 3, 32, 32)
    term = make_term(student, teacher, images, width=16, heads=2, encoder_depth=1, decoder_depth=1)
    s_shapes = {tap: tuple(s) for tap, s in zip(term.student_taps, _shapes(student, term.student_taps))}
    t_shapes = {tap: tuple(s) for tap, s in zip(term.teacher_taps, _shapes(teacher, term.teacher_taps))}
    outputs = {}
    for key, module in term.stages.items():
        module.register_forward_hook(lambda m, a, out, key=key: outputs.update({key: out.prediction.shape}))
    loss, logs = forward(term, student, teacher, images)
    assert torch.isfinite(loss)
    for pair in term.pairs:
        c_t = t_shapes[pair.teacher_tap][0]
        _, h, w = s_shapes[pair.student_tap]
        assert outputs[pair.key] == (4, c_t, h, w)  # teacher channels at the student's resolution
        assert pair.spec.tokens <= 64
        assert 0.0 <= logs[f"dpk_pi_{pair.key}"][0] <= 1.0


def _shapes(model, taps):
    from datakd.api.features import feature_shapes

    shapes = feature_shapes(model, taps, torch.zeros(2, 3, 32, 32))
    return [shapes[t] for t in taps]


def test_auto_patch_size_rule() -> None:
    assert [auto_patch_size(s, s) for s in (32, 16, 8, 56, 28, 14, 7, 4)] == [4, 2, 1, 8, 4, 2, 1, 1]
    assert auto_patch_size(11, 11) == 11 and auto_patch_size(24, 24) == 4 and auto_patch_size(12, 12) == 2


def test_gradient_reaches_student_and_both_encoders_not_the_teacher() -> None:
    torch.manual_seed(0)
    student, teacher = TwoStage(4, 8), TwoStage(6, 12)
    images = torch.randn(8, 1, 8, 8)
    term = make_term(student, teacher, images, width=8, heads=2, encoder_depth=1, decoder_depth=1, ratio=0.5)
    from datakd.api.context import record

    _, s_feats = record(student, images, term.student_taps)
    _, t_feats = record(teacher, images, term.teacher_taps)  # with grad on purpose: DPK must detach it
    t_leaf = {k: v.detach().requires_grad_(True) for k, v in t_feats.items()}
    loss = term(term_inputs(s_feats, t_leaf))
    loss.backward()
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
    for module in term.stages.values():
        for side in ("student", "teacher"):
            grads = [p.grad for p in getattr(module, side).parameters()]
            assert all(gr is not None for gr in grads) and sum(float(gr.abs().sum()) for gr in grads) > 0, (
                side
            )
        assert module.decoder.blocks[0].mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(v.grad is None for v in t_leaf.values())


# ----------------------------------------------------------------------------- mask ratio π


def _pair(images: torch.Tensor):
    torch.manual_seed(0)
    return TwoStage(4, 8), TwoStage(4, 8).eval(), images


def test_pi_is_one_minus_batch_cka_and_logged_per_stage() -> None:
    student, teacher, images = _pair(torch.randn(8, 1, 8, 8))
    term = make_term(student, teacher, images, width=8, heads=2, encoder_depth=1)
    _, logs = forward(term, student, teacher, images)
    with torch.no_grad():
        for tap in ("stage1", "stage2"):
            from datakd.api.context import record

            _, fs = record(student, images, [tap])
            _, ft = record(teacher, images, [tap])
            cka = float(cka_minibatch(ft[tap], fs[tap]))
            assert logs[f"dpk_cka_{tap}"] == [pytest.approx(cka, abs=1e-6)]
            assert logs[f"dpk_pi_{tap}"] == [pytest.approx(min(max(1.0 - cka, 0.0), 1.0), abs=1e-6)]


def test_schedules_fixed_cosine_and_decays() -> None:
    student, teacher, images = _pair(torch.randn(8, 1, 8, 8))
    expectations = {
        0.3: lambda e: 0.3,
        "exp_decay": lambda e: 0.95**e,
        "linear_decay": lambda e: 1.0 - 0.95 * e / 10,
    }
    for ratio, expected in expectations.items():
        term = make_term(student, teacher, images, width=8, heads=2, encoder_depth=1, ratio=ratio)
        for epoch in (0, 3, 5):
            _, logs = forward(term, student, teacher, images, epoch=epoch, total_epochs=10)
            assert logs["dpk_pi_stage1"] == [pytest.approx(expected(epoch))], (ratio, epoch)
    term = make_term(student, teacher, images, width=8, heads=2, encoder_depth=1, ratio="cosine")
    _, logs = forward(term, student, teacher, images)
    from datakd.api.context import record

    with torch.no_grad():
        _, fs = record(student, images, ["stage2"])
        _, ft = record(teacher, images, ["stage2"])
    cos = F.cosine_similarity(fs["stage2"].flatten(1), ft["stage2"].flatten(1), dim=1).mean()
    assert logs["dpk_pi_stage2"] == [pytest.approx(float((1 - cos).clamp(0, 1)), abs=1e-6)]


def test_epoch_window_averages_hsic_over_the_epoch_and_resets() -> None:
    student, teacher, _ = _pair(torch.zeros(1))
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(8, 1, 8, 8, generator=g), torch.randn(8, 1, 8, 8, generator=g)
    term = make_term(student, teacher, a, width=8, heads=2, encoder_depth=1, cka_window="epoch")
    _, first = forward(term, student, teacher, a)
    _, second = forward(term, student, teacher, b)
    from datakd.api.context import record
    from datakd.metrics import MinibatchCKA

    meter = MinibatchCKA()
    with torch.no_grad():
        for images in (a, b):
            _, fs = record(student, images, ["stage2"])
            _, ft = record(teacher, images, ["stage2"])
            meter.update(ft["stage2"], fs["stage2"])
    assert second["dpk_cka_stage2"][0] == pytest.approx(meter.value(), abs=1e-6)
    assert second["dpk_cka_stage2"][0] != pytest.approx(meter.per_batch[1], abs=1e-6)
    term.on_epoch_start(1)
    _, third = forward(term, student, teacher, b)
    assert third["dpk_cka_stage2"][0] == pytest.approx(meter.per_batch[1], abs=1e-6)
    assert first["dpk_cka_stage2"][0] == pytest.approx(meter.per_batch[0], abs=1e-6)


def test_small_batches() -> None:
    student, teacher, images = _pair(torch.randn(8, 1, 8, 8))
    with pytest.raises(DatakdError, match="at least 4"):
        make_term(student, teacher, images, batch_size=2, width=8, heads=2, encoder_depth=1)
    term = make_term(student, teacher, images, width=8, heads=2, encoder_depth=1)
    with pytest.raises(DatakdError, match="batch of at least 4"):
        forward(term, student, teacher, images[:2])
    _, full = forward(term, student, teacher, images)
    loss, trailing = forward(term, student, teacher, images[:3])  # a short last batch reuses the last π
    assert torch.isfinite(loss) and "dpk_cka_stage1" not in trailing
    assert trailing["dpk_pi_stage1"] == pytest.approx(full["dpk_pi_stage1"])
    fixed = make_term(student, teacher, images, batch_size=2, width=8, heads=2, encoder_depth=1, ratio=0.5)
    loss, logs = forward(fixed, student, teacher, images[:2])
    assert torch.isfinite(loss) and logs["dpk_pi_stage1"] == [0.5]


# ----------------------------------------------------------------------------- variants and options


VARIANTS = [(t, p, "full") for t in TRANSFORMS for p in PRIORS] + [
    ("encdec", "teacher", "non_masked"),
    ("conv", "learnable", "non_masked"),
    ("fitnet", "teacher", "non_masked"),
]


@pytest.mark.parametrize(("transform", "prior", "loss_on"), VARIANTS)
def test_every_variant_runs_and_trains(transform: str, prior: str, loss_on: str) -> None:
    student, teacher = TwoStage(4, 8), TwoStage(6, 12).eval()
    images = torch.randn(8, 1, 8, 8)
    term = make_term(
        student, teacher, images, width=8, heads=2, encoder_depth=1, decoder_depth=1, transform=transform,
        prior=prior, loss_on=loss_on,
    )  # fmt: skip
    loss, logs = forward(term, student, teacher, images)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert student.conv2.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in term.parameters())
    assert ("dpk_pi_stage1" in logs) == (transform != "fitnet")
    has_teacher_branch = any(n.startswith("teacher") for n, _ in term.stages["stage1"].named_children())
    assert has_teacher_branch == (prior == "teacher" and transform != "fitnet")


def test_decoder_depth_default_and_stage_weights() -> None:
    student, teacher, images = _pair(torch.randn(8, 1, 8, 8))
    single = make_term(student, teacher, images, student="stage2", teacher="stage2", width=8, heads=2)
    multi = make_term(student, teacher, images, width=8, heads=2)
    assert (
        len(single.stages["stage2"].decoder.blocks) == 6
        and len(single.stages["stage2"].student.encoder.blocks) == 6
    )
    assert len(multi.stages["stage1"].decoder.blocks) == 4
    weighted = make_term(student, teacher, images, width=8, heads=2, encoder_depth=1, ratio=0.0,
                         stage_weights=[0.0, 1.0])  # fmt: skip
    only2 = make_term(student, teacher, images, student="stage2", teacher="stage2", width=8, heads=2,
                      encoder_depth=1, decoder_depth=4, ratio=0.0)  # fmt: skip
    only2.stages["stage2"].load_state_dict(weighted.stages["stage2"].state_dict())
    a, _ = forward(weighted, student, teacher, images)
    b, _ = forward(only2, student, teacher, images)
    assert float(a.detach()) == pytest.approx(
        float(b.detach()), rel=1e-6
    )  # π = 0: no randomness in the stage-2 loss


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ratio": "sometimes"}, "unknown dpk.ratio"),
        ({"ratio": 1.5}, "outside"),
        ({"transform": "mlp"}, "unknown dpk transform|unknown dpk.transform"),
        ({"prior": "noise"}, "unknown dpk.prior"),
        ({"loss_on": "masked"}, "unknown dpk.loss_on"),
        ({"width": 30, "heads": 8}, "not divisible"),
        ({"cka_window": "run"}, "unknown dpk.cka_window"),
        ({"encoder_depth": "six"}, "encoder_depth must be an integer"),
        ({"decoder_depth": -1}, "decoder_depth must be an integer"),
    ],
)
def test_bad_options_are_one_line_errors(options: dict, message: str) -> None:
    from datakd.losses.base import build_terms

    with pytest.raises(ConfigError, match=message):
        build_terms({"dpk": options})


def test_bad_setups_are_clear_errors() -> None:
    student, teacher, images = _pair(torch.randn(8, 1, 8, 8))
    with pytest.raises(DatakdError, match="equal length"):
        make_term(student, teacher, images, student=["stage1", "stage2"], teacher="stage2")
    with pytest.raises(DatakdError, match="does not tile"):
        make_term(student, teacher, images, student="stage1", teacher="stage1", patch_size=3)
    with pytest.raises(DatakdError, match="C×H×W"):
        make_term(student, teacher, images, student="fc", teacher="fc")
    other = TwoStage(4, 16).eval()
    with pytest.raises(DatakdError, match="ratio=cosine"):
        make_term(student, other, images, ratio="cosine")
    with pytest.raises(DatakdError, match="no named stage taps"):
        make_term(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), teacher, images)


def test_state_dict_round_trip_keeps_buffers() -> None:
    student, teacher, images = _pair(torch.randn(8, 1, 8, 8))
    term = make_term(student, teacher, images, width=8, heads=2, encoder_depth=1, cka_window="epoch")
    forward(term, student, teacher, images)
    fresh = make_term(student, teacher, images, width=8, heads=2, encoder_depth=1, cka_window="epoch")
    fresh.load_state_dict(term.state_dict())
    assert torch.equal(fresh.hsic_sums, term.hsic_sums) and torch.equal(fresh.last_ratio, term.last_ratio)
