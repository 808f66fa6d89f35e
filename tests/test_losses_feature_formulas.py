"""The pure formulas of the feature/relation baselines (`datakd.losses.relations`) against independent
float64 computations written with explicit loops over samples, pixels and pairs, plus gradient checks and
the batch sizes where relations are undefined (never NaN)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from datakd.losses import relations as R

D64 = torch.float64


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D64)


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def norm(a: list[float]) -> float:
    return math.sqrt(dot(a, a))


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def block_mean(f: torch.Tensor, size: int) -> list[list[list[list[float]]]]:
    """Average pooling of B×C×H×W to size×size by looping over (equal, integer-ratio) blocks."""
    b, c, h = f.shape[:3]
    k = h // size

    def cell(n: int, ch: int, i: int, j: int) -> float:
        values = [float(f[n, ch, i * k + di, j * k + dj]) for di in range(k) for dj in range(k)]
        return sum(values) / (k * k)

    return [
        [[[cell(n, ch, i, j) for j in range(size)] for i in range(size)] for ch in range(c)] for n in range(b)
    ]


def as_tensor(nested: list) -> torch.Tensor:
    return torch.tensor(nested, dtype=D64)


# ----------------------------------------------------------------------------------------- AT


def reference_attention(f: torch.Tensor, p: float) -> list[list[float]]:
    b, c, h, w = f.shape
    maps = []
    for n in range(b):
        a = [sum(abs(float(f[n, ch, i, j])) ** p for ch in range(c)) / c for i in range(h) for j in range(w)]
        length = norm(a)
        maps.append([v / length for v in a])
    return maps


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_attention_loss_matches_loops(p: float) -> None:
    fs, ft = rand(3, 4, 4, 4, seed=1), rand(3, 6, 4, 4, seed=2)
    a_s, a_t = reference_attention(fs, p), reference_attention(ft, p)
    expected = sum((x - y) ** 2 for rs, rt in zip(a_s, a_t) for x, y in zip(rs, rt)) / (3 * 16)
    assert R.attention_loss(fs, ft, p).item() == pytest.approx(expected, rel=1e-10)


def test_attention_loss_pools_the_larger_map() -> None:
    fs, ft = rand(2, 3, 8, 8, seed=3), rand(2, 5, 4, 4, seed=4)
    pooled = as_tensor(block_mean(fs, 4))
    a_s, a_t = reference_attention(pooled, 2.0), reference_attention(ft, 2.0)
    expected = sum((x - y) ** 2 for rs, rt in zip(a_s, a_t) for x, y in zip(rs, rt)) / (2 * 16)
    assert R.attention_loss(fs, ft).item() == pytest.approx(expected, rel=1e-10)
    # the rule is symmetric: a larger teacher map is pooled instead
    assert R.attention_loss(ft, fs).item() == pytest.approx(expected, rel=1e-10)


def test_match_spatial_non_square_and_vectors() -> None:
    a, b = rand(1, 2, 8, 4), rand(1, 2, 4, 8)
    pa, pb = R.match_spatial(a, b)
    assert pa.shape[-2:] == pb.shape[-2:] == (4, 4)
    v, w = rand(2, 5), rand(2, 7)
    assert R.match_spatial(v, w) == (v, w)


# ----------------------------------------------------------------------------------------- SP


def reference_sp(fs: torch.Tensor, ft: torch.Tensor) -> float:
    b = fs.shape[0]

    def gram(f: torch.Tensor) -> list[list[float]]:
        rows = [f[i].flatten().tolist() for i in range(b)]
        g = [[dot(rows[i], rows[j]) for j in range(b)] for i in range(b)]
        return [[v / norm(row) for v in row] for row in g]

    gs, gt = gram(fs), gram(ft)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def test_similarity_preserving_matches_loops() -> None:
    fs, ft = rand(5, 3, 2, 2, seed=5), rand(5, 7, 2, 2, seed=6)
    assert R.similarity_preserving_loss(fs, ft).item() == pytest.approx(reference_sp(fs, ft), rel=1e-10)


# ----------------------------------------------------------------------------------------- CC


def reference_cc(fs: torch.Tensor, ft: torch.Tensor, gamma: float, order: int) -> float:
    def kernel(f: torch.Tensor) -> list[list[float]]:
        rows = [f[i].tolist() for i in range(f.shape[0])]
        rows = [[v / norm(r) for v in r] for r in rows]
        return [
            [
                sum(
                    math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * dot(x, y) ** p
                    for p in range(order + 1)
                )
                for y in rows
            ]
            for x in rows
        ]

    ks, kt = kernel(fs), kernel(ft)
    b = fs.shape[0]
    return sum((kt[i][j] - ks[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def test_correlation_congruence_matches_loops() -> None:
    fs, ft = rand(6, 5, seed=7), rand(6, 5, seed=8)
    expected = reference_cc(fs, ft, 0.4, 2)
    assert R.correlation_congruence_loss(fs, ft, 0.4, 2).item() == pytest.approx(expected, rel=1e-10)


def test_taylor_kernel_converges_to_the_gaussian_rbf() -> None:
    # A different formulation: the exact RBF of unit vectors, exp(−γ‖x−y‖²), is the P → ∞ limit.
    f = rand(4, 3, seed=9)
    unit = f / f.norm(dim=1, keepdim=True)
    exact = torch.exp(-0.4 * torch.cdist(unit, unit).pow(2))
    assert torch.allclose(R.taylor_rbf_kernel(f, 0.4, 20), exact, atol=1e-12)
    assert (R.taylor_rbf_kernel(f, 0.4, 2) - exact).abs().max() < 0.05  # P = 2 is already close


def test_repdistiller_cc_form_matches_loops() -> None:
    fs, ft = rand(4, 3, seed=10), rand(4, 3, seed=11)
    d = [[abs(float(fs[i, k] - ft[i, k])) for k in range(3)] for i in range(4)]
    expected = sum(dot(d[i], d[i + 1]) for i in range(3)) / 3
    assert R.correlation_congruence_repdistiller(fs, ft).item() == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------------------- RKD


def reference_rkd(es: torch.Tensor, et: torch.Tensor) -> tuple[float, float]:
    b = es.shape[0]

    def distances(e: torch.Tensor) -> list[list[float]]:
        rows = [e[i].tolist() for i in range(b)]
        d = [[0.0 if i == j else math.dist(rows[i], rows[j]) for j in range(b)] for i in range(b)]
        positive = [v for row in d for v in row if v > 0]
        mean = sum(positive) / len(positive)
        return [[v / mean for v in row] for row in d]

    def angles(e: torch.Tensor) -> list[float]:
        rows = [e[i].tolist() for i in range(b)]
        out = []
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    if j == i or k == i:
                        out.append(0.0)  # degenerate triplet
                        continue
                    u = [x - y for x, y in zip(rows[j], rows[i])]
                    v = [x - y for x, y in zip(rows[k], rows[i])]
                    out.append(dot(u, v) / (norm(u) * norm(v)))
        return out

    ds, dt = distances(es), distances(et)
    dist = sum(huber(ds[i][j] - dt[i][j]) for i in range(b) for j in range(b)) / b**2
    ang = sum(huber(x - y) for x, y in zip(angles(es), angles(et))) / b**3
    return dist, ang


def test_rkd_matches_loops() -> None:
    # large spread so that some distance differences exceed δ = 1 (both Huber branches are exercised)
    es, et = rand(5, 4, seed=12) * 3, rand(5, 4, seed=13) * torch.tensor([5.0, 0.1, 0.1, 0.1], dtype=D64)
    dist, ang = reference_rkd(es, et)
    assert R.rkd_distance_loss(es, et).item() == pytest.approx(dist, rel=1e-9)
    assert R.rkd_angle_loss(es, et).item() == pytest.approx(ang, rel=1e-9)
    ds, dt = R.normalized_distances(es), R.normalized_distances(et)
    assert ((ds - dt).abs() > 1).any()


def test_rkd_distance_normalisation_excludes_the_diagonal() -> None:
    # three collinear points at 0, 3, 5: off-diagonal mean (3 + 5 + 2)·2/6 = 10/3 (the zero diagonal is
    # not averaged in, which would give 20/9)
    e = torch.tensor([[0.0], [3.0], [5.0]], dtype=D64)
    d = R.normalized_distances(e)
    assert d[0, 1].item() == pytest.approx(3 / (10 / 3), rel=1e-9)
    assert d[0, 0].item() == 0.0
    # coincident points keep a finite, tiny distance (RepDistiller clamps squared distances at 1e-12)
    same = R.normalized_distances(torch.zeros(2, 3, dtype=D64))
    assert torch.isfinite(same).all()


# ----------------------------------------------------------------------------------------- PKT


def test_pkt_matches_loops() -> None:
    fs, ft = rand(4, 6, seed=14), rand(4, 3, seed=15)
    eps = 1e-7

    def probabilities(f: torch.Tensor) -> list[list[float]]:
        rows = [f[i].tolist() for i in range(f.shape[0])]
        unit = [[v / (norm(r) + eps) for v in r] for r in rows]
        sim = [[(dot(x, y) + 1) / 2 for y in unit] for x in unit]
        return [[v / sum(row) for v in row] for row in sim]

    ps, pt = probabilities(fs), probabilities(ft)
    expected = (
        sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(4) for j in range(4)) / 16
    )
    assert R.pkt_loss(fs, ft).item() == pytest.approx(expected, rel=1e-9)


# ----------------------------------------------------------------------------------------- VID


def test_gaussian_nll_matches_loops() -> None:
    mean, target = rand(2, 3, 2, 2, seed=16), rand(2, 3, 2, 2, seed=17)
    var = torch.tensor([0.5, 2.0, 5.0], dtype=D64)
    total = 0.0
    for n in range(2):
        for c in range(3):
            for i in range(2):
                for j in range(2):
                    r = float(mean[n, c, i, j] - target[n, c, i, j])
                    total += 0.5 * (r * r / float(var[c]) + math.log(float(var[c])))
    assert R.gaussian_nll(mean, target, var).item() == pytest.approx(total / 24, rel=1e-12)


# ----------------------------------------------------------------------------------------- HCL


def test_hierarchical_context_loss_matches_loops() -> None:
    fs = [rand(2, 3, 8, 8, seed=18), rand(2, 4, 1, 1, seed=19)]
    ft = [rand(2, 3, 8, 8, seed=20), rand(2, 4, 1, 1, seed=21)]

    def mse(a: torch.Tensor, b: torch.Tensor) -> float:
        flat_a, flat_b = a.flatten().tolist(), b.flatten().tolist()
        return sum((x - y) ** 2 for x, y in zip(flat_a, flat_b)) / len(flat_a)

    # 8×8 level: full + ½·pool4 + ¼·pool2 + ⅛·pool1, divided by 1 + ½ + ¼ + ⅛
    first = mse(fs[0], ft[0])
    for weight, size in ((0.5, 4), (0.25, 2), (0.125, 1)):
        first += weight * mse(as_tensor(block_mean(fs[0], size)), as_tensor(block_mean(ft[0], size)))
    first /= 1.875
    expected = first + mse(fs[1], ft[1])  # a 1×1 level has no smaller pooling
    assert R.hierarchical_context_loss(fs, ft).item() == pytest.approx(expected, rel=1e-10)


# ----------------------------------------------------------------------------------------- CRD NCE


def test_nce_loss_matches_repdistiller_probability_form() -> None:
    """CRD Eq. 18 as RepDistiller writes it: P = e^{s/τ}/Z, Pn = 1/N, with m negatives per anchor."""
    b, m, n_data, tau = 3, 5, 40, 0.07
    scores = torch.rand(b, m + 1, generator=torch.Generator().manual_seed(22), dtype=D64) * 2 - 1
    z = 123.4  # RepDistiller's Z = mean score × N
    total = 0.0
    for i in range(b):
        p = [math.exp(float(scores[i, k]) / tau) / z for k in range(m + 1)]
        total += math.log(p[0] / (p[0] + m / n_data))
        total += sum(math.log((m / n_data) / (p[k] + m / n_data)) for k in range(1, m + 1))
    expected = -total / b
    logits = scores / tau
    log_noise = torch.tensor(math.log(m * z / n_data), dtype=D64)
    got = R.nce_contrast_loss(logits[:, 0], logits[:, 1:], log_noise)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_nce_loss_mask_drops_negatives_and_uses_row_counts() -> None:
    logits = rand(2, 4, seed=23)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    noise = torch.log(mask.sum(1).to(D64) * 0.3)
    got = R.nce_contrast_loss(logits[:, 0], logits[:, 1:], noise, mask)
    kept = [[1, 3], [1, 2, 3]]
    total = 0.0
    for i, cols in enumerate(kept):
        c = len(cols) * 0.3
        e = [math.exp(float(logits[i, k])) for k in range(4)]
        total += math.log(e[0] / (e[0] + c)) + sum(math.log(c / (e[k] + c)) for k in cols)
    assert got.item() == pytest.approx(-total / 2, rel=1e-10)


def test_nce_loss_is_finite_for_extreme_scores() -> None:
    logits = torch.tensor([[500.0, -500.0, 500.0]])
    value = R.nce_contrast_loss(logits[:, 0], logits[:, 1:], torch.tensor(math.log(2.0)))
    assert torch.isfinite(value)


# ----------------------------------------------------------------------------------------- gradients

GRADCHECKS = {
    "attention": lambda s, t: R.attention_loss(s, t),
    "sp": lambda s, t: R.similarity_preserving_loss(s, t),
    "hint": lambda s, t: R.hint_loss(s, t),
    "hcl": lambda s, t: R.hierarchical_context_loss([s], [t]),
}
VECTOR_GRADCHECKS = {
    "cc": lambda s, t: R.correlation_congruence_loss(s, t),
    "cc_repdistiller": lambda s, t: R.correlation_congruence_repdistiller(s, t),
    "rkd_distance": lambda s, t: R.rkd_distance_loss(s, t),
    "rkd_angle": lambda s, t: R.rkd_angle_loss(s, t),
    "pkt": lambda s, t: R.pkt_loss(s, t),
}


@pytest.mark.parametrize("name", sorted(GRADCHECKS))
def test_map_losses_gradcheck(name: str) -> None:
    s = rand(2, 3, 4, 4, seed=24).requires_grad_()
    t = rand(2, 3, 4, 4, seed=25)
    assert torch.autograd.gradcheck(lambda x: GRADCHECKS[name](x, t), (s,))


@pytest.mark.parametrize("name", sorted(VECTOR_GRADCHECKS))
def test_relation_losses_gradcheck(name: str) -> None:
    s = rand(4, 3, seed=26).requires_grad_()
    t = rand(4, 3, seed=27)
    assert torch.autograd.gradcheck(lambda x: VECTOR_GRADCHECKS[name](x, t), (s,))


def test_vid_and_nce_gradcheck() -> None:
    mean = rand(2, 3, 2, 2, seed=28).requires_grad_()
    alpha = rand(3, seed=29).requires_grad_()
    target = rand(2, 3, 2, 2, seed=30)
    nll = lambda m, a: R.gaussian_nll(m, target, F.softplus(a) + 1e-5)  # noqa: E731
    assert torch.autograd.gradcheck(nll, (mean, alpha))
    logits = rand(3, 6, seed=31).requires_grad_()
    noise = torch.tensor(0.7, dtype=D64)
    assert torch.autograd.gradcheck(lambda x: R.nce_contrast_loss(x[:, 0], x[:, 1:], noise), (logits,))


# ----------------------------------------------------------------------------------------- edge cases

RELATION_LOSSES = {
    "sp": R.similarity_preserving_loss,
    "cc": R.correlation_congruence_loss,
    "cc_repdistiller": R.correlation_congruence_repdistiller,
    "rkd_distance": R.rkd_distance_loss,
    "rkd_angle": R.rkd_angle_loss,
    "pkt": R.pkt_loss,
}


@pytest.mark.parametrize("name", sorted(RELATION_LOSSES))
def test_single_sample_batch_is_zero_not_nan(name: str) -> None:
    """Relations are undefined for one sample: the documented value is 0, with a finite zero gradient."""
    s = rand(1, 5, seed=32).requires_grad_()
    value = RELATION_LOSSES[name](s, rand(1, 7, seed=33)[:, :5])
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("name", sorted(RELATION_LOSSES))
def test_two_sample_and_degenerate_batches_are_finite(name: str) -> None:
    fn = RELATION_LOSSES[name]
    for s, t in [
        (rand(2, 5, seed=34), rand(2, 5, seed=35)),
        (torch.ones(3, 5, dtype=D64), torch.ones(3, 5, dtype=D64)),  # coincident points
        (torch.zeros(3, 5, dtype=D64), rand(3, 5, seed=36)),  # all-zero features
    ]:
        s = s.clone().requires_grad_()
        value = fn(s, t)
        value.backward()
        assert torch.isfinite(value), name
        assert torch.isfinite(s.grad).all(), name


def test_rkd_two_samples_distance_part_is_zero() -> None:
    # with one pair, both normalised distance matrices are [[0, 1], [1, 0]]
    assert R.rkd_distance_loss(rand(2, 4, seed=37), rand(2, 4, seed=38) * 9).item() == pytest.approx(0.0)
