"""TST on detection and segmentation: the one-affine f_DE and its targets, the Stage II objective's sign, and
real tiny runs (with an exact resume) on the scenes test bed built from the real Fashion-MNIST."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch

from datakd.augmenters.tst.augmenter import POLICY_FILE, TSTAugmenter
from datakd.augmenters.tst.dense import augment_detection, augment_segmentation
from datakd.augmenters.tst.encoder_file import FitConfig
from datakd.augmenters.tst.encoders import make_encoders, set_fill
from datakd.augmenters.tst.geometry import warp_label_maps, warp_target
from datakd.augmenters.tst.ops import op_index
from datakd.augmenters.tst.policy import TSTPolicy
from datakd.augmenters.tst.search import frozen_student, search_update
from datakd.cli import main
from datakd.data.loaders import Normalizer
from datakd.engine.build import build_trainer
from datakd.errors import ConfigError
from datakd.jobs.tst_fit import fit_or_load
from datakd.models.detection.forward import run_detector
from tests.helpers import crash_and_resume
from tests.test_dense_tasks import recipe

pytest.importorskip("pycocotools")

TRAIN, VAL, SIZE = 16, 8, 64
MEAN, STD = (0.3, 0.3, 0.3), (0.3, 0.3, 0.3)
FIT = FitConfig(epochs_spatial=1, epochs_color=1, batch_size=8, max_iters=3, image_size=32, eval_images=8)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bed(scenes_bed: Path) -> Path:
    return scenes_bed


def teacher(tmp: Path, bed: Path, task: str, name: str, loss: dict[str, Any]) -> Path:
    build_trainer(recipe(tmp, bed, task, name, loss, epochs=1), "train").fit()
    return tmp / "last.pt"


def tst_recipe(
    out: Path, bed: Path, task: str, pair: tuple[str, str], checkpoint: Path, **changes: Any
) -> Any:
    """A TST distillation recipe on the test bed; Stage I (a few iterations) is fitted here."""
    loss = (
        {"detector": {}, "det_kd": {}, "mimic": {}} if task == "detection" else {"seg_ce": {}, "seg_kd": {}}
    )
    cfg = recipe(
        out, bed, task, pair[1], loss, teacher={"name": pair[0], "checkpoint": str(checkpoint)}, **changes
    )
    encoders = out.parent / f"encoders-{task}.pt"
    fit_or_load(encoders, cfg.data, FIT, torch.device("cpu"))
    cfg.augmenter = {"name": "tst", "encoders": str(encoders), "fit": asdict(FIT)}
    cfg.events = [{"name": "tst_search", "at": [1], "epochs": 1}]
    return cfg


def affine_policy(ops: list[str], matrices: dict[str, list[float]]) -> TSTPolicy:
    """A policy whose spatial encoders output fixed matrices and whose chosen ops always apply."""
    encoders = make_encoders(3)
    set_fill(encoders, torch.zeros(1, 3, 1, 1) - 1.0)  # normalised black for MEAN = STD = 0.3
    policy = TSTPolicy(encoders, Normalizer(MEAN, STD, torch.device("cpu")), len(ops), "standard", ops=ops)
    with torch.no_grad():
        policy.prob_logits.fill_(20.0)
        for name, matrix in matrices.items():
            policy.encoders[name].fc.bias.copy_(torch.tensor(matrix))
            policy.encoders[name].gate_logit.fill_(40.0)
    return policy


def rotation(degrees: float, tx: float = 0.0) -> list[float]:
    a = math.radians(degrees)
    return [math.cos(a), -math.sin(a), tx, math.sin(a), math.cos(a), 0.0]


def test_boxes_and_masks_follow_the_module_affine() -> None:
    """Through the module: the box warped corner by corner equals the tight box of the warped mask, and both
    frame the warped object in the image itself, within a pixel."""
    policy = affine_policy(
        ["Rotate", "TranslateX"], {"Rotate": rotation(25.0), "TranslateX": rotation(0, 0.15)}
    )
    image = torch.zeros(3, SIZE, SIZE)
    image[:, 16:36, 20:44] = 1.0
    mask = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
    mask[0, 16:36, 20:44] = 1
    box = torch.tensor([[20.0, 16.0, 44.0, 36.0]])
    plain = {"boxes": box, "labels": torch.tensor([3]), "image_id": torch.tensor(0)}
    results = []
    for target in (plain, {**plain, "masks": mask}):
        torch.manual_seed(0)
        results.append(augment_detection(policy, [image], [target], policy.normalizer, policy.sample()))
    by_corners, by_mask = results[0].annotations[0]["boxes"], results[1].annotations[0]["boxes"]
    assert torch.equal(results[0].images[0], results[1].images[0])
    assert not torch.allclose(by_corners, box, atol=2.0)  # the warp did move the object
    assert torch.allclose(by_corners, by_mask, atol=1.0), (by_corners, by_mask)
    bright = results[0].images[0][0] > 0.5
    ys, xs = torch.nonzero(bright, as_tuple=True)
    in_image = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    assert torch.allclose(by_corners, in_image, atol=1.0), (by_corners, in_image)
    assert results[1].annotations[0]["masks"].sum() > 0 and results[0].dropped == 0


def test_label_maps_warp_with_nearest_and_255_outside() -> None:
    labels = torch.randint(0, 19, (2, SIZE, SIZE))
    labels[:, :4] = 255
    shift = torch.tensor([[1.0, 0.0, -16 / SIZE], [0.0, 1.0, 0.0]]).expand(2, 2, 3)  # content 8 px right
    moved = warp_label_maps(labels, shift)
    assert torch.equal(moved[:, :, 8:], labels[:, :, :-8]) and bool((moved[:, :, :8] == 255).all())
    policy = affine_policy(["Rotate"], {"Rotate": rotation(30.0)})
    images = torch.randn(2, 3, SIZE, SIZE)
    torch.manual_seed(0)
    out = augment_segmentation(policy, images, labels, policy.sample())
    assert set(out.labels.unique().tolist()) <= set(labels.unique().tolist()) | {
        255
    }  # nearest: no new values
    assert out.labels[:, 0, 0].eq(255).all()  # a corner of a 30° rotation comes from outside
    assert out.images.shape == images.shape and not torch.equal(out.images, images)


def test_objects_leaving_the_canvas_are_dropped_and_counted() -> None:
    boxes = torch.tensor([[2.0, 10.0, 18.0, 30.0], [40.0, 10.0, 60.0, 30.0], [24.0, 10.0, 40.0, 30.0]])
    target = {
        "boxes": boxes,
        "labels": torch.tensor([1, 2, 3]),
        "area": torch.ones(3),
        "image_id": torch.tensor(7),
    }
    # content 32 px left: box 0 leaves, box 2 keeps its right half (x 24..40 -> -8..8), box 1 stays
    theta = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    kept, keep = warp_target(target, theta, SIZE, SIZE, min_visible=0.25)
    assert keep.tolist() == [False, True, True] and kept["labels"].tolist() == [2, 3]
    assert torch.allclose(kept["boxes"], torch.tensor([[8.0, 10.0, 28.0, 30.0], [0.0, 10.0, 8.0, 30.0]]))
    assert torch.allclose(kept["area"], torch.tensor([400.0, 160.0])) and int(kept["image_id"]) == 7
    strict, keep = warp_target(target, theta, SIZE, SIZE, min_visible=0.6)
    assert keep.tolist() == [False, True, False] and strict["labels"].tolist() == [2]
    policy = affine_policy(["TranslateX"], {"TranslateX": [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]})
    torch.manual_seed(0)
    out = augment_detection(policy, [torch.rand(3, SIZE, SIZE)], [target], policy.normalizer, policy.sample())
    assert (out.dropped, out.objects) == (1, 3)


TRANSLATE = op_index("TranslateX")


def moving_policy(colour: bool = True) -> TSTPolicy:
    """Rotate 10° plus a TranslateX whose content shift grows with its magnitude: Â's x offset is
    0.1 − 0.4·m (output → input), so a larger m moves the content right; Brightness on top."""
    policy = affine_policy(
        ["Rotate", "TranslateX", *(["Brightness"] if colour else [])],
        {"Rotate": rotation(10.0), "TranslateX": rotation(0.0, 0.1)},
    )
    with torch.no_grad():
        policy.encoders["TranslateX"].fc.weight[2, 6] = -0.4
    return policy


def scene(masks: bool) -> tuple[torch.Tensor, dict[str, Any]]:
    """One 64×64 image with three objects: two inside the canvas, one the warp pushes off it."""
    image = torch.rand(3, SIZE, SIZE)
    boxes = torch.tensor([[8.0, 10.0, 30.0, 28.0], [34.0, 30.0, 50.0, 52.0], [60.0, 2.0, 64.0, 6.0]])
    target: dict[str, Any] = {
        "boxes": boxes,
        "labels": torch.tensor([1, 2, 3]),
        "area": torch.ones(3),
        "image_id": torch.tensor(4),
    }
    if masks:
        target["masks"] = torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
            target["masks"][k, y1:y2, x1:x2] = 1
    return image, target


@pytest.mark.parametrize("masks", [False, True], ids=["boxes", "masks"])
def test_stage_two_targets_keep_their_values_bit_for_bit(masks: bool) -> None:
    """With θ carrying grad (Stage II) the boxes carry θ's gradient, but images, boxes, masks, labels and
    areas are bit for bit those of the detached warp (no grad: Stage III, and the code before)."""
    policy = moving_policy()
    image, target = scene(masks)
    runs = []
    for grad in (True, False):
        torch.manual_seed(3)
        with torch.set_grad_enabled(grad):
            runs.append(augment_detection(policy, [image], [target], policy.normalizer, policy.sample()))
    live, fixed = runs
    assert live.annotations[0]["boxes"].requires_grad and not fixed.annotations[0]["boxes"].requires_grad
    assert (live.dropped, live.objects) == (fixed.dropped, fixed.objects) == (1, 3)
    assert torch.equal(live.images[0], fixed.images[0])
    assert set(live.annotations[0]) == set(fixed.annotations[0])
    for key, value in fixed.annotations[0].items():
        assert torch.equal(live.annotations[0][key], value), key
        assert live.annotations[0][key].dtype == value.dtype, key


def test_stage_two_boxes_follow_theta_in_the_gradient() -> None:
    """The image held fixed, a loss on the boxes alone has a gradient in θ_m(TranslateX): positive for the
    boxes' x (a larger magnitude shifts the content right), and equal to a float64 central difference of
    the boxes `warp_target` computes; the box the canvas clips at x = 64 does not move there."""
    policy = moving_policy(colour=False).double()  # float64 θ, Â and boxes
    image, target = scene(False)
    target = {**target, "boxes": target["boxes"].double()}
    target["boxes"][2] = torch.tensor([4.0, 46.0, 20.0, 64.0], dtype=torch.float64)  # kept, clipped below
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)

    def boxes_at(logit: float | None) -> torch.Tensor:
        if logit is not None:
            with torch.no_grad():
                policy.mag_logits[TRANSLATE] = logit
        torch.manual_seed(3)
        out = augment_detection(policy, [image], [target], policy.normalizer, policy.sample(), random=False)
        assert out.dropped == 0
        return out.annotations[0]["boxes"]

    start = float(policy.mag_logits[TRANSLATE].detach())
    boxes = boxes_at(None)
    (grad,) = torch.autograd.grad((boxes * weights).sum(), policy.mag_logits, retain_graph=True)
    x_grad = torch.autograd.grad(boxes[:, [0, 2]].sum(), policy.mag_logits, retain_graph=True)[0][TRANSLATE]
    assert x_grad > 0, x_grad
    h = 1e-3
    with torch.no_grad():
        numeric = ((boxes_at(start + h) - boxes_at(start - h)) * weights).sum() / (2 * h)
        moved = (boxes_at(start + 1.0) - boxes_at(start))[:, 0]
    assert float(grad[TRANSLATE]) == pytest.approx(float(numeric), rel=1e-4), (grad, numeric)
    assert bool((moved > 0).all())  # the content really moved right
    (y_bottom,) = torch.autograd.grad(boxes[2, 3], policy.mag_logits)
    assert float(boxes[2, 3].detach()) == SIZE and float(y_bottom.abs().sum()) < 1e-12


@pytest.mark.parametrize(
    "pair",
    [
        ("retinanet_r18_fpn_tiny", "retinanet_r18_fpn_nano"),
        ("fcos_r18_fpn_tiny", "fcos_r18_fpn_nano"),
        ("fasterrcnn_r18_fpn_tiny", "fasterrcnn_r18_fpn_nano"),
        ("maskrcnn_r18_fpn_tiny", "maskrcnn_r18_fpn_nano"),
    ],
    ids=lambda pair: pair[1].split("_")[0],
)
def test_stage_two_gradient_reaches_theta_through_the_targets(pair: tuple[str, str]) -> None:
    """Images held fixed (detached), so θ's gradient can only come through the boxes: the teacher's term
    (its regression targets; FCOS: none, its loss is NaN in the boxes) and the student's (the IoU with b)
    reach θ_m(TranslateX), finite, and nothing in torchvision's matching / sampling / RoIAlign raises on
    targets that carry grad. Untrained detectors, so two knobs: an untrained RPN proposes nothing near the
    objects and the ground-truth proposals move with their boxes (no gradient), so the R-CNN student's
    matcher takes IoU ≥ 0.05 as foreground; an untrained FCOS predicts empty boxes (IoU 0, no gradient),
    so its box-regression bias is set to 0.5 (boxes the size of their anchor)."""
    from torchvision.models.detection._utils import Matcher

    from datakd.augmenters.tst.dense import detection_search_loss
    from datakd.models.registry import create

    torch.manual_seed(0)
    teacher_net, student_net = (create(name, 4).eval().requires_grad_(False) for name in pair)
    if hasattr(student_net, "roi_heads"):
        student_net.roi_heads.proposal_matcher = Matcher(0.05, 0.05, allow_low_quality_matches=False)
    if pair[1].startswith("fcos"):
        student_net.head.regression_head.bbox_reg.bias.fill_(0.5)
    policy = moving_policy()
    images, targets = [], []
    for k in range(2):
        image, target = scene(True)
        images.append(image)
        targets.append({**target, "labels": torch.tensor([1, 2, 3]) + k % 2})
    for alpha, beta in ((1.0, 0.0), (0.0, 1.0)):
        torch.manual_seed(3)
        aug = augment_detection(policy, images, targets, policy.normalizer, policy.sample())
        fixed = [image.detach() for image in aug.images]
        loss, _ = detection_search_loss(
            student_net, teacher_net, fixed, aug.annotations, alpha, beta, contextlib.nullcontext
        )
        (grad,) = torch.autograd.grad(loss, policy.mag_logits)
        assert torch.isfinite(grad).all(), (alpha, beta, grad)
        if alpha and pair[0].startswith("fcos"):
            assert float(grad.abs().sum()) == 0.0
        else:
            assert float(grad[TRANSLATE].abs()) > 1e-6, (alpha, beta, grad)


def test_stage_two_detection_objective_has_the_right_sign(bed: Path, tmp_path: Path) -> None:
    """One SGD step of θ on our objective, measured on the same draw before and after: the student's box-head
    detection loss (classification + box regression) rises, the teacher's detection loss does not. Colour
    ops only, so the targets do not move with θ and the gradient is the whole story; gates held open."""
    pair = ("fasterrcnn_r18_fpn_tiny", "fasterrcnn_r18_fpn_nano")
    checkpoint = teacher(tmp_path / "t", bed, "detection", pair[0], {"detector": {}})
    cfg = recipe(
        tmp_path / "s",
        bed,
        "detection",
        pair[1],
        {"detector": {}},
        teacher={"name": pair[0], "checkpoint": str(checkpoint)},
        augmenter={
            "name": "tst",
            "prior": False,
            "ops": ["Brightness", "Contrast", "Sharpness"],
            "num_ops": 3,
            "rbd_mode": "standard",
            "lr": 100.0,
        },
    )
    trainer = build_trainer(cfg, "distill")
    augmenter = trainer.augmenter
    assert isinstance(augmenter, TSTAugmenter)
    policy = augmenter.require_policy()
    with torch.no_grad():
        policy.prob_logits.fill_(8.0)
        for encoder in policy.encoders.values():
            encoder.gate_logit.fill_(20.0)
    batch = next(iter(trainer.loader.epoch(0)))

    def measure() -> tuple[float, float]:
        with torch.random.fork_rng(), torch.no_grad(), frozen_student(trainer.student_module) as student:
            torch.manual_seed(5)
            aug = augmenter.augment_dense(batch)
            own = run_detector(student, aug.images, aug.annotations, losses=True)["losses"]
            taught = run_detector(trainer.teacher, aug.images, aug.annotations, losses=True)["losses"]
        return float(own["loss_classifier"] + own["loss_box_reg"]), float(sum(taught.values()))

    student_before, teacher_before = measure()
    optimizer = torch.optim.SGD([policy.prob_logits, policy.mag_logits], lr=augmenter.lr)
    with torch.random.fork_rng(), frozen_student(trainer.student_module) as student:
        torch.manual_seed(5)
        loss, parts = augmenter.dense_search_loss(batch, student, trainer.teacher, trainer.autocast)
        search_update(loss, optimizer, None)
    assert policy.mag_logits.grad is not None and policy.mag_logits.grad.abs().sum() > 0
    assert set(parts) == {"teacher", "student_cls", "student_box"}
    student_after, teacher_after = measure()
    assert student_after > student_before, (student_before, student_after)
    assert teacher_after <= teacher_before, (teacher_before, teacher_after)


def test_tst_detection_run_resumes_bit_identically_and_plots(bed: Path, tmp_path: Path, monkeypatch) -> None:
    pair = ("retinanet_r18_fpn_tiny", "retinanet_r18_fpn_nano")
    checkpoint = teacher(tmp_path / "t", bed, "detection", pair[0], {"detector": {}})

    def cfg(out: Path) -> Any:
        return tst_recipe(
            out,
            bed,
            "detection",
            pair,
            checkpoint,
            engine={"tensorboard": False, "checkpoint_every_iters": 3},
        )

    straight = build_trainer(cfg(tmp_path / "straight"), "distill")
    straight.fit()
    _, resumed = crash_and_resume(cfg(tmp_path / "crashed"), "distill", crash_at=6, monkeypatch=monkeypatch)
    a, b = straight.state_dict(), resumed.state_dict()
    for part in ("model", "augmenter", "terms"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    rows = straight.metrics.rows
    assert [r["test_map"] for r in rows] == [r["test_map"] for r in resumed.metrics.rows]
    assert all(0.0 <= r["tst_dropped_objects"] <= 1.0 for r in rows)
    assert "tst_search_student_box" in rows[-1] and math.isfinite(rows[-1]["tst_search_loss"])
    policy = (tmp_path / "straight" / POLICY_FILE).read_text()
    assert policy == (tmp_path / "crashed" / POLICY_FILE).read_text()
    assert main(["plot", "tst", str(tmp_path / "straight"), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "tst_policy.png").is_file()


def test_tst_segmentation_run(bed: Path, tmp_path: Path) -> None:
    pair = ("pspnet_r18_tiny", "pspnet_r18_nano")
    checkpoint = teacher(tmp_path / "t", bed, "segmentation", pair[0], {"seg_ce": {}})
    trainer = build_trainer(tst_recipe(tmp_path / "s", bed, "segmentation", pair, checkpoint), "distill")
    summary = trainer.fit()
    assert summary["status"] == "finished" and 0 < summary["miou_last"] <= 100
    assert math.isfinite(trainer.metrics.rows[-1]["tst_search_loss"])
    assert (tmp_path / "s" / POLICY_FILE).is_file()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_visible": 1.5}, "tst.min_visible must be a fraction in [0, 1], got 1.5"),
        ({"min_box_size": 0}, "tst.min_box_size must be a positive number of pixels, got 0"),
        ({"min_visible": True}, "tst.min_visible must be a fraction"),
    ],
)
def test_bad_dense_options_fail_in_one_line(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        TSTAugmenter(prior=False, **options)
    assert message in str(info.value) and "\n" not in str(info.value)


REPO = Path(__file__).resolve().parents[1]
DENSE_RECIPES = sorted(
    [
        *(REPO / "recipes" / "coco" / "tst").rglob("*.yaml"),
        *(REPO / "recipes" / "cityscapes" / "tst").rglob("*.yaml"),
        *(REPO / "recipes" / "testbed").glob("tst_*.yaml"),
    ]
)


PAPER_MAP = {  # 000 Table 3, "Ours (KD)" and "Ours (KD+mimic)"
    ("cmrcnn_x101-frcnn_r50", "tst_kd"): 40.5,
    ("cmrcnn_x101-frcnn_r50", "tst_kd_mimic"): 42.2,
    ("retinanet_x101-retinanet_r50", "tst_kd"): 39.9,
    ("retinanet_x101-retinanet_r50", "tst_kd_mimic"): 40.5,
    ("fcos_r101-fcos_r50", "tst_kd"): 40.1,
    ("fcos_r101-fcos_r50", "tst_kd_mimic"): 41.0,
}


def test_dense_tst_recipes_cover_tables_3_and_4() -> None:
    names = {p.relative_to(REPO / "recipes").as_posix() for p in DENSE_RECIPES}
    for pair in ("cmrcnn_x101-frcnn_r50", "retinanet_x101-retinanet_r50", "fcos_r101-fcos_r50"):
        for arm in ("tst_kd", "tst_kd_mimic"):
            assert f"coco/tst/{pair}/{arm}.yaml" in names
    assert "cityscapes/tst/pspnet_r101-pspnet_r18.yaml" in names
    assert "testbed/tst_retinanet_kd_mimic.yaml" in names and "testbed/tst_pspnet_seg_kd.yaml" in names


@pytest.mark.parametrize("path", DENSE_RECIPES, ids=lambda p: p.relative_to(REPO / "recipes").as_posix())
def test_dense_tst_recipe_follows_the_paper(path: Path) -> None:
    from datakd.augmenters.base import build_augmenter
    from datakd.config import load_config
    from datakd.events.base import build_events
    from datakd.losses.base import build_terms

    cfg = load_config(path)
    assert isinstance(build_augmenter(cfg.augmenter), TSTAugmenter)
    (event,) = build_events(cfg.events)
    terms = {t.term_name: t for t in build_terms(cfg.loss)}
    if cfg.task == "detection":
        assert set(terms) - {"mimic"} == {"detector", "det_kd"} and terms["det_kd"].temperature == 1.0
        assert all(t.weight == 1.0 for t in terms.values())
        assert event.at == [6 * cfg.epochs // 24, 12 * cfg.epochs // 24] and event.epochs == 1
    else:
        assert (terms["seg_kd"].main_weight, terms["seg_kd"].aux_weight) == (1.5, 0.5)
        assert cfg.schedule.name == "poly" and cfg.optim.lr == 0.01 and cfg.optim.weight_decay == 5e-4
    if path.parent.name == "testbed":
        assert cfg.student.name.endswith("_nano") and cfg.teacher.name.endswith("_tiny")
        return
    ref = cfg.reference
    assert ref["paper"] == "000" and ref["table"] in (3, 4) and ref["row"].startswith("Ours")
    if cfg.task == "detection":
        two_stage = "frcnn" in path.parent.name
        assert (cfg.epochs, cfg.data.batch_size, cfg.optim.lr) == (24, 16, 0.02 if two_stage else 0.01)
        assert cfg.schedule.milestones == [16, 22] and cfg.schedule.warmup_epochs > 0
        assert cfg.data.options["degenerate_boxes"] == "drop" and cfg.data.dataset == "coco"
        assert ref["map"] == PAPER_MAP[(path.parent.name, path.stem)]
    else:
        assert (cfg.epochs, event.at, event.pass_images) == (430, [40, 81], 20000) and ref["miou"] == 76.55
