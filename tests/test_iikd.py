"""II-KD and its parts (RKD on logits, KD-SVD, MHGD) against independent float64 computations, the SVD
backward, the clipped-gradient combination rule, edge cases, and a real-data 4-bit distillation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datakd.api.context import View
from datakd.engine.build import build_trainer
from datakd.engine.evaluate import evaluate
from datakd.errors import ConfigError
from datakd.losses import iikd_functional as IF
from datakd.losses.base import build_terms
from datakd.losses.iikd import AttentionHead
from datakd.losses.svd import singular_vectors
from tests.helpers import tiny_config, train_tiny_teacher

DOUBLE = torch.float64


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory):
    """A tiny real-data ResNet-8 teacher (2 epochs on the embedded Fashion-MNIST subset), shared here."""
    return train_tiny_teacher(tmp_path_factory.mktemp("iikd-teacher"), epochs=2, model="resnet8")


# ----------------------------------------------------------------------------- SVD
@pytest.mark.parametrize("shape", [(10, 4), (4, 10), (6, 6)])
def test_svd_backward_matches_autograd_and_gradcheck(shape):
    torch.manual_seed(0)
    x = torch.randn(3, *shape, dtype=DOUBLE, requires_grad=True)
    d = shape[1]
    w = torch.randn(d, d, dtype=DOUBLE)
    w = w + w.t()
    c = torch.randn(min(shape), dtype=DOUBLE)

    def ours(x):  # invariant to the singular vectors' signs, so the finite differences are well defined
        s, v = singular_vectors(x)
        top = v[..., :2]
        return ((top @ top.transpose(-1, -2)) * w).sum() + (s * c).sum()

    def reference(x):
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        top = vh.transpose(-1, -2)[..., :2]
        return ((top @ top.transpose(-1, -2)) * w).sum() + (s * c).sum()

    (g_ours,) = torch.autograd.grad(ours(x), x)
    (g_ref,) = torch.autograd.grad(reference(x), x)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-8, atol=1e-10)
    assert torch.autograd.gradcheck(ours, (x,))


def test_svd_backward_is_nan_free_on_degenerate_maps():
    x = torch.zeros(2, 9, 5, dtype=torch.float32)
    x[0, :, 0] = 1.0  # rank one, four zero singular values
    x[1, :3, :] = torch.eye(3, 5)  # three equal singular values
    x.requires_grad_(True)
    s, v = singular_vectors(x)
    assert torch.isfinite(s).all() and torch.isfinite(v).all()
    (v[..., :4].sum() + s.sum()).backward()
    assert torch.isfinite(x.grad).all()
    relu = torch.relu(torch.randn(2, 8, 4, 4)).requires_grad_(True)
    relu.data[:, 3:] = 0  # dead channels, as in a ReLU map
    _, vec = IF.leading_vectors(relu, 4)
    vec.sum().backward()
    assert torch.isfinite(relu.grad).all()


# ----------------------------------------------------------------------------- RKD
def _tf_normalize(x: np.ndarray) -> np.ndarray:
    return x / math.sqrt(max(float((x * x).sum()), 1e-12))


def _rkd_reference(s: np.ndarray, t: np.ndarray, wd: float, wa: float) -> float:
    b = len(s)

    def distance(z):
        out = np.zeros((b, b))
        for i in range(b):
            for j in range(b):
                out[i, j] = math.sqrt(max(float(((z[i] - z[j]) ** 2).sum()), 1e-12))
        mu = out.sum() / (out > 0).sum()
        return out / (mu + 1e-8)

    def angle(z):
        out = np.zeros((b, b, b))
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    out[i, j, k] = float(_tf_normalize(z[j] - z[i]) @ _tf_normalize(z[k] - z[i]))
        return out

    def huber(a, c):
        d = np.abs(a - c)
        return float(np.where(d <= 1, d * d / 2, d - 0.5).mean())

    zs = np.stack([_tf_normalize(r) for r in s])
    zt = np.stack([_tf_normalize(r) for r in t])
    return wd * huber(distance(zs), distance(zt)) + wa * huber(angle(zs), angle(zt))


def test_rkd_logits_matches_loops_and_gradcheck():
    torch.manual_seed(1)
    s = torch.randn(6, 5, dtype=DOUBLE, requires_grad=True)
    t = torch.randn(6, 5, dtype=DOUBLE)
    distance, angle = IF.rkd_logits(s, t, 50.0, 100.0)
    expected = _rkd_reference(s.detach().numpy(), t.numpy(), 50.0, 100.0)
    assert float((distance + angle).detach()) == pytest.approx(expected, rel=1e-10)
    assert torch.autograd.gradcheck(lambda x: sum(IF.rkd_logits(x, t, 50.0, 100.0)), (s,))
    # large differences reach the linear part of the Huber loss
    far = IF.rkd_logits(s.detach() * 0 + torch.eye(6, 5, dtype=DOUBLE), -t, 1.0, 1.0)
    assert float(sum(far)) == pytest.approx(_rkd_reference(np.eye(6, 5), -t.numpy(), 1.0, 1.0), rel=1e-10)


def test_rkd_edge_cases():
    one = IF.rkd_logits(torch.randn(1, 10, requires_grad=True), torch.randn(1, 10))
    assert float(sum(one).detach()) == 0.0  # a single sample has no relations: documented value 0
    two_s = torch.randn(2, 10, requires_grad=True)
    value = sum(IF.rkd_logits(two_s, torch.randn(2, 10)))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(two_s.grad).all()
    same = torch.randn(4, 10)
    assert float(sum(IF.rkd_logits(same, same))) == pytest.approx(0.0, abs=1e-10)


# ----------------------------------------------------------------------------- KD-SVD
def _np_leading(x: np.ndarray, k: int) -> np.ndarray:
    """Leading k right singular vectors (columns) of one HW×C matrix, largest-|entry|-positive signs."""
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    v = vt[:k].T.copy()
    for col in range(k):
        if v[np.argmax(np.abs(v[:, col])), col] < 0:
            v[:, col] *= -1
    return v


def _kd_svd_reference(students: list[np.ndarray], teachers: list[np.ndarray]) -> float:
    """KD-SVD by explicit loops: students/teachers are B×C×H×W float64 arrays per tap."""
    batch = students[0].shape[0]
    total = 0.0
    for b in range(batch):
        vs, vt = [], []
        for fs, ft in zip(students, teachers):
            ms = fs[b].reshape(fs.shape[1], -1).T  # HW×C
            mt = ft[b].reshape(ft.shape[1], -1).T
            teacher = _np_leading(mt, 1)[:, 0]
            candidates = _np_leading(ms, 4)
            cos = candidates.T @ teacher
            best = int(np.argmax(np.abs(cos)))
            vs.append(candidates[:, best] * np.sign(cos[best]))
            vt.append(teacher)  # the normalised leading singular value is 1
        for i in range(1, len(vs)):
            for a in range(len(vs[i])):
                for c in range(len(vs[i - 1])):
                    rs = math.exp(-((vs[i][a] - vs[i - 1][c]) ** 2) / 8)
                    rt = math.exp(-((vt[i][a] - vt[i - 1][c]) ** 2) / 8)
                    total += (rs - rt) ** 2
    return total


def _kd_svd_from_features(students, teachers):
    vs, vt, sig = [], [], []
    for fs, ft in zip(students, teachers):
        sigma, v_t = IF.leading_vectors(ft, 1)
        _, v_s = IF.leading_vectors(fs, 4)
        vs.append(IF.align_to_teacher(v_s, v_t).squeeze(2))
        vt.append(v_t.squeeze(2))
        sig.append(sigma.squeeze(1))
    return IF.kd_svd(vs, vt, sig)


def test_kd_svd_matches_loops_and_gradcheck():
    torch.manual_seed(2)
    shapes = [(5, 3, 3), (6, 2, 2), (12, 2, 2)]  # C ≤ HW, C > HW (two taps) as in ResNet18's later stages
    students = [torch.randn(2, *s, dtype=DOUBLE, requires_grad=True) for s in shapes]
    teachers = [torch.randn(2, *s, dtype=DOUBLE) for s in shapes]
    value = _kd_svd_from_features(students, teachers)
    expected = _kd_svd_reference([s.detach().numpy() for s in students], [t.numpy() for t in teachers])
    assert float(value.detach()) == pytest.approx(expected, rel=1e-9)
    assert torch.autograd.gradcheck(lambda *xs: _kd_svd_from_features(list(xs), teachers), tuple(students))


def test_align_to_teacher_picks_best_match_with_sign():
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # candidates e1, e2 (columns)
    teacher = torch.tensor([[[0.1], [-0.9]]])
    aligned = IF.align_to_teacher(student, teacher)
    assert aligned[0, :, 0].tolist() == [0.0, -1.0]


# ----------------------------------------------------------------------------- MHGD
def test_mhgd_graph_matches_explicit_formula_and_gradcheck():
    torch.manual_seed(3)
    head = AttentionHead(key_dim=6, query_dim=4, width=5, heads=3).double()
    with torch.no_grad():
        for bn in (head.sender_bn, head.receiver_bn):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
    head.eval()
    b = 5
    vs, vs_prev = torch.randn(b, 6, dtype=DOUBLE), torch.randn(b, 4, dtype=DOUBLE)
    vt, vt_prev = torch.randn(b, 6, dtype=DOUBLE), torch.randn(b, 4, dtype=DOUBLE)

    def manual_graph(key, query):
        def branch(x, fc, bn):
            y = x.numpy() @ fc.weight.detach().numpy().T + fc.bias.detach().numpy()
            y = (y - bn.running_mean.numpy()) / np.sqrt(bn.running_var.numpy() + bn.eps)
            return (y * bn.weight.detach().numpy() + bn.bias.detach().numpy()).reshape(b, 5, 3)

        s = branch(key, head.sender, head.sender_bn)
        r = branch(query, head.receiver, head.receiver_bn)
        g = np.zeros((3, b, b))
        for h in range(3):
            for i in range(b):
                for j in range(b):
                    g[h, i, j] = sum(s[i, w, h] * r[j, w, h] for w in range(5))
        return np.tanh(g)

    gs, gt = manual_graph(vs, vs_prev), manual_graph(vt, vt_prev)
    expected = 0.0
    for h in range(3):
        for i in range(b):
            ps = np.exp(gs[h, i]) / np.exp(gs[h, i]).sum()
            pt = np.exp(gt[h, i]) / np.exp(gt[h, i]).sum()
            expected += float((ps * (np.log(ps) - np.log(pt))).sum())
    ours = IF.graph_kl(torch.tanh(head(vs, vs_prev)), torch.tanh(head(vt, vt_prev)))
    assert float(ours.detach()) == pytest.approx(expected, rel=1e-10)
    target = torch.tanh(head(vt, vt_prev))
    x = vs.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: IF.graph_kl(torch.tanh(head(v, vs_prev)), target), (x,))


# ----------------------------------------------------------------------------- gradient rule
def _iikd(weight: float = 0.4, clip: str = "unweighted"):
    (term,) = build_terms({"iikd": {"weight": weight, "clip": clip}})
    return term


def test_clip_schedule_values():
    assert IF.clip_schedule(0) == 0.5
    assert IF.clip_schedule(3) == pytest.approx(1 / (1 + math.exp(-3)))
    assert IF.clip_schedule(25) == 1.0
    assert IF.clip_schedule(-2) == pytest.approx(1 / (1 + math.exp(2)))


def test_combine_gradient_rule():
    torch.manual_seed(4)
    param = torch.nn.Parameter(torch.zeros(7, 3))
    unweighted, weighted, plain = _iikd(0.4), _iikd(0.4, "weighted"), _iikd(0.4, "none")
    for epoch in (0, 2, 30):
        s = IF.clip_schedule(epoch)
        for _ in range(20):
            rest = torch.randn(7, 3)
            g_dist = torch.randn(7, 3) * float(torch.rand(()) * 10)
            own = 0.4 * g_dist
            for term in (unweighted, weighted):  # the bound holds per parameter
                out = term.combine_gradient(param, own, rest, epoch)
                assert float((out - rest).norm()) <= float(rest.norm()) * s * (1 + 1e-6)
            a = unweighted.combine_gradient(param, own, rest, epoch)
            b = weighted.combine_gradient(param, own, rest, epoch)
            bound = float(rest.norm()) * s
            if float(own.norm()) >= bound:  # both clipped: identical (λ makes no difference)
                torch.testing.assert_close(a, b)
            if float(g_dist.norm()) < bound:  # neither clipped: the λ variant is plain λ·g_dist + g_CE
                torch.testing.assert_close(b, plain.combine_gradient(param, own, rest, epoch))
                torch.testing.assert_close(b, rest + own)
                torch.testing.assert_close(a, rest + g_dist)
    rest = torch.randn(7, 3)
    assert unweighted.combine_gradient(param, None, rest, 0) is rest
    own = torch.randn(7, 3)
    assert unweighted.combine_gradient(param, own, None, 0) is own  # connectors: no CE gradient to scale by
    with pytest.raises(ConfigError, match="clip"):
        build_terms({"iikd": {"clip": "sometimes"}})


def test_trainer_applies_the_clip_rule(tmp_path, teacher):
    cfg = tiny_config(
        tmp_path / "s",
        student={"name": "resnet8@w4a4", "kwargs": {"in_channels": 1}, "init_from_teacher": True},
        teacher={"checkpoint": str(teacher)},
        loss={"ce": {"weight": 1.0}, "iikd": {"weight": 0.4}},
    )
    trainer = build_trainer(cfg, "distill")
    trainer.student.eval()  # BN statistics frozen: the forward passes below are identical
    batch = next(iter(trainer.loader.epoch(0)))
    view = View("main", batch.images, batch.labels)
    losses = trainer._view_losses(view)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer._backward(losses)
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    combined = [p.grad.clone() for p in params]
    fresh = trainer._view_losses(view)
    g_ce = torch.autograd.grad(fresh["ce"], params, retain_graph=True, allow_unused=True)
    g_dist = torch.autograd.grad(fresh["iikd"], params, allow_unused=True)
    clipped = 0
    for got, ce, dist in zip(combined, g_ce, g_dist):
        bound = ce.norm() * 0.5
        expected = ce + IF.clip_by_norm(dist, bound)
        clipped += int(dist.norm() > bound)
        assert float((got - expected).norm()) <= 1e-4 * float(expected.norm()) + 1e-8
    assert clipped > 0  # the rule is exercised, not just the identity


# ----------------------------------------------------------------------------- terms
def test_iikd_edge_cases_and_errors(tmp_path, teacher):
    base = dict(
        student={"name": "resnet8", "kwargs": {"in_channels": 1}},
        teacher={"checkpoint": str(teacher)},
    )
    trainer = build_trainer(
        tiny_config(tmp_path / "a", loss={"ce": {"weight": 1.0}, "iikd": {"weight": 0.4}}, **base), "distill"
    )
    term = trainer.term("iikd")
    assert term.student_taps == ["stage1", "stage2", "stage3"]  # default: every stage tap
    batch = next(iter(trainer.loader.epoch(0)))
    for n in (1, 2):
        losses = trainer._view_losses(View("main", batch.images[:n], batch.labels[:n]))
        assert torch.isfinite(losses["iikd"]) and float(losses["iikd"].detach()) >= 0
        losses["iikd"].backward()
        assert all(
            torch.isfinite(p.grad).all() for p in trainer.student_module.parameters() if p.grad is not None
        )
    with pytest.raises(ConfigError, match="connector=true"):
        cfg = tiny_config(
            tmp_path / "b",
            loss={"ce": {"weight": 1.0}, "kd_svd": {}},
            student={"name": "resnet8x4", "kwargs": {"in_channels": 1}},
            teacher={"checkpoint": str(teacher)},
        )
        build_trainer(cfg, "distill")
    cfg = tiny_config(
        tmp_path / "c",
        loss={"ce": {"weight": 1.0}, "mhgd": {"connector": True}},
        student={"name": "resnet8x4", "kwargs": {"in_channels": 1}},
        teacher={"checkpoint": str(teacher)},
    )
    trainer = build_trainer(cfg, "distill")
    assert sum(p.numel() for p in trainer.term("mhgd").connectors.parameters()) > 0
    assert not any(p.requires_grad for p in trainer.term("mhgd").graph_heads.parameters())


def test_mhgd_head_warmup_trains_heads_then_freezes_and_resumes(tmp_path, teacher):
    cfg = tiny_config(
        tmp_path / "s",
        epochs=2,
        data={"train_subset": 256},
        student={"name": "resnet8@w4a4", "kwargs": {"in_channels": 1}, "init_from_teacher": True},
        teacher={"checkpoint": str(teacher)},
        loss={"ce": {"weight": 1.0}, "mhgd": {"mhgd_head_warmup_epochs": 1}},
    )
    trainer = build_trainer(cfg, "distill")
    term = trainer.term("mhgd")
    assert term.clip_offset == 1.0
    start = [p.clone() for p in term.graph_heads.parameters()]
    trainer.fit(until_epoch=1)
    after_warmup = [p.clone() for p in term.graph_heads.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(start, after_warmup))
    assert "mhgd_mhgd_heads" in trainer.metrics.rows[0] and "mhgd_mhgd" not in trainer.metrics.rows[0]
    resumed = build_trainer(cfg, "distill", resume=True)
    assert resumed.term("mhgd")._pending_optimizer_state is not None  # the head optimizer is checkpointed
    trainer.fit()
    assert all(torch.equal(a, b) for a, b in zip(after_warmup, term.graph_heads.parameters()))
    assert trainer.metrics.rows[1]["mhgd_mhgd"] >= 0


@pytest.mark.slow
def test_four_bit_student_learns_with_iikd(tmp_path, teacher):
    """A 4-bit copy of a tiny teacher, distilled with II-KD on real Fashion-MNIST images, improves."""
    cfg = tiny_config(
        tmp_path / "s",
        epochs=2,
        student={"name": "resnet8@w4a4", "kwargs": {"in_channels": 1}, "init_from_teacher": True},
        teacher={"checkpoint": str(teacher)},
        loss={"ce": {"weight": 1.0}, "iikd": {"weight": 0.4}},
        optim={"name": "adam", "lr": 1e-3, "eps": 1e-5, "weight_decay": 1e-5},
        schedule={"name": "constant"},
    )
    trainer = build_trainer(cfg, "distill")
    before = evaluate(trainer.student_module, trainer.eval_loader, trainer.autocast, lambda x: x)["top1"]
    trainer.fit()
    rows = trainer.metrics.rows
    assert rows[-1]["test_top1"] > before + 10.0  # the quantised copy starts far below the teacher ...
    assert rows[-1]["test_top1"] > 0.9 * trainer.teacher_metrics["top1"]  # ... and recovers
    assert rows[1]["loss_iikd"] < rows[0]["loss_iikd"]
    assert {"iikd_rkd", "iikd_svd", "iikd_mhgd"} <= set(rows[0])
