"""PBA ops, policies and schedules: level table, op geometry/values vs single-image references, the batched
application plan, its randomness, explore statistics, schedule stretching and files, and a real-data run."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from datakd.augmenters.base import build_augmenter
from datakd.augmenters.pba_ops import OPS, apply_op, cutout_boxes, op_parameter
from datakd.augmenters.pba_policy import (
    NUM_ENTRIES,
    POLICY_LENGTH,
    Plan,
    Schedule,
    apply_plan,
    check_policy,
    explore,
    sample_plan,
)
from datakd.engine.build import build_trainer
from datakd.errors import DatakdError
from tests.helpers import tiny_config

FILL = [125, 122, 113]


def _images(n: int = 6, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth-ish images (a gradient plus noise) so equalize/autocontrast have something to do
    base = torch.linspace(20, 200, size).view(1, 1, 1, size) + torch.linspace(0, 40, size).view(1, 1, size, 1)
    noise = torch.randint(0, 30, (n, c, size, size), generator=g)
    return (base + noise).clamp(0, 255).to(torch.uint8)


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def _from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def test_level_to_parameter_table_matches_pba():
    table = {
        "Rotate": [0, 3, 6, 9, 12, 15, 18, 21, 24, 27],
        "Posterize": [4, 4, 4, 3, 3, 2, 2, 2, 1, 1],
        "Solarize": [256, 231, 205, 180, 154, 128, 103, 77, 52, 26],
        "TranslateX": list(range(10)),
        "TranslateY": list(range(10)),
        "Cutout": [0, 2, 4, 6, 8, 10, 12, 14, 16, 18],
    }
    for op, expected in table.items():
        assert [op_parameter(op, lv) for lv in range(10)] == pytest.approx(expected), op
    for op in ("Color", "Contrast", "Brightness", "Sharpness"):
        assert [op_parameter(op, lv) for lv in range(10)] == pytest.approx(
            [0.1 + 0.18 * lv for lv in range(10)]
        )
    for op in ("ShearX", "ShearY"):
        assert [op_parameter(op, lv) for lv in range(10)] == pytest.approx([0.03 * lv for lv in range(10)])
    for op in ("AutoContrast", "Equalize", "Invert"):
        assert op_parameter(op, 5) is None
    assert OPS[0] == "AutoContrast" and OPS[3] == "Rotate" and OPS[14] == "Cutout" and len(OPS) == 15


def _reference(op: str, image: torch.Tensor, p: float | None) -> torch.Tensor:
    """One image through the op as PBA defines it: PIL for the geometry, torchvision for colour ops."""
    nearest = InterpolationMode.NEAREST
    if op == "AutoContrast":
        return TF.autocontrast(image)
    if op == "Equalize":
        return TF.equalize(image)
    if op == "Invert":
        return 255 - image
    if op == "Rotate":
        return TF.rotate(image, p, interpolation=nearest, fill=[float(v) for v in FILL])
    if op == "Posterize":
        return image & (0xFF << (8 - int(p)) & 0xFF)
    if op == "Solarize":
        return torch.where(image >= p, 255 - image, image)
    if op == "Color":
        return TF.adjust_saturation(image, p)
    if op == "Contrast":
        return TF.adjust_contrast(image, p)
    if op == "Brightness":
        return TF.adjust_brightness(image, p)
    if op == "Sharpness":
        return TF.adjust_sharpness(image, p)
    pil = _pil(image).convert("RGBA")
    coeffs = {
        "ShearX": (1, p, 0, 0, 1, 0),
        "ShearY": (1, 0, 0, p, 1, 0),
        "TranslateX": (1, 0, p, 0, 1, 0),
        "TranslateY": (1, 0, 0, 0, 1, p),
    }[op]
    out = np.array(pil.transform(pil.size, Image.AFFINE, coeffs))  # PBA: PIL affine, transparent outside
    rgb = torch.from_numpy(out[:, :, :3].copy()).permute(2, 0, 1)
    outside = torch.from_numpy(out[:, :, 3] == 0)
    return torch.where(outside, torch.tensor(FILL, dtype=torch.uint8).view(3, 1, 1), rgb)


@pytest.mark.parametrize("op", [o for o in OPS if o != "Cutout"])
def test_batched_op_equals_single_image_reference(op):
    images = _images()
    for level in (0, 3, 9):
        p = op_parameter(op, level)
        for sign in (
            (1.0, -1.0) if op in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY") else (1.0,)
        ):
            value = None if p is None else p * sign
            batched = apply_op(op, images, value, FILL)
            assert batched.dtype == torch.uint8 and batched.shape == images.shape
            for i in range(len(images)):
                assert torch.equal(batched[i], _reference(op, images[i], value)), (op, level, sign, i)


def test_op_geometry():
    image = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    image[0, :, 5, 7] = 255
    moved = apply_op("TranslateX", image, 3.0, [0, 0, 0])  # PIL reads x + 3: content moves 3 px left
    assert moved[0, 0, 5, 4] == 255 and moved[0, 0].sum() == 255
    moved = apply_op("TranslateY", image, -2.0, [0, 0, 0])
    assert moved[0, 0, 7, 7] == 255 and moved[0, 0].sum() == 255
    sheared = apply_op("ShearX", image, 0.2, [0, 0, 0])  # out(x, y) = in(x + 0.2·y, y): row 5 moves 1 px left
    assert sheared[0, 0, 5, 6] == 255
    assert torch.equal(apply_op("Rotate", image, 0.0, [0, 0, 0]), image)
    rotated = apply_op("Rotate", image, 90.0, [0, 0, 0])  # counter-clockwise about the centre
    ys, xs = torch.nonzero(rotated[0, 0], as_tuple=True)
    assert (ys.item(), xs.item()) == (15 - 7, 5)
    # Cutout: side 2L, box [c - L, c + L) clipped, filled with the fill colour
    images = torch.full((2, 3, 10, 10), 200, dtype=torch.uint8)
    out = apply_op("Cutout", images, 6.0, FILL, torch.tensor([[5, 5], [0, 9]]))
    assert (out[0, 0] == FILL[0]).sum() == 36 and torch.equal(
        out[0, :, 2, 2], torch.tensor(FILL, dtype=torch.uint8)
    )
    assert (out[1, 0] == FILL[0]).sum() == 3 * 4  # rows 0..2, cols 6..9
    assert torch.equal(apply_op("Cutout", images, 0.0, FILL, torch.zeros(2, 2, dtype=torch.long)), images)
    mask = cutout_boxes(8, 8, torch.tensor([[4, 4]]), torch.tensor([8]), torch.device("cpu"))
    assert mask.sum() == 64


def _policy(prob: int = 10, mag: int = 5) -> list[int]:
    return [prob, mag] * NUM_ENTRIES


def test_check_policy_errors():
    check_policy(_policy())
    with pytest.raises(DatakdError, match="60 integers"):
        check_policy([0] * 59)
    bad = _policy()
    bad[4] = 11
    with pytest.raises(DatakdError, match=r"policy\[4\] is a probability level"):
        check_policy(bad)
    bad = _policy()
    bad[5] = 10
    with pytest.raises(DatakdError, match="magnitude"):
        check_policy(bad)


def test_count_distribution_and_uniform_entries():
    g = torch.Generator().manual_seed(1)
    n = 20000
    plan = sample_plan(_policy(10), n, 32, 32, g)  # every entry applies: the count decides
    counts = (plan.entries >= 0).sum(dim=1)
    freq = torch.bincount(counts, minlength=3).double() / n
    assert torch.allclose(freq, torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), atol=0.015)
    assert bool(((plan.entries[:, 1] >= 0) <= (plan.entries[:, 0] >= 0)).all())  # no second without a first
    firsts = plan.entries[:, 0][plan.entries[:, 0] >= 0]
    share = torch.bincount(firsts, minlength=NUM_ENTRIES).double() / len(firsts)
    assert share.min() > 0.8 / NUM_ENTRIES and share.max() < 1.2 / NUM_ENTRIES
    both = plan.entries[counts == 2]
    assert bool((both[:, 0] != both[:, 1]).all())  # an entry is used at most once
    assert bool((plan.signs.abs() == 1).all()) and abs(float(plan.signs.mean())) < 0.02
    # nothing applies at probability 0; with a single p=0.5 entry, P(op) = P(count>0)·0.5 = 0.4
    assert (sample_plan(_policy(0), 1000, 32, 32, g).entries < 0).all()
    single = _policy(0)
    single[2 * 7] = 5
    plan = sample_plan(single, n, 32, 32, g)
    assert set(plan.entries[plan.entries >= 0].tolist()) == {7}
    assert abs(float((plan.entries[:, 0] == 7).double().mean()) - 0.4) < 0.015


def test_plan_is_seeded():
    a = sample_plan(_policy(7), 64, 32, 32, torch.Generator().manual_seed(3))
    b = sample_plan(_policy(7), 64, 32, 32, torch.Generator().manual_seed(3))
    c = sample_plan(_policy(7), 64, 32, 32, torch.Generator().manual_seed(4))
    assert torch.equal(a.entries, b.entries) and torch.equal(a.cutout_centres, b.cutout_centres)
    assert not torch.equal(a.entries, c.entries)


def test_apply_plan_equals_per_image_sequence():
    images = _images(n=40, seed=2)
    policy = [random.Random(k).randint(0, 10) if k % 2 == 0 else k % 10 for k in range(POLICY_LENGTH)]
    policy = [10 if k % 2 == 0 else v for k, v in enumerate(policy)]
    plan = sample_plan(policy, len(images), 32, 32, torch.Generator().manual_seed(5))
    out = apply_plan(images, policy, plan, FILL)
    assert (plan.entries >= 0).sum() > 30
    for i in range(len(images)):
        image = images[i : i + 1]
        for r in range(2):
            entry = int(plan.entries[i, r])
            if entry < 0:
                continue
            op = OPS[entry % 15]
            p = op_parameter(op, policy[2 * entry + 1])
            if p is not None and op in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"):
                p *= float(plan.signs[i, r])
            image = apply_op(op, image, p, FILL, plan.cutout_centres[i : i + 1, r])
        assert torch.equal(out[i : i + 1], image), i
    empty = Plan(torch.full((3, 2), -1), torch.ones(3, 2), torch.zeros(3, 2, 2, dtype=torch.long))
    assert apply_plan(images[:3], policy, empty, FILL) is images[:3] or torch.equal(
        apply_plan(images[:3], policy, empty, FILL), images[:3]
    )


def test_explore_statistics():
    rng = random.Random(0)
    base = [5, 5] * NUM_ENTRIES
    draws = [explore(base, rng) for _ in range(3000)]
    values = torch.tensor(draws)
    assert int(values[:, 0::2].max()) <= 10 and int(values[:, 1::2].max()) <= 9 and int(values.min()) >= 0
    delta = (values - torch.tensor(base)).abs()
    # unchanged: resampled to the same value (0.2/11 or 0.2/10) or amount 0 (0.8 / 4)
    unchanged = float((delta == 0).double().mean())
    assert abs(unchanged - (0.8 / 4 + 0.2 * (0.5 / 11 + 0.5 / 10))) < 0.01
    far = float((delta > 3).double().mean())  # only resampling reaches > 3 away
    assert abs(far - 0.2 * 0.5 * (4 / 11 + 3 / 10)) < 0.005  # {0, 1, 9, 10} and {0, 1, 9}
    for amount in (1, 2, 3):
        expected = 0.8 / 4 + 0.2 * 0.5 * (2 / 11 + 2 / 10)
        assert abs(float((delta == amount).double().mean()) - expected) < 0.01
    top = explore([10, 9] * NUM_ENTRIES, random.Random(1))  # clipped at the top of the range
    assert max(top[0::2]) <= 10 and max(top[1::2]) <= 9


def test_schedule_stretch_save_load(tmp_path):
    policies = [tuple([e % 11, e % 10] * NUM_ENTRIES) for e in range(200)]
    schedule = Schedule(policies, {"role": "teacher"})
    assert schedule.policy_at(37) == policies[37]
    assert [schedule.policy_at(e, 400)[0] for e in (0, 1, 2, 3, 399)] == [0, 0, 1, 1, 199 % 11]
    assert schedule.policy_at(10, 100) == policies[20] and schedule.policy_at(99, 100) == policies[198]
    assert schedule.policy_at(250, 200) == policies[199]
    path = schedule.save(tmp_path / "s.json")
    loaded = Schedule.load(path)
    assert loaded.policies == policies and loaded.meta == {"role": "teacher"}
    assert json.loads(path.read_text())["ops"] == list(OPS)
    with pytest.raises(DatakdError, match="does not exist"):
        Schedule.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(DatakdError, match="not a datakd PBA schedule"):
        Schedule.load(tmp_path / "bad.json")


def test_schedule_from_pba_log(tmp_path):
    p0, p1, p2 = [0] * 60, [1] * 60, [2] * 60
    lines = [
        json.dumps(["4", "9", 3, 3, {"hp_policy": p0}, {"hp_policy": p1}]),
        str(["7", "4", 9, 9, p1, p2]),  # python-literal line with bare policies, as in old PBA logs
    ]
    (tmp_path / "pbt_policy_7.txt").write_text("\n".join(lines) + "\n")
    schedule = Schedule.from_pba_log(tmp_path / "pbt_policy_7.txt", 12)
    assert schedule.epochs == 12
    assert [p[0] for p in schedule.policies] == [0] * 3 + [1] * 6 + [2] * 3


def test_pba_augmenter_options(tmp_path):
    with pytest.raises(DatakdError, match="exactly one"):
        build_augmenter({"name": "pba"})
    with pytest.raises(DatakdError, match="cutout"):
        build_augmenter({"name": "pba", "policy": _policy(), "cutout": -1})
    with pytest.raises(DatakdError, match="does not exist"):
        build_augmenter({"name": "pba", "schedule": str(tmp_path / "nope.json")})


def test_pba_augmenter_trains_and_switches_policy(tmp_path):
    policies = [tuple(_policy(0, 0)), tuple(_policy(3, 5))]
    path = Schedule(policies).save(tmp_path / "schedule.json")
    cfg = tiny_config(
        tmp_path / "run", epochs=2, augmenter={"name": "pba", "schedule": str(path), "cutout": 8}
    )
    trainer = build_trainer(cfg, "train")
    trainer.fit()
    rows = trainer.metrics.rows
    assert rows[0]["pba_ops_per_image"] == 0.0  # epoch 0: the all-zero policy
    expected = 0.3 + 2 * 0.5  # p=0.3 on 30 entries: the walk almost always finds `count` ops
    assert abs(rows[1]["pba_ops_per_image"] - expected) < 0.15
    assert trainer.augmenter.policy == policies[1]
    # it still learns (10 classes: chance is 10 %; plain crop/flip reaches 27.5 % on this tiny run)
    assert rows[-1]["test_top1"] > 20.0 and rows[1]["loss_total"] < rows[0]["loss_total"]
    # final Cutout: an 8×8 box of zeros (the mean) in the normalised batch
    aug = trainer.augmenter
    from datakd.data.loaders import Batch

    batch = Batch(torch.ones(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), torch.arange(4))
    views = aug(batch, trainer_ctx(trainer))
    zeros = (views[0].images == 0).sum(dim=(1, 2, 3))
    assert bool((zeros <= 64).all()) and bool((zeros > 0).all())


def trainer_ctx(trainer):
    from datakd.api.context import StepContext

    return StepContext(0, 0, 0, 1, 1, trainer.student, None, trainer.meters, trainer.autocast)


def test_raw_transform_seeded_and_fill_is_mean():
    aug = build_augmenter({"name": "pba", "policy": _policy(10, 9)})
    aug.setup(SimpleNamespace(mean=(0.2860,)))  # Fashion-MNIST mean
    assert aug.fill == [73]
    images = _images(64, 1, 28)
    a = aug.raw_transform()(images, torch.Generator().manual_seed(0))
    b = aug.raw_transform()(images, torch.Generator().manual_seed(0))
    c = aug.raw_transform()(images, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = float((a != images).any(dim=3).any(dim=2).any(dim=1).double().mean())
    assert 0.6 < changed < 0.95  # 80 % of the images get at least one op (a few ops can be no-ops)
    with pytest.raises(DatakdError, match="channels"):
        aug.setup(SimpleNamespace(mean=(0.5, 0.5, 0.5)))


def test_schedule_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from datakd.plots.base import PLOTS
    from datakd.plots.pba import find_schedule, schedule_curves

    first = [0] * POLICY_LENGTH
    second = list(first)
    second[2 * 3], second[2 * 3 + 1] = 10, 9  # Rotate, copy 1: p = 1, magnitude 9
    second[2 * 18], second[2 * 18 + 1] = 4, 2  # Rotate, copy 2: p = 0.4, magnitude 2
    schedule = Schedule([tuple(first), tuple(second)], {"role": "student"})
    probability, magnitude = schedule_curves(schedule)
    assert probability.shape == (2, 15) and float(probability[0].sum()) == 0.0
    assert float(probability[1, 3]) == pytest.approx(0.7) and float(magnitude[1, 3]) == pytest.approx(5.5)
    path = schedule.save(tmp_path / "search" / "schedule.json")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"augmenter: {{name: pba, schedule: {path}}}\n")
    assert find_schedule(tmp_path / "search") == path == find_schedule(run) == find_schedule(path)
    with pytest.raises(DatakdError, match="not a PBA schedule"):
        find_schedule(tmp_path)
    (png,) = PLOTS.get("pba")(path, path / "plots")  # what `datakd plot pba FILE` passes
    assert png == tmp_path / "search" / "plots" / "pba_schedule.png" and png.stat().st_size > 10_000
