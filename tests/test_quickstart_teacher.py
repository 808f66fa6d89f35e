"""The quick-start teacher shipped in the package: recorded hash, loadable, and as good as documented."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from datakd.config import DataConfig
from datakd.data.build import eval_loader, load_dataset, make_normalizer
from datakd.engine.evaluate import evaluate
from datakd.errors import DatakdError
from datakd.models.loading import load_model
from datakd.quickstart import TEACHER_MODEL, TEACHER_SHA256, evaluate_shipped_teacher, shipped_teacher


def test_shipped_teacher_matches_its_hash_and_is_accurate(tmp_path: Path) -> None:
    path = shipped_teacher()
    assert path.stat().st_size < 2_000_000
    assert hashlib.sha256(path.read_bytes()).hexdigest() == TEACHER_SHA256
    summary = evaluate_shipped_teacher(tmp_path, "cpu", quiet=True)
    assert summary["shipped"] and summary["top1_last"] > 85.0  # docs/results.md: 88.x on these 2,000 images
    assert (tmp_path / "teacher" / "last.pt").read_bytes() == path.read_bytes()
    # The copy the KD stage reads rebuilds the same architecture with the same predictions.
    cfg = DataConfig(dataset="quickstart", eval_batch_size=500, test_subset=200)
    bundle, _ = load_dataset(cfg, seed=0)
    model, source = load_model(tmp_path / "teacher" / "last.pt", bundle.num_classes)
    assert source["name"] == TEACHER_MODEL
    device = torch.device("cpu")
    result = evaluate(model, eval_loader(cfg, bundle, make_normalizer(bundle, device), device))
    assert result["top1"] > 80.0


def test_tampered_teacher_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("datakd.quickstart.TEACHER_SHA256", "0" * 64)
    with pytest.raises(DatakdError, match="--train-teacher"):
        shipped_teacher()
