"""Deep mutual learning as a loss term: the value and each network's gradient against hand-derived formulas,
option errors, and short real-data runs (two students; a peer copied from the teacher) in which the peer,
owned by the term, is trained by the run's optimizer and saved with the run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from datakd.api.context import TermInputs, View
from datakd.checkpoint import load_checkpoint
from datakd.engine.build import build_trainer
from datakd.engine.metrics import read_metrics
from datakd.errors import ConfigError
from datakd.losses.base import build_terms
from tests.helpers import tiny_config, train_tiny_teacher


class FixedLogits(nn.Module):
    """A 'network' whose output is a parameter: the peer's logits, so their gradient is readable."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.z = nn.Parameter(logits.clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.z


def softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_value_and_gradients_by_hand(t: float) -> None:
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(4, 5, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    z = torch.randn(4, 5, generator=g, dtype=torch.float64) * 2
    labels = torch.tensor([0, 3, 1, 4])
    (term,) = build_terms({"dml": {"peer": "resnet8", "temperature": t, "peer_ce": 0.5}})
    term.peer = FixedLogits(z)
    logged: dict[str, float] = {}
    view = View("main", torch.zeros(4, 1, 2, 2), labels)
    inputs = TermInputs(
        view, s, None, {}, {}, 0, 0, 0, 1, 1, None, lambda k, v, n=1: logged.__setitem__(k, v)
    )
    value = term(inputs)
    # float64 loops: T²·KL(q‖p) + 0.5·CE(peer) + T²·KL(p‖q), batch means
    expected = 0.0
    for i in range(4):
        p, q = softmax(s[i].tolist(), t), softmax(z[i].tolist(), t)
        kl_qp = sum(b * math.log(b / a) for a, b in zip(p, q))
        kl_pq = sum(a * math.log(a / b) for a, b in zip(p, q))
        ce = -math.log(softmax(z[i].tolist(), 1.0)[int(labels[i])])
        expected += (t * t * kl_qp + 0.5 * ce + t * t * kl_pq) / 4
    assert value.item() == pytest.approx(expected, rel=1e-9)
    value.backward()
    p, q = torch.softmax(s.detach() / t, 1), torch.softmax(z / t, 1)
    onehot = torch.nn.functional.one_hot(labels, 5).double()
    # student: only its mimicry term, d/ds T²·KL(q‖σ_T(s)) = T·(p − q)/B
    torch.testing.assert_close(s.grad, t * (p - q) / 4)
    # peer: 0.5·(σ(z) − y)/B + T·(q − p)/B
    torch.testing.assert_close(term.peer.z.grad, 0.5 * (torch.softmax(z, 1) - onehot) / 4 + t * (q - p) / 4)
    assert set(logged) == {"dml_student_kl", "dml_peer_ce", "dml_peer_top1"}


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="name the peer network"):
        build_terms({"dml": {}})
    with pytest.raises(ConfigError, match=r"unknown dml.init 'teachr'.*did you mean 'teacher'"):
        build_terms({"dml": {"init": "teachr"}})
    with pytest.raises(ConfigError, match="temperature > 0"):
        build_terms({"dml": {"peer": "resnet8", "temperature": 0}})


def test_two_students_learn_from_each_other_on_real_data(tmp_path: Path) -> None:
    out = tmp_path / "dml"
    cfg = tiny_config(
        out,
        epochs=2,
        loss={"ce": {"weight": 1.0}, "dml": {"peer": "resnet8", "peer_kwargs": {"in_channels": 1}}},
    )
    trainer = build_trainer(cfg, "train")
    (dml,) = [t for t in trainer.terms if t.term_name == "dml"]
    before = {k: v.clone() for k, v in dml.peer.state_dict().items()}
    # the peer's parameters are in the run's optimizer, next to the student's
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in dml.peer.parameters())
    summary = trainer.fit()
    rows = read_metrics(out / "metrics.csv")
    peer_top1 = [r["dml_peer_top1"] for r in rows]
    assert peer_top1[-1] > 30 and peer_top1[-1] > peer_top1[0]  # chance 10 %: the peer learns
    assert summary["top1_last"] > 30  # so does the student
    state = load_checkpoint(out / "last.pt")["terms"]
    weight = "1.peer.conv1.weight"  # the dml term is the run's second term
    assert not torch.equal(state[weight], before["conv1.weight"])
    assert all(r["dml_student_kl"] > 0 for r in rows)


def test_peer_starts_as_a_copy_of_the_teacher_and_the_teacher_stays_frozen(tmp_path: Path) -> None:
    teacher = train_tiny_teacher(tmp_path / "teacher", epochs=1, model="resnet8")
    cfg = tiny_config(
        tmp_path / "dml",
        epochs=1,
        teacher={"checkpoint": str(teacher)},
        loss={"ce": {"weight": 1.0}, "dml": {"init": "teacher"}},
    )
    trainer = build_trainer(cfg, "distill")
    (dml,) = [t for t in trainer.terms if t.term_name == "dml"]
    frozen = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    for key, value in dml.peer.state_dict().items():
        assert torch.equal(value, frozen[key]), key
    assert all(p.requires_grad for p in dml.peer.parameters())
    trainer.fit()
    assert any(
        not torch.equal(v, frozen[k]) for k, v in dml.peer.state_dict().items() if v.is_floating_point()
    )
    for key, value in trainer.teacher.state_dict().items():
        assert torch.equal(value, frozen[key]), key
