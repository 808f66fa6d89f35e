"""A weight the recipe sets, or an event changes, on a term that ignores its weight triggers one warning.

II-KD/KD-SVD/MHGD under `clip: unweighted` (the released code) divide their gradient by the weight before
clipping (tests/test_iikd.py::test_combine_gradient_rule shows the student gradient is λ-free), so λ and its
decay events are inert there; the builder says so. The `_weighted` role-wise recipes use the paper's rule.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from datakd.config import load_config
from datakd.engine.build import build_trainer
from datakd.errors import InertSettingWarning
from datakd.events.base import build_events
from datakd.losses.base import build_terms, inert_weight_warnings
from tests.helpers import tiny_config, train_tiny_teacher

REPO = Path(__file__).resolve().parents[1]
ROLEWISE = sorted((REPO / "recipes").glob("cifar*/rolewise/*.yaml"))
DECAY = [{"name": "scale_loss_weights", "terms": ["iikd"], "factor": 0.6, "at": [60]}]


def messages(loss: dict, events: list | None = None) -> list[str]:
    return inert_weight_warnings(loss, build_terms(loss), build_events(events or []))


@pytest.mark.parametrize("term", ["iikd", "kd_svd", "mhgd"])
def test_clipped_terms_warn_only_under_unweighted_clip(term: str) -> None:
    decay = [{**DECAY[0], "terms": [term]}]
    (line,) = messages({"ce": {}, term: {"weight": 0.4}}, decay)
    assert line.startswith(f"loss.{term}.weight=0.4 and event ScaleLossWeights will not change training")
    assert "clip: weighted" in line
    (line,) = messages({"ce": {}, term: {}}, decay)  # default weight, but an event rescales it
    assert line.startswith("event ScaleLossWeights")
    assert messages({"ce": {}, term: {"weight": 0.4, "clip": "weighted"}}, decay) == []
    assert messages({"ce": {}, term: {"weight": 0.4, "clip": "none"}}, decay) == []
    assert messages({"ce": {}, term: {}}) == []  # nothing set: nothing to warn about
    assert messages({"ce": {}, term: {"weight": 0.0}}) == []  # 0 switches the term off: effective


def test_other_terms_and_effective_events_do_not_warn() -> None:
    assert messages({"ce": {}, "kd": {"weight": 0.9}}, [{**DECAY[0], "terms": ["kd"]}]) == []
    off_on = [{"name": "set_loss_weights", "at": 5, "weights": {"iikd": 0.0}}]
    assert messages({"ce": {}, "iikd": {}}, off_on) == []
    half = [{"name": "set_loss_weights", "at": 5, "weights": {"iikd": 0.5}}]
    assert messages({"ce": {}, "iikd": {}}, half)[0].startswith("event SetLossWeights")


def test_shipped_rolewise_recipes_warn_exactly_when_released_code_clip() -> None:
    warned = set()
    for path in ROLEWISE:
        cfg = load_config(path)
        if messages(cfg.loss, cfg.events):
            warned.add(path.stem)
    twins = {p.stem for p in ROLEWISE if p.stem.endswith("_weighted")}
    assert twins and warned == {t.removesuffix("_weighted") for t in twins}
    for stem in twins:
        cfg = load_config(next(p for p in ROLEWISE if p.stem == stem))
        clipped = [o for n, o in cfg.loss.items() if n in ("iikd", "kd_svd", "mhgd")]
        assert clipped and all(o["clip"] == "weighted" for o in clipped)
        assert cfg.events == [
            {"name": "scale_loss_weights", "terms": [n for n in cfg.loss if n != "ce"], "factor": 0.5,
             "every": 60}
        ]  # fmt: skip


def test_build_trainer_emits_the_warning(tmp_path: Path) -> None:
    teacher = train_tiny_teacher(tmp_path / "t", epochs=1, model="resnet8")
    common = {
        "student": {"name": "resnet8", "kwargs": {"in_channels": 1}},
        "teacher": {"checkpoint": str(teacher)},
        "epochs": 1,
    }
    cfg = tiny_config(tmp_path / "a", loss={"ce": {}, "iikd": {"weight": 0.4}}, events=DECAY, **common)
    with pytest.warns(InertSettingWarning, match=r"loss\.iikd\.weight=0\.4 and event ScaleLossWeights"):
        build_trainer(cfg, "distill")
    cfg = tiny_config(
        tmp_path / "b", loss={"ce": {}, "iikd": {"weight": 0.4, "clip": "weighted"}}, events=DECAY, **common
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", InertSettingWarning)
        build_trainer(cfg, "distill")
