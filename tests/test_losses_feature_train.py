"""FitNet, AT and CRD train a student on real images (the embedded Fashion-MNIST subset) through the
normal trainer: the method's own objective improves (FitNet, AT), CRD's memory bank tracks embeddings."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from datakd.api.context import record
from datakd.engine.build import build_trainer
from tests.helpers import crash_and_resume, tiny_config

DATA = {"train_subset": 1024}


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-14 trained for two epochs on 1,024 real images (about 55 % top-1)."""
    out = tmp_path_factory.mktemp("feature-teacher") / "run"
    cfg = tiny_config(
        out, data=DATA, student={"name": "resnet14", "kwargs": {"in_channels": 1}}, optim={"lr": 0.1}
    )
    build_trainer(cfg, "train").fit()
    return out / "last.pt"


def distill(out: Path, teacher: Path, loss: dict) -> tuple[dict, list[dict[str, str]], object]:
    cfg = tiny_config(
        out, data=DATA, teacher={"checkpoint": str(teacher)}, loss={"ce": {"weight": 1.0}, **loss}
    )
    trainer = build_trainer(cfg, "distill")
    summary = trainer.fit()
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    return summary, rows, trainer


# AT uses the CIFAR weight; FitNet's 100 (tuned for 240 CIFAR epochs) swamps CE in a two-epoch run, so
# the hint gets 10 here.
@pytest.mark.parametrize(("name", "weight"), [("fitnet", 10.0), ("at", 1000.0)])
def test_hint_and_attention_students_learn(
    tmp_path: Path, teacher_ckpt: Path, name: str, weight: float
) -> None:
    _, rows, _ = distill(tmp_path / name, teacher_ckpt, {name: {"weight": weight}})
    # The term's own objective (not top-1, which a CE student also reaches) falls by a quarter.
    first, last = float(rows[0][f"loss_{name}"]), float(rows[-1][f"loss_{name}"])
    assert last < 0.75 * first, (first, last)


def embeddings(trainer, term, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trained CRD heads applied to the (eval-mode) student's and teacher's penultimate features."""
    trainer.student_module.eval()
    with torch.no_grad():
        _, fs = record(trainer.student_module, images, ["pre_logits"])
        _, ft = record(trainer.teacher, images, ["pre_logits"])
        return term.embed_s(fs["pre_logits"]), term.embed_t(ft["pre_logits"])


CRD = {"crd": {"weight": 0.8, "nce_k": 256}}


@pytest.fixture(scope="module")
def crd_run(tmp_path_factory: pytest.TempPathFactory, teacher_ckpt: Path):
    return distill(tmp_path_factory.mktemp("crd") / "run", teacher_ckpt, CRD)


def test_crd_student_learns_and_its_bank_tracks_embeddings(crd_run) -> None:
    _, rows, trainer = crd_run
    assert all(float(r["loss_crd"]) > 0 for r in rows)
    term = trainer.term("crd")
    assert term.memory_s.shape == term.memory_t.shape == (1024, 128)
    assert bool((term.z > 0).all())
    # Every training image was visited: its rows are unit vectors pointing where the heads now embed it
    # (the random initial rows are not unit-norm and are uncorrelated with any embedding).
    assert torch.allclose(term.memory_s.norm(dim=1), torch.ones(1024), atol=1e-5)
    vs, vt = embeddings(trainer, term, trainer.normalizer(trainer.bundle.train.images[:128]))
    assert (term.memory_s[:128] * vs).sum(1).mean() > 0.5
    assert (term.memory_t[:128] * vt).sum(1).mean() > 0.5


def test_crd_resumes_bit_identically(tmp_path: Path, teacher_ckpt: Path, crd_run, monkeypatch) -> None:
    """Memory, Z and the negatives' RNG are part of the checkpoint: a crash mid-epoch changes nothing."""
    reference = crd_run[2]
    out = tmp_path / "crashed"
    cfg = tiny_config(
        out,
        data=DATA,
        teacher={"checkpoint": str(reference.teacher_source["checkpoint"])},
        loss={"ce": {"weight": 1.0}, **CRD},
        engine={"checkpoint_every_iters": 5, "tensorboard": False},
    )
    # crash at step 23: mid epoch 2 (16 steps per epoch); the checkpoint at step 20 survives
    _, resumed = crash_and_resume(cfg, "distill", 23, monkeypatch)
    ours, theirs = resumed.term("crd"), reference.term("crd")
    for name in ("memory_s", "memory_t", "z"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    for (name, a), b in zip(
        resumed.student_module.state_dict().items(), reference.student_module.state_dict().values()
    ):
        assert torch.equal(a, b), name
