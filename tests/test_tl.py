"""Seed 001 augmenters: mixup/CutMix/Cutout geometry and randomness, and the pick step of TLCutMix+pick.

Each check compares against an independent computation (explicit loops, float64 NumPy, fresh model
forwards), never against the code path under test.
"""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import pytest
import torch

from datakd.api.context import StepContext
from datakd.augmenters.base import build_augmenter
from datakd.augmenters.cutout import cut_out
from datakd.augmenters.mixing import (
    cutmix_box,
    cutout_masks,
    derangement,
    mixed_targets,
    mixup,
    paste_box,
    sample_lambda,
)
from datakd.augmenters.tl_pick import pick_scores, score_ratio
from datakd.data.loaders import Batch
from datakd.engine.metrics import EpochMeters
from datakd.errors import ConfigError, DatakdError
from datakd.losses import functional as LF
from datakd.models import create

H = W = 16


def make_batch(n: int = 8, channels: int = 3, size: int = H, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, channels, size, size, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return Batch(images, labels, torch.arange(n))


def make_ctx(student=None, teacher=None) -> StepContext:
    return StepContext(0, 0, 0, 1, 1, student, teacher, EpochMeters(), contextlib.nullcontext)


def changed_mask(mixed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """N×H×W: pixels where any channel differs (random normal images never coincide by chance)."""
    return (mixed != original).any(dim=1)


# ----------------------------------------------------------------------------- λ and partners
def test_lambda_is_uniform_for_alpha_one_and_beta_otherwise() -> None:
    torch.manual_seed(0)
    draws = np.array([sample_lambda(1.0) for _ in range(2000)])
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    assert abs(draws.mean() - 0.5) < 0.02 and abs(draws.var() - 1 / 12) < 0.008
    counts = np.histogram(draws, bins=10, range=(0, 1))[0]
    assert counts.min() > 150 and counts.max() < 250  # 200 expected per decile
    beta2 = np.array([sample_lambda(2.0) for _ in range(2000)])
    assert abs(beta2.mean() - 0.5) < 0.02 and abs(beta2.var() - 1 / 20) < 0.008


@pytest.mark.parametrize("n", [2, 3, 4, 7, 64, 128])
def test_derangement_is_a_permutation_without_fixed_points(n: int) -> None:
    for seed in range(200):
        torch.manual_seed(seed)
        perm = derangement(n)
        assert sorted(perm.tolist()) == list(range(n))
        assert all(perm[i].item() != i for i in range(n))


def test_derangement_partner_is_uniform_over_the_others() -> None:
    torch.manual_seed(0)
    n, trials = 5, 6000
    counts = np.zeros((n, n))
    for _ in range(trials):
        perm = derangement(n).numpy()
        counts[np.arange(n), perm] += 1
    assert np.all(np.diag(counts) == 0)
    off = counts[~np.eye(n, dtype=bool)]
    expected = trials / (n - 1)
    chi2 = ((off - expected) ** 2 / expected).sum()
    assert chi2 < 60  # 20 cells, 15 d.o.f.: p(chi2 > 60) is about 1e-7


def test_derangement_of_one_image_is_a_clear_error() -> None:
    with pytest.raises(DatakdError, match="at least 2"):
        derangement(1)


# ----------------------------------------------------------------------------- CutMix geometry
@pytest.mark.parametrize("lam", [0.0, 0.1, 0.37, 0.5, 0.8, 0.99, 1.0])
def test_cutmix_box_sides_and_clipping(lam: float) -> None:
    height, width = 32, 24
    for seed in range(100):
        torch.manual_seed(seed)
        box = cutmix_box(height, width, lam)
        cut_h = math.floor(height * math.sqrt(1 - lam))
        cut_w = math.floor(width * math.sqrt(1 - lam))
        assert 0 <= box.y1 <= box.y2 <= height and 0 <= box.x1 <= box.x2 <= width
        assert box.y2 - box.y1 <= cut_h and box.x2 - box.x1 <= cut_w
        # a side is only shortened where it touches the border
        if box.y2 - box.y1 < cut_h:
            assert box.y1 == 0 or box.y2 == height
        if box.x2 - box.x1 < cut_w:
            assert box.x1 == 0 or box.x2 == width
        assert box.kept_fraction == pytest.approx(
            1 - (box.y2 - box.y1) * (box.x2 - box.x1) / (height * width)
        )


def test_cutmix_box_centre_is_uniform_over_pixels() -> None:
    torch.manual_seed(0)
    size = 8
    hits = np.zeros((size, size))
    for _ in range(6400):
        box = cutmix_box(
            size, size, 0.75
        )  # side 4 before clipping: the centre pixel is y1 + 2 when unclipped
        cy = box.y2 - 2 if box.y1 == 0 else box.y1 + 2
        cx = box.x2 - 2 if box.x1 == 0 else box.x1 + 2
        hits[cy, cx] += 1
    assert hits.min() > 60 and hits.max() < 145  # 100 expected per pixel


def test_paste_box_takes_partner_inside_and_self_outside() -> None:
    batch = make_batch(6)
    torch.manual_seed(3)
    box = cutmix_box(H, W, 0.4)
    perm = derangement(6)
    mixed = paste_box(batch.images, perm, box)
    for i in range(6):
        for y in range(H):
            for x in range(W):
                inside = box.y1 <= y < box.y2 and box.x1 <= x < box.x2
                source = batch.images[perm[i], :, y, x] if inside else batch.images[i, :, y, x]
                assert torch.equal(mixed[i, :, y, x], source)
    # the mixed share of every image is exactly 1 - λ (λ recomputed from the clipped box)
    share = changed_mask(mixed, batch.images).float().mean(dim=(1, 2))
    assert torch.allclose(share, torch.full((6,), 1 - box.kept_fraction))


def test_tlcutmix_one_box_per_batch_and_teacher_only_view() -> None:
    augmenter = build_augmenter({"name": "tlcutmix"})
    for seed in range(30):
        batch = make_batch(8, seed=seed)
        torch.manual_seed(seed)
        ctx = make_ctx()
        main, mix = augmenter(batch, ctx)
        assert main.name == "main" and torch.equal(main.images, batch.images)
        assert torch.equal(main.labels, batch.labels)
        assert mix.name == "mix" and mix.labels is None and mix.targets is None and mix.teacher_logits is None
        changed = changed_mask(mix.images, batch.images)
        assert all(torch.equal(changed[0], changed[i]) for i in range(8)), "one box for the whole batch"
        rows = changed[0].any(dim=1).nonzero().flatten()
        cols = changed[0].any(dim=0).nonzero().flatten()
        if len(rows):
            box = torch.zeros(H, W, dtype=torch.bool)
            box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
            assert torch.equal(changed[0], box), "the changed pixels form one rectangle"
            # no image is mixed with itself: inside the box every image differs from itself
            assert changed[:, rows.min(), cols.min()].all()
        lam = ctx.meters.means()["mix_lambda"]
        assert lam == pytest.approx(1 - changed[0].float().mean().item())


def test_cutmix_lambda_distribution_over_seeds() -> None:
    """The mixed area share follows from λ ~ U(0, 1): E[(side/H)²] ≈ E[1 − λ] = 1/2 minus clipping."""
    augmenter = build_augmenter({"name": "tlcutmix"})
    batch = make_batch(4, size=32)
    shares = []
    for seed in range(400):
        torch.manual_seed(seed)
        ctx = make_ctx()
        _, mix = augmenter(batch, ctx)
        shares.append(changed_mask(mix.images, batch.images)[0].float().mean().item())
    shares = np.array(shares)
    assert shares.min() >= 0 and shares.max() <= 1
    # unclipped the share would be floor(32·sqrt(1−λ))²/1024 (mean ≈ 0.47); clipping only removes pixels
    assert 0.2 < shares.mean() < 0.47
    assert (shares < 0.05).mean() > 0.02 and (shares > 0.6).mean() > 0.05


# ----------------------------------------------------------------------------- mixup and labels
def test_mixup_formula_and_tlmixup_view() -> None:
    batch = make_batch(5)
    perm = torch.tensor([2, 0, 1, 4, 3])
    mixed = mixup(batch.images, perm, 0.3)
    expected = 0.3 * batch.images.double() + 0.7 * batch.images.double()[perm]
    torch.testing.assert_close(mixed.double(), expected, rtol=1e-6, atol=1e-6)

    augmenter = build_augmenter({"name": "tlmixup"})
    lams = []
    for seed in range(200):
        torch.manual_seed(seed)
        ctx = make_ctx()
        _, mix = augmenter(batch, ctx)
        assert mix.labels is None and mix.targets is None
        lam = ctx.meters.means()["mix_lambda"]
        lams.append(lam)
        # every image is λ·itself + (1−λ)·some image of the batch, with one λ for the batch
        x = batch.images.flatten(1).double()
        candidates = lam * x[:, None, :] + (1 - lam) * x[None, :, :]  # [i, j] = mix of i with j
        err = (candidates - mix.images.flatten(1).double()[:, None, :]).abs().amax(dim=2)
        assert (err.min(dim=1).values < 1e-5).all()
    lams = np.array(lams)
    assert abs(lams.mean() - 0.5) < 0.06 and abs(lams.var() - 1 / 12) < 0.02


def test_mixed_targets_give_the_cutmix_cross_entropy() -> None:
    torch.manual_seed(0)
    labels = torch.tensor([0, 3, 3, 7])
    perm = torch.tensor([1, 0, 3, 2])
    targets = mixed_targets(labels, perm, 0.25, 10)
    assert torch.allclose(targets.sum(dim=1), torch.ones(4))
    logits = torch.randn(4, 10, dtype=torch.float64)
    log_p = torch.log_softmax(logits, dim=1)
    expected = np.mean(
        [-(0.25 * log_p[i, labels[i]] + 0.75 * log_p[i, labels[perm[i]]]).item() for i in range(4)]
    )
    assert LF.cross_entropy(logits, targets.double()).item() == pytest.approx(expected, rel=1e-6)


def test_cutmix_ce_view_carries_label_distributions() -> None:
    augmenter = build_augmenter({"name": "cutmix_ce"})
    with pytest.raises(DatakdError, match="setup"):
        augmenter(make_batch(4), make_ctx())
    augmenter.num_classes = 10
    batch = make_batch(8)
    torch.manual_seed(1)
    ctx = make_ctx()
    _, mix = augmenter(batch, ctx)
    lam = ctx.meters.means()["mix_lambda"]
    assert mix.labels is None and mix.targets is not None
    assert torch.allclose(mix.targets.sum(dim=1), torch.ones(8))
    for i in range(8):
        # the weight of the image's own label is λ (plus 1 − λ when its partner shares the label)
        own = mix.targets[i, batch.labels[i]].item()
        assert own == pytest.approx(lam) or own == pytest.approx(1.0)


def test_bad_options_fail_with_choices() -> None:
    with pytest.raises(ConfigError, match="derangement"):
        build_augmenter({"name": "tlcutmix", "partners": "shuffle"})
    with pytest.raises(ConfigError, match="alpha"):
        build_augmenter({"name": "tlmixup", "alpha": 0})
    with pytest.raises(ConfigError, match="kld"):
        build_augmenter({"name": "tlcutmix_pick", "criterion": "kl"})
    with pytest.raises(ConfigError, match="eval"):
        build_augmenter({"name": "tlcutmix_pick", "score_mode": "test"})
    with pytest.raises(ConfigError, match="n_pick"):
        build_augmenter({"name": "tlcutmix_pick", "n_pick": 0})
    with pytest.raises(ConfigError, match="runs"):
        build_augmenter({"name": "tlcutmix_pick", "runs": 0})
    with pytest.raises(ConfigError, match="size"):
        build_augmenter({"name": "cutout", "size": 0})
    with pytest.raises(ConfigError, match="valid"):
        build_augmenter({"name": "tlcutmix", "beta": 1.0})


# ----------------------------------------------------------------------------- Cutout
def test_cutout_one_square_per_image_zeroed_in_normalised_space() -> None:
    torch.manual_seed(0)
    n, size = 64, 8
    images = torch.randn(n, 3, 32, 32)
    out = cut_out(images, size, per_image=True)
    zeroed = (out == 0).all(dim=1)
    assert torch.equal(out[~zeroed.unsqueeze(1).expand_as(out)], images[~zeroed.unsqueeze(1).expand_as(out)])
    boxes = set()
    for i in range(n):
        rows = zeroed[i].any(dim=1).nonzero().flatten()
        cols = zeroed[i].any(dim=0).nonzero().flatten()
        y1, y2, x1, x2 = rows.min().item(), rows.max().item() + 1, cols.min().item(), cols.max().item() + 1
        assert zeroed[i].sum().item() == (y2 - y1) * (x2 - x1), "one rectangle"
        assert y2 - y1 <= size and x2 - x1 <= size
        if y2 - y1 < size:
            assert y1 == 0 or y2 == 32
        if x2 - x1 < size:
            assert x1 == 0 or x2 == 32
        boxes.add((y1, x1))
    assert len(boxes) > n // 2, "squares are drawn per image"


def test_cutout_per_batch_shares_one_square_and_centres_are_uniform() -> None:
    torch.manual_seed(0)
    masks = cutout_masks(5, 16, 16, 4, per_image=False, device="cpu")
    assert all(torch.equal(masks[0], masks[i]) for i in range(5))
    hits = np.zeros((16, 16))
    masks = cutout_masks(12800, 16, 16, 1, per_image=True, device="cpu")  # 1×1 square = its centre
    for i in range(masks.shape[0]):
        hits += (~masks[i, 0]).numpy()
    assert hits.sum() == 12800 and hits.min() > 20 and hits.max() < 85  # 50 expected per pixel


def test_cutout_augmenters_views() -> None:
    batch = make_batch(4)
    torch.manual_seed(0)
    (main,) = build_augmenter({"name": "cutout", "size": 4})(batch, make_ctx())
    assert main.name == "main" and torch.equal(main.labels, batch.labels)
    assert ((main.images == 0).all(dim=1).sum(dim=(1, 2)) > 0).all()
    main, mix = build_augmenter({"name": "tlcutout", "size": 4})(batch, make_ctx())
    assert torch.equal(main.images, batch.images) and mix.labels is None


# ----------------------------------------------------------------------------- pick
def pick_models(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    teacher = create("resnet14", 10).eval()
    student = create("resnet8", 10).train()
    return student, teacher


def kl_float64(t_logits: torch.Tensor, s_logits: torch.Tensor, tau: float) -> np.ndarray:
    """KL(softmax(t/τ) ‖ softmax(s/τ)) per row with explicit sums in NumPy float64."""
    t = t_logits.double().numpy() / tau
    s = s_logits.double().numpy() / tau
    out = []
    for tr, sr in zip(t, s):
        pt = np.exp(tr - tr.max()) / np.exp(tr - tr.max()).sum()
        log_pt = tr - tr.max() - np.log(np.exp(tr - tr.max()).sum())
        log_ps = sr - sr.max() - np.log(np.exp(sr - sr.max()).sum())
        out.append(sum(pt[c] * (log_pt[c] - log_ps[c]) for c in range(len(pt))))
    return np.array(out)


def entropy_float64(logits: torch.Tensor) -> np.ndarray:
    z = logits.double().numpy()
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return -(p * np.log(p)).sum(axis=1)


def pool_rows(pool: torch.Tensor, picked: torch.Tensor) -> list[int]:
    """Index in `pool` of every picked image (exact match)."""
    same = (pool.flatten(1)[None, :, :] == picked.flatten(1)[:, None, :]).all(dim=2)
    assert (same.sum(dim=1) == 1).all()
    return same.float().argmax(dim=1).tolist()


@pytest.mark.parametrize("score_mode", ["train", "eval"])
def test_pick_keeps_the_top_b_by_kl_and_reuses_teacher_logits(score_mode: str) -> None:
    student, teacher = pick_models()
    augmenter = build_augmenter({"name": "tlcutmix_pick", "score_mode": score_mode, "temperature": 4.0})
    batch = make_batch(8)
    reference_student = copy.deepcopy(student)
    torch.manual_seed(5)
    ctx = make_ctx(student, teacher)
    main, mix = augmenter(batch, ctx)
    torch.manual_seed(5)
    pool = augmenter.candidates(batch.images)  # the same RNG draws as inside forward
    assert pool.shape[0] == 16 and mix.images.shape[0] == 8 and mix.labels is None
    with torch.no_grad():
        t_pool = teacher(pool)
        reference_student.train(score_mode == "train")
        s_pool = reference_student(pool)
    scores = kl_float64(t_pool, s_pool, 4.0)
    expected = set(np.argsort(-scores)[:8].tolist())
    kept = pool_rows(pool, mix.images)
    assert set(kept) == expected
    # the view's teacher logits are exactly the teacher's output on the kept images
    with torch.no_grad():
        fresh = teacher(mix.images)
    assert torch.equal(mix.teacher_logits, fresh)
    r = ctx.meters.means()["pick_kl_ratio"]
    assert r == pytest.approx(scores[kept].mean() / scores.mean(), rel=1e-5)
    assert r >= 1.0
    assert torch.equal(main.images, batch.images)
    assert student.training, "the student's mode is restored after scoring"


@pytest.mark.parametrize("criterion", ["teacher_entropy", "student_entropy"])
def test_pick_entropy_criteria(criterion: str) -> None:
    student, teacher = pick_models(1)
    augmenter = build_augmenter({"name": "tlcutmix_pick", "criterion": criterion, "n_pick": 5})
    batch = make_batch(6, seed=2)
    reference_student = copy.deepcopy(student)
    torch.manual_seed(9)
    ctx = make_ctx(student, teacher)
    _, mix = augmenter(batch, ctx)
    torch.manual_seed(9)
    pool = augmenter.candidates(batch.images)
    with torch.no_grad():
        logits = teacher(pool) if criterion == "teacher_entropy" else reference_student.train()(pool)
    scores = entropy_float64(logits)
    assert mix.images.shape[0] == 5
    assert set(pool_rows(pool, mix.images)) == set(np.argsort(-scores)[:5].tolist())
    assert (mix.teacher_logits is not None) == (criterion == "teacher_entropy")
    assert f"pick_{criterion}_ratio" in ctx.meters.means()


def test_pick_bn_side_effect_only_in_train_score_mode() -> None:
    batch = make_batch(8)
    for mode, changes in (("train", True), ("eval", False)):
        student, teacher = pick_models()
        before = {k: v.clone() for k, v in student.state_dict().items()}
        augmenter = build_augmenter({"name": "tlcutmix_pick", "score_mode": mode})
        torch.manual_seed(0)
        augmenter(batch, make_ctx(student, teacher))
        after = student.state_dict()
        bn_buffers = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        assert bn_buffers
        moved = [k for k in bn_buffers if not torch.equal(before[k], after[k])]
        assert bool(moved) == changes, (mode, moved)
        params = [k for k in before if k not in bn_buffers]
        assert all(torch.equal(before[k], after[k]) for k in params), "scoring never changes weights"


def test_pick_ratio_is_at_least_one_over_many_draws() -> None:
    student, teacher = pick_models(2)
    augmenter = build_augmenter({"name": "tlcutmix_pick", "score_mode": "eval"})
    for seed in range(40):
        batch = make_batch(4, seed=seed)
        torch.manual_seed(seed)
        ctx = make_ctx(student, teacher)
        augmenter(batch, ctx)
        assert ctx.meters.means()["pick_kl_ratio"] >= 1.0 - 1e-9
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        scores = torch.rand(32, generator=g) ** 3
        k = int(torch.randint(1, 33, (), generator=g))
        kept = torch.topk(scores, k).indices
        assert score_ratio(scores, kept).item() >= 1.0 - 1e-12
    assert score_ratio(torch.zeros(6), torch.tensor([0, 1])).item() == 1.0


def test_pick_pool_size_and_n_pick_limits() -> None:
    student, teacher = pick_models()
    batch = make_batch(4)
    torch.manual_seed(0)
    _, mix = build_augmenter({"name": "tlcutmix_pick", "runs": 3, "n_pick": 100})(
        batch, make_ctx(student, teacher)
    )
    assert mix.images.shape[0] == 12, "n_pick is capped at the pool size (runs × B)"
    augmenter = build_augmenter({"name": "tlcutmix_pick", "runs": 3})
    torch.manual_seed(0)
    pool = augmenter.candidates(batch.images)
    for r in range(3):  # every run has its own box: the runs differ
        for q in range(r):
            assert not torch.equal(pool[4 * r : 4 * r + 4], pool[4 * q : 4 * q + 4])


def test_pick_needs_a_teacher_for_teacher_criteria() -> None:
    student, _ = pick_models()
    with pytest.raises(DatakdError, match="needs a teacher"):
        build_augmenter({"name": "tlcutmix_pick"})(make_batch(4), make_ctx(student, None))
    torch.manual_seed(0)
    _, mix = build_augmenter({"name": "tlcutmix_pick", "criterion": "student_entropy"})(
        make_batch(4), make_ctx(student, None)
    )
    assert mix.teacher_logits is None


def test_pick_scores_match_float64_formulas() -> None:
    torch.manual_seed(0)
    t, s = torch.randn(7, 10) * 3, torch.randn(7, 10) * 3
    np.testing.assert_allclose(
        pick_scores("kld", t, s, 4.0).numpy(), kl_float64(t, s, 4.0), rtol=1e-4, atol=1e-7
    )
    np.testing.assert_allclose(
        pick_scores("teacher_entropy", t, s, 4.0).numpy(), entropy_float64(t), rtol=1e-5
    )
    np.testing.assert_allclose(
        pick_scores("student_entropy", t, s, 4.0).numpy(), entropy_float64(s), rtol=1e-5
    )
    with pytest.raises(DatakdError, match="teacher"):
        pick_scores("kld", None, s, 4.0)
    with pytest.raises(ConfigError, match="student_entropy"):
        pick_scores("kl", t, s, 4.0)
