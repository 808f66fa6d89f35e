"""Statistics that span the batch under DDP: which are per rank, which are shared, and why that holds.

docs/distributed.md promises, for N processes with one global batch B: relation losses (DIST's intra-class
term, RKD, SP, CC) and DPK's π = 1 − CKA see only the rank's own B/N samples; TLCutMix+pick keeps the top
B/N of each rank's own 2B/N candidates; mixup/CutMix λ, box and partners and TST's op choice are the same
on every rank, because every rank's global RNG starts from the same seed and is consumed identically; the
CRD memories stay identical because every rank writes all ranks' rows. Comparing a DDP run with a
one-process run of the same global batch cannot show any of this (the relation terms are meant to differ),
so the checks here look inside one step.

One `torchrun --nproc-per-node 2` launch (gloo, CPU) runs this module as a script: each rank builds the real
trainer for every scenario, takes the first batch its device-resident loader gives it and runs one real
`train_step`, recording what the step computed (term values, gradients before the optimizer step, DPK's
logged π, the pick pool and its scores, every mixing draw, CRD buffers, the RNG state). The tests then
rebuild the same trainer in the pytest process (one process, no process group) and check each record
against what that rank's slice of the global batch must give.

Why the references slice a one-process forward pass of the whole global batch instead of running the model
on the slice alone: the student's batch norm is synchronised (`engine.sync_bn`), so a rank's features are the
global-batch features of its samples; only the loss terms may restrict themselves to the slice.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from datakd.api.context import TermInputs, View, record
from datakd.augmenters import mixing
from datakd.augmenters.tl_pick import TLCutMixPick, pick_scores
from datakd.config import RunConfig
from datakd.data.loaders import Batch
from datakd.engine.build import build_trainer
from datakd.engine.trainer import Trainer
from datakd.errors import DatakdError
from datakd.losses import functional as LF
from datakd.losses import relations as R
from datakd.metrics import cka_minibatch
from datakd.models import create
from tests.helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
GLOBAL_BATCH = 16
LOCAL_BATCH = GLOBAL_BATCH // WORLD

# One config per scenario; rank and reference runs build them identically (only the run directory differs).
RELATIONS = ("dist", "rkd", "sp", "cc")
RELATION_LOSSES: dict[str, dict[str, Any]] = {
    "ce": {"weight": 1.0},
    "dist": {"weight": 1.0, "beta": 1.0, "gamma": 2.0, "temperature": 4.0},
    "rkd": {"weight": 1.0},
    "sp": {"weight": 100.0},
    "cc": {"weight": 10.0, "embed_dim": 16},
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "relations": {"loss": RELATION_LOSSES},
    "dpk": {
        "loss": {
            "ce": {"weight": 1.0},
            "dpk": {
                "weight": 0.2,
                "student": ["stage2", "stage3"],
                "teacher": ["stage2", "stage3"],
                "width": 16,
                "heads": 2,
                "encoder_depth": 1,
                "decoder_depth": 1,
            },
        }
    },
    "pick": {
        "augmenter": {"name": "tlcutmix_pick", "runs": 2, "score_mode": "train"},
        "loss": {
            "ce": {"weight": 0.1},
            "kd": {"weight": 0.9, "temperature": 4.0},
            "kd_mix": {"type": "kd", "views": ["mix"], "weight": 0.9, "temperature": 4.0},
        },
    },
    "mixup": {
        "augmenter": {"name": "tlmixup"},
        "loss": {
            "ce": {"weight": 1.0},
            "kd": {"weight": 1.0},
            "kd_mix": {"type": "kd", "views": ["mix"], "weight": 1.0},
        },
    },
    "tst": {
        # prior: false needs no Stage I file; the op draw is what is checked, not the quality of the ops.
        "augmenter": {"name": "tst", "prior": False, "num_ops": 4},
        "loss": {"ce": {"weight": 1.0}, "kd": {"weight": 1.0, "temperature": 4.0}},
    },
    "crd": {
        "loss": {
            "ce": {"weight": 1.0},
            "crd_bank": {"type": "crd", "weight": 0.8, "feat_dim": 16, "nce_k": 32},
            "crd_queue": {"type": "crd", "weight": 0.8, "feat_dim": 16, "memory": "queue", "queue_size": 64},
        }
    },
}


def scenario_config(name: str, out: Path, teacher: Path, **data: Any) -> RunConfig:
    """The run of scenario `name`: ResNet-8 on 64 real images, global batch 16, the scenario's methods."""
    spec = SCENARIOS[name]
    return tiny_config(
        out,
        teacher={"checkpoint": str(teacher)},
        data={"train_subset": 64, "batch_size": GLOBAL_BATCH, **data},
        optim={"momentum": 0.0, "weight_decay": 0.0},
        loss=spec["loss"],
        augmenter=spec.get("augmenter", {"name": "none"}),
        # One memory format on both sides: `auto` is channels-last in the one-process reference and
        # contiguous under gloo DDP, and the records are compared to float32 tolerances.
        engine={"channels_last": False},
    )


