"""The two generic core hooks population-based search relies on: `fit(until_epoch)` and `data.split_seed`."""

from __future__ import annotations

import torch

from datakd.data.build import load_dataset
from datakd.engine.build import build_trainer
from tests.helpers import tiny_config


def test_fit_until_epoch_continues_exactly(tmp_path):
    whole = build_trainer(tiny_config(tmp_path / "whole"), "train")
    whole.fit()
    stepped = build_trainer(tiny_config(tmp_path / "stepped"), "train")
    first = stepped.fit(until_epoch=1)
    assert first["epochs"] == 1 and stepped.epoch == 1
    stepped.fit(until_epoch=1)  # already there: nothing to do
    assert stepped.epoch == 1
    stepped.fit()
    assert stepped.epoch == 2
    for a, b in zip(whole.student_module.state_dict().values(), stepped.student_module.state_dict().values()):
        assert torch.equal(a, b)
    assert whole.metrics.rows[-1]["test_top1"] == stepped.metrics.rows[-1]["test_top1"]


def test_split_seed_decouples_split_from_run_seed(tmp_path):
    data = {"val_size": 100, "train_subset": 200, "test_subset": None}
    a = tiny_config(tmp_path, seed=1, data=data).data
    b = tiny_config(tmp_path, seed=2, data=data).data
    bundle_a, split = load_dataset(a, 1)
    bundle_b, _ = load_dataset(b, 2)
    assert split == "val"
    assert not torch.equal(bundle_a.test.labels, bundle_b.test.labels) or not torch.equal(
        bundle_a.train.images, bundle_b.train.images
    )
    shared = {**data, "split_seed": 7}
    c, _ = load_dataset(tiny_config(tmp_path, seed=1, data=shared).data, 1)
    d, _ = load_dataset(tiny_config(tmp_path, seed=2, data=shared).data, 2)
    assert torch.equal(c.train.images, d.train.images) and torch.equal(c.test.labels, d.test.labels)
    assert torch.equal(c.test.images, d.test.images)
