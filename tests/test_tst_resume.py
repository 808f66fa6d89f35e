"""TST resumes bit-identically: after a crash in Stage III following a Stage II call, and after a crash in
the middle of a Stage II call (its optimizer, ALRS and loss sums are part of the checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import datakd.events.tst_search as tst_search
from datakd.checkpoint import load_checkpoint
from datakd.engine.build import build_trainer
from tests.helpers import crash_and_resume
from tests.tst_helpers import tst_config, tst_encoders, tst_teacher

# 512 images = 8 steps per epoch; Stage II before epoch 2: 2 passes of 3 batches; a checkpoint every 2
# steps, in Stage II as in Stage III.
EVENTS = [{"name": "tst_search", "at": [1], "epochs": 2, "max_steps": 3}]
ENGINE = {"checkpoint_every_iters": 2, "tensorboard": False}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    teacher, encoders = tst_teacher(tmp_path_factory), tst_encoders(tmp_path_factory)
    reference = tmp_path_factory.mktemp("tst-reference") / "run"
    build_trainer(tst_config(reference, teacher, encoders, events=EVENTS, engine=ENGINE), "distill").fit()
    return teacher, encoders, reference


def assert_same_run(reference: Path, other: Path) -> None:
    a, b = load_checkpoint(reference / "last.pt"), load_checkpoint(other / "last.pt")
    for part in ("model", "augmenter"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    assert a["events"][0]["history"] == b["events"][0]["history"]
    assert (reference / "tst_policy.csv").read_text() == (other / "tst_policy.csv").read_text()
    assert [r["test_top1"] for r in a["history"]] == [r["test_top1"] for r in b["history"]]
    assert len((other / "metrics.csv").read_text().splitlines()) == 4  # header + 3 epochs, no duplicates


def test_crash_in_stage_three_after_stage_two(setup, tmp_path: Path, monkeypatch) -> None:
    teacher, encoders, reference = setup
    run = tmp_path / "run"
    cfg = tst_config(run, teacher, encoders, events=EVENTS, engine=ENGINE)
    # crash at student step 12: epoch 2, after its Stage II call and 3 student steps
    state, _ = crash_and_resume(cfg, "distill", 12, monkeypatch)
    assert (state["epoch"], state["step"]) == (1, 2)
    assert state["events"][0]["calls"] == 1 and state["events"][0]["search"] is None
    assert_same_run(reference, run)


def test_crash_inside_stage_two(setup, tmp_path: Path, monkeypatch) -> None:
    teacher, encoders, reference = setup
    run = tmp_path / "run"
    cfg = tst_config(run, teacher, encoders, events=EVENTS, engine=ENGINE)
    # crash at Stage II step 5: pass 2, second batch; the last checkpoint is pass 1 after 2 batches
    state, _ = crash_and_resume(cfg, "distill", 5, monkeypatch, owner=tst_search, attr="search_step")
    search = state["events"][0]["search"]
    assert (state["epoch"], state["step"]) == (1, 0)
    assert (search["epoch"], search["pass"], search["step"]) == (1, 0, 2)
    assert search["optimizer"]["state"]  # SGD momentum buffers of θ are saved
    assert_same_run(reference, run)