# --------------------------------------------------------------------------------------------------------
# What each rank runs (this module executed by torchrun)
# --------------------------------------------------------------------------------------------------------


def _batch_record(batch: Batch) -> dict[str, torch.Tensor]:
    return {"indices": batch.indices.clone(), "images": batch.images.clone(), "labels": batch.labels.clone()}


def _step(trainer: Trainer, record_grads: bool = False) -> dict[str, Any]:
    """One real training step on the first batch the rank's loader yields; what the step computed."""
    batch = next(iter(trainer.loader.epoch(0)))
    values: dict[str, float] = {}
    grads: dict[str, torch.Tensor] = {}
    hooks = [
        term.register_forward_hook(lambda m, _i, out: values.__setitem__(m.term_name, float(out)))
        for term in trainer.terms
    ]

    def keep_grads(*_: Any) -> None:
        grads.update(
            {n: p.grad.clone() for n, p in trainer.trainable_named_parameters() if p.grad is not None}
        )

    if record_grads:
        hooks.append(trainer.optimizer.register_step_pre_hook(keep_grads))
    trainer.student.train()
    trainer.train_step(batch)
    for hook in hooks:
        hook.remove()
    return {
        "batch": _batch_record(batch),
        "values": values,
        "grads": grads,
        "meters": trainer.meters.means(),  # this rank's own logs (no cross-rank reduction)
        "rng": torch.get_rng_state(),
    }


@contextlib.contextmanager
def _recording(module: Any, names: list[str], log: list[tuple[str, Any]]) -> Iterator[None]:
    """Replace `module.name` by a wrapper that appends (name, result) to `log`, for the duration."""
    originals = {name: getattr(module, name) for name in names}
    own = {name for name in names if name in vars(module)}  # not a method looked up on the class

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            log.append((name, result.clone() if isinstance(result, torch.Tensor) else result))
            return result

        return recorded

    for name, fn in originals.items():
        setattr(module, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            if name in own:
                setattr(module, name, fn)
            else:
                delattr(module, name)


def _rank_relations(cfg: RunConfig) -> dict[str, Any]:
    return _step(build_trainer(cfg, "distill"), record_grads=True)


def _rank_dpk(cfg: RunConfig) -> dict[str, Any]:
    result = _step(build_trainer(cfg, "distill"))
    try:  # the same recipe with a global batch of 4: 2 samples per rank cannot give an unbiased HSIC
        teacher = Path(str(cfg.teacher.checkpoint))
        build_trainer(scenario_config("dpk", Path(f"{cfg.out}_small"), teacher, batch_size=4), "distill")
        result["small_batch_error"] = None
    except DatakdError as error:
        result["small_batch_error"] = str(error)
    return result


def _rank_pick(cfg: RunConfig) -> dict[str, Any]:
    trainer = build_trainer(cfg, "distill")
    augmenter = trainer.augmenter
    assert isinstance(augmenter, TLCutMixPick)
    draws: list[tuple[str, Any]] = []
    scored: dict[str, torch.Tensor] = {}
    views: list[View] = []
    score = augmenter.score

    def keep_score(pool: torch.Tensor, ctx: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        scores, t_logits = score(pool, ctx)
        scored.update(pool=pool.clone(), scores=scores.clone())
        return scores, t_logits

    augmenter.score = keep_score  # type: ignore[method-assign]
    hook = augmenter.register_forward_hook(lambda _m, _i, out: views.extend(out))
    with _recording(mixing, ["sample_lambda", "cutmix_box", "partners"], draws):
        result = _step(trainer)
    hook.remove()
    mixed = next(v for v in views if v.name == "mix")
    return {**result, **scored, "draws": draws, "kept_images": mixed.images.clone()}


def _rank_mixup(cfg: RunConfig) -> dict[str, Any]:
    trainer = build_trainer(cfg, "distill")
    draws: list[tuple[str, Any]] = []
    views: list[View] = []
    hook = trainer.augmenter.register_forward_hook(lambda _m, _i, out: views.extend(out))
    with _recording(mixing, ["sample_lambda", "partners"], draws):
        result = _step(trainer)
    hook.remove()
    mixed = next(v for v in views if v.name == "mix")
    return {**result, "draws": draws, "mixed": mixed.images.clone()}


def _rank_tst(cfg: RunConfig) -> dict[str, Any]:
    trainer = build_trainer(cfg, "distill")
    policy = trainer.augmenter.policy
    draws: list[tuple[str, Any]] = []
    views: list[View] = []
    hook = trainer.augmenter.register_forward_hook(lambda _m, _i, out: views.extend(out))
    with _recording(policy, ["sample"], draws):
        result = _step(trainer)
    hook.remove()
    ((_, draw),) = draws
    (view,) = views
    return {
        **result,
        "ops": list(draw.ops),
        "gates": draw.gates.detach().clone(),
        "view_labels": view.labels.clone(),
        "view_size": int(view.images.shape[0]),
    }


def _rank_crd(cfg: RunConfig) -> dict[str, Any]:
    trainer = build_trainer(cfg, "distill")
    before = {f"{t.term_name}.{k}": v.clone() for t in trainer.terms for k, v in t.named_buffers()}
    result = _step(trainer)
    after = {f"{t.term_name}.{k}": v.clone() for t in trainer.terms for k, v in t.named_buffers()}
    return {**result, "buffers_before": before, "buffers_after": after}


RANK_SCENARIOS: dict[str, Callable[[RunConfig], dict[str, Any]]] = {
    "relations": _rank_relations,
    "dpk": _rank_dpk,
    "pick": _rank_pick,
    "mixup": _rank_mixup,
    "tst": _rank_tst,
    "crd": _rank_crd,
}


def _rank_main(root: Path, teacher: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {
        name: run(scenario_config(name, root / f"rank{rank}" / name, teacher))
        for name, run in RANK_SCENARIOS.items()
    }
    torch.save(results, root / f"rank{rank}.pt")
    dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------------
# The tests (one process; the fixture launches the ranks once for the whole module)
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ResNet-8 (seeded apart from the student): any fixed network gives relations to compare."""
    torch.manual_seed(1234)
    model = create("resnet8", 10, in_channels=1)
    path = tmp_path_factory.mktemp("ddp-stats") / "teacher.pt"
    torch.save(
        {"model": model.state_dict(), "model_name": "resnet8", "model_kwargs": {"in_channels": 1},
         "num_classes": 10},
        path,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def ranks(teacher: Path) -> list[dict[str, Any]]:
    """What each of the 2 gloo ranks recorded in its step of every scenario."""
    root = teacher.parent / "ranks"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
        "-m", "tests.test_ddp_batch_statistics", str(root), str(teacher),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _reference(name: str, out: Path, teacher: Path) -> tuple[Trainer, Batch]:
    """The scenario's trainer in this (single) process, and the global batch of its first step."""
    trainer = build_trainer(scenario_config(name, out, teacher), "distill")
    trainer.student.train()
    return trainer, next(iter(trainer.loader.epoch(0)))


def _slice(rank: int) -> slice:
    return slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)


def _check_loader_slices(batch: Batch, ranks: list[dict[str, Any]], name: str) -> None:
    """Each rank got exactly its consecutive B/N of the global batch, already augmented (crop/flip)."""
    for r, rank in enumerate(ranks):
        got = rank[name]["batch"]
        assert torch.equal(got["indices"], batch.indices[_slice(r)])
        assert torch.equal(got["labels"], batch.labels[_slice(r)])
        torch.testing.assert_close(got["images"], batch.images[_slice(r)], rtol=0, atol=0)


def _forward(trainer: Trainer, images: torch.Tensor) -> tuple[torch.Tensor, dict, torch.Tensor, dict]:
    """Student (train mode, with autograd) and teacher outputs with every tap the run's terms read."""
    s_taps = [tap for term in trainer.terms for tap in term.student_taps]
    t_taps = [tap for term in trainer.terms for tap in term.teacher_taps]
    s_logits, s_feats = record(trainer.student, images, s_taps)
    with torch.no_grad():
        t_logits, t_feats = record(trainer.teacher, images, t_taps)
    return s_logits, s_feats, t_logits, t_feats


def _term_inputs(
    trainer: Trainer, batch: Batch, part: slice, outputs: tuple[torch.Tensor, dict, torch.Tensor, dict]
) -> TermInputs:
    """What a term would be handed for the samples `part` of the global batch."""
    s_logits, s_feats, t_logits, t_feats = outputs
    view = View("main", batch.images[part], batch.labels[part], indices=batch.indices[part])
    return TermInputs(
        view,
        s_logits[part],
        t_logits[part],
        {k: v[part] for k, v in s_feats.items()},
        {k: v[part] for k, v in t_feats.items()},
        0,
        0,
        0,
        trainer.steps_per_epoch,
        trainer.total_epochs,
    )


@torch.no_grad()
def _relations_float64(trainer: Trainer, inputs: TermInputs) -> dict[str, float]:
    """Each relation term on `inputs` in float64, through the functional forms (not the term modules), and
    DIST's intra-class part alone (its inter-class part is per sample, so only this part can differ)."""
    out: dict[str, float] = {}
    dist_term, rkd, sp, cc = (trainer.term(name) for name in RELATIONS)
    s_logits, t_logits = inputs.student_logits.double(), inputs.teacher_logits.double()
    tau = dist_term.temperature
    out["dist"] = float(LF.dist(s_logits, t_logits, dist_term.beta, dist_term.gamma, tau))
    p_s, p_t = torch.softmax(s_logits / tau, dim=1), torch.softmax(t_logits / tau, dim=1)
    out["dist_intra"] = float(LF.intra_class_relation(p_s, p_t, dist_term.eps))

    def pair(term: Any) -> tuple[torch.Tensor, torch.Tensor]:
        ((s_tap,), (t_tap,)) = term.student_taps, term.teacher_taps
        return inputs.student_features[s_tap].double(), inputs.teacher_features[t_tap].double()

    fs, ft = pair(rkd)
    out["rkd"] = float(
        rkd.distance_weight * R.rkd_distance_loss(fs, ft) + rkd.angle_weight * R.rkd_angle_loss(fs, ft)
    )
    out["sp"] = float(R.similarity_preserving_loss(*pair(sp)))
    fs, ft = pair(cc)
    embed_s, embed_t = copy.deepcopy(cc.embed_s[0]).double(), copy.deepcopy(cc.embed_t[0]).double()
    out["cc"] = float(R.correlation_congruence_loss(embed_s(fs), embed_t(ft), cc.gamma, cc.order))
    return out


def test_relation_terms_see_only_the_local_slice(
    ranks: list[dict[str, Any]], teacher: Path, tmp_path: Path
) -> None:
    """DIST, RKD, SP, CC on each rank = the float64 functional on that rank's slice of the global batch, and
    not the relation of the whole global batch (else the per-rank claim would not be observable here)."""
    trainer, batch = _reference("relations", tmp_path / "ref", teacher)
    _check_loader_slices(batch, ranks, "relations")
    with torch.no_grad():
        outputs = _forward(trainer, batch.images)
    expected = [
        _relations_float64(trainer, _term_inputs(trainer, batch, _slice(r), outputs)) for r in range(WORLD)
    ]
    whole = _relations_float64(trainer, _term_inputs(trainer, batch, slice(None), outputs))
    for name in [*RELATIONS, "dist_intra"]:
        for r, rank in enumerate(ranks):
            # term values as the trainer computed them; DIST's intra part as the term logged it
            got = rank["relations"]["values"].get(name, rank["relations"]["meters"].get(name))
            assert got == pytest.approx(expected[r][name], rel=1e-4, abs=1e-7), (name, r)
        if name != "dist":  # its per-sample inter-class part dominates; its intra part is checked alone
            per_rank_mean = sum(e[name] for e in expected) / WORLD
            assert per_rank_mean != pytest.approx(whole[name], rel=1e-3), name


def test_relation_gradient_is_the_mean_of_the_slice_gradients(
    ranks: list[dict[str, Any]], teacher: Path, tmp_path: Path
) -> None:
    """After DDP's all-reduce (student) and the trainer's own average (CC's embeddings), every rank holds the
    gradient of (1/N)·Σ_r loss(slice r): the run's terms (CE and the four relations) applied slice by slice
    to one forward pass of the global batch."""
    trainer, batch = _reference("relations", tmp_path / "ref", teacher)
    outputs = _forward(trainer, batch.images)
    total = sum(
        term.weight * term(_term_inputs(trainer, batch, _slice(r), outputs))
        for r in range(WORLD)
        for term in trainer.terms
    )
    (total / WORLD).backward()
    expected = {n: p.grad for n, p in trainer.trainable_named_parameters() if p.grad is not None}
    assert any(n.startswith("terms.") for n in expected), "CC's embeddings train alongside the student"
    for rank in ranks:
        grads = rank["relations"]["grads"]
        assert grads.keys() == expected.keys()
        for name, grad in expected.items():
            scale = float(grad.abs().max())
            torch.testing.assert_close(
                grads[name], grad, rtol=1e-3, atol=1e-4 * scale, msg=lambda m, name=name: f"{name}: {m}"
            )
    for name in expected:  # the ranks apply the same update
        torch.testing.assert_close(ranks[0]["relations"]["grads"][name], ranks[1]["relations"]["grads"][name])


def test_dpk_ratio_is_one_minus_the_local_cka(
    ranks: list[dict[str, Any]], teacher: Path, tmp_path: Path
) -> None:
    """π logged on each rank = 1 − minibatch CKA of that rank's slice, stage by stage; the global-batch CKA
    differs, so the check tells the two apart."""
    trainer, batch = _reference("dpk", tmp_path / "ref", teacher)
    _check_loader_slices(batch, ranks, "dpk")
    with torch.no_grad():
        _, s_feats, _, t_feats = _forward(trainer, batch.images)
    term = trainer.term("dpk")
    for s_tap, t_tap in zip(term.student_taps, term.teacher_taps):
        whole = float(cka_minibatch(t_feats[t_tap], s_feats[s_tap]))
        local = [
            float(cka_minibatch(t_feats[t_tap][_slice(r)], s_feats[s_tap][_slice(r)])) for r in range(WORLD)
        ]
        assert min(abs(whole - c) for c in local) > 1e-3
        for r, rank in enumerate(ranks):
            meters = rank["dpk"]["meters"]
            assert meters[f"dpk_cka_{s_tap}"] == pytest.approx(local[r], abs=1e-5)
            assert meters[f"dpk_pi_{s_tap}"] == pytest.approx(1.0 - local[r], abs=1e-5)


def test_dpk_local_batch_below_four_fails_at_setup(
    ranks: list[dict[str, Any]], teacher: Path, tmp_path: Path
) -> None:
    """A global batch of 4 on 2 processes leaves 2 samples per rank: the run stops while it is built, with a
    message that names the per-process batch, although one process builds the same recipe fine."""
    for rank in ranks:
        message = rank["dpk"]["small_batch_error"]
        assert message is not None
        assert "per process" in message and "batch_size is 4 over 2 processes gives 2" in message
        assert "\n" not in message
    build_trainer(scenario_config("dpk", tmp_path / "one", teacher, batch_size=4), "distill")


def _replay_cutmix(images: torch.Tensor, perm: torch.Tensor, box: mixing.Box) -> torch.Tensor:
    """CutMix written out: the box region comes from the partner, the rest from the image itself."""
    out = images.clone()
    out[:, :, box.y1 : box.y2, box.x1 : box.x2] = images[perm][:, :, box.y1 : box.y2, box.x1 : box.x2]
    return out


def _draws(rank: dict[str, Any], name: str) -> list[Any]:
    return [value for kind, value in rank["draws"] if kind == name]


def test_pick_keeps_each_ranks_top_local_candidates(
    ranks: list[dict[str, Any]], teacher: Path, tmp_path: Path
) -> None:
    """Each rank builds 2·B/N CutMix candidates from its own images only and keeps the B/N with the highest
    KL among them; λ, box and partner order are the same draws on both ranks."""
    trainer, batch = _reference("pick", tmp_path / "ref", teacher)
    _check_loader_slices(batch, ranks, "pick")
    runs = trainer.augmenter.runs
    for rank in (r["pick"] for r in ranks):
        images, pool, scores = rank["batch"]["images"], rank["pool"], rank["scores"]
        assert pool.shape[0] == scores.shape[0] == runs * LOCAL_BATCH
        for run, (perm, box) in enumerate(zip(_draws(rank, "partners"), _draws(rank, "cutmix_box"))):
            assert box.area > 0
            candidates = pool[run * LOCAL_BATCH : (run + 1) * LOCAL_BATCH]
            assert torch.equal(candidates, _replay_cutmix(images, perm, box))
        kept = rank["kept_images"]
        assert kept.shape[0] == LOCAL_BATCH
        matches = (kept.flatten(1)[:, None] == pool.flatten(1)[None]).all(dim=2)
        assert bool((matches.sum(dim=1) == 1).all()), "every kept image is exactly one candidate"
        chosen = set(matches.float().argmax(dim=1).tolist())
        assert len(chosen) == LOCAL_BATCH
        assert chosen == set(torch.topk(scores, LOCAL_BATCH).indices.tolist())
    first, second = ranks[0]["pick"], ranks[1]["pick"]
    assert _draws(first, "sample_lambda") == _draws(second, "sample_lambda")
    assert _draws(first, "cutmix_box") == _draws(second, "cutmix_box")
    for a, b in zip(_draws(first, "partners"), _draws(second, "partners"), strict=True):
        assert torch.equal(a, b)
    assert not set(first["batch"]["indices"].tolist()) & set(second["batch"]["indices"].tolist())
    assert torch.equal(first["rng"], second["rng"])


def test_pick_scores_come_from_the_student_over_all_ranks_pools(
    ranks: list[dict[str, Any]], teacher: Path, tmp_path: Path
) -> None:
    """The selection is per rank, but the scoring forward runs the student in train mode with synchronised
    batch norm: the scores equal one process scoring the union of the ranks' pools."""
    trainer, _ = _reference("pick", tmp_path / "ref", teacher)
    pools = torch.cat([r["pick"]["pool"] for r in ranks])
    with torch.no_grad():
        t_logits = trainer.teacher(pools)
        s_logits = trainer.student(pools)  # train mode: batch statistics of the union
    expected = pick_scores("kld", t_logits, s_logits, trainer.augmenter.temperature)
    got = torch.cat([r["pick"]["scores"] for r in ranks])
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-6)


def test_mixup_draws_are_shared_while_the_data_differ(ranks: list[dict[str, Any]]) -> None:
    """TLmixup: both ranks draw the same λ and partner order, and mix only their own images with them."""
    first, second = ranks[0]["mixup"], ranks[1]["mixup"]
    (lam,) = _draws(first, "sample_lambda")
    assert _draws(second, "sample_lambda") == [lam] and 0.0 < lam < 1.0
    (perm,) = _draws(first, "partners")
    assert torch.equal(_draws(second, "partners")[0], perm)
    assert not torch.equal(perm, torch.arange(LOCAL_BATCH))
    for rank in (first, second):
        images = rank["batch"]["images"]
        torch.testing.assert_close(rank["mixed"], lam * images + (1 - lam) * images[perm])
    assert not set(first["batch"]["indices"].tolist()) & set(second["batch"]["indices"].tolist())
    assert torch.equal(first["rng"], second["rng"])


def test_tst_op_choice_is_shared_while_the_data_differ(ranks: list[dict[str, Any]]) -> None:
    """TST Stage III: both ranks draw the same ops and gates for the step, apply them to their own B/N
    images, and train on [f_DE(x) ‖ x] of those (2·B/N images)."""
    first, second = ranks[0]["tst"], ranks[1]["tst"]
    assert first["ops"] == second["ops"] and len(set(first["ops"])) == 4
    torch.testing.assert_close(first["gates"], second["gates"], rtol=0, atol=0)
    for rank in (first, second):
        labels = rank["batch"]["labels"]
        assert rank["view_size"] == 2 * LOCAL_BATCH
        assert torch.equal(rank["view_labels"], torch.cat([labels, labels]))
    assert not set(first["batch"]["indices"].tolist()) & set(second["batch"]["indices"].tolist())
    assert torch.equal(first["rng"], second["rng"])


def test_crd_memories_stay_identical_across_ranks(ranks: list[dict[str, Any]]) -> None:
    """CRD gathers every rank's embeddings before writing: after a step the bank rows of both ranks' samples
    are updated on every rank, the queue holds all B new entries in rank order, and Z is one value."""
    first, second = ranks[0]["crd"], ranks[1]["crd"]
    for key, value in first["buffers_after"].items():
        assert torch.equal(value, second["buffers_after"][key]), key
    indices = torch.cat([r["crd"]["batch"]["indices"] for r in ranks])
    others = torch.tensor([i for i in range(64) if i not in set(indices.tolist())])
    for side in ("memory_s", "memory_t"):
        before, after = (
            first["buffers_before"][f"crd_bank.{side}"],
            first["buffers_after"][f"crd_bank.{side}"],
        )
        assert not torch.isclose(before[indices], after[indices]).all(dim=1).any()
        assert torch.equal(before[others], after[others])
    labels = torch.cat([r["crd"]["batch"]["labels"] for r in ranks])
    assert torch.equal(first["buffers_after"]["crd_queue.queue_labels"][:GLOBAL_BATCH], labels)
    assert int(first["buffers_after"]["crd_queue.queue_ptr"]) == GLOBAL_BATCH
    assert bool((first["buffers_after"]["crd_bank.z"] > 0).all())


if __name__ == "__main__":  # a rank of the torchrun launch in the `ranks` fixture
    _rank_main(Path(sys.argv[1]), Path(sys.argv[2]))
