"""PBA search: member configuration (reduced split shared by all members, fixed policy, rescaled length),
the install hint without Ray, a real Ray Tune PBT search on real data, and replaying its schedule."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from datakd.augmenters.pba_policy import POLICY_LENGTH, Schedule
from datakd.cli import main
from datakd.config import load_config
from datakd.data.build import load_dataset
from datakd.engine.build import build_trainer
from datakd.errors import ConfigError, DatakdError
from datakd.pba.search import concurrency_warning, prepare_spec, run_search
from datakd.pba.spec import member_seed
from tests.helpers import train_tiny_teacher

RECIPE = """
name: tiny-pba
seed: 0
device: cpu
epochs: 6
quiet: true
data: {dataset: quickstart, batch_size: 64, eval_batch_size: 500, augment: crop_flip, crop_padding: 2}
student: {name: resnet8, kwargs: {in_channels: 1}}
optim: {name: sgd, lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 0.0005}
schedule: {name: multistep, milestones: [4], gamma: 0.1}
loss: {ce: {weight: 1.0}}
engine: {tensorboard: false}
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def test_member_config_shares_the_split_and_rescales(recipe, tmp_path):
    cfg = load_config(recipe)
    spec = prepare_spec(cfg, "teacher", epochs=3, train_size=256, val_size=300, split_seed=5)
    assert spec.mode == "train" and spec.val_size == 300
    policy = [1] * POLICY_LENGTH
    a = spec.trial_config(policy, member_seed(5, "abc_00000"), tmp_path / "a")
    b = spec.trial_config(policy, member_seed(5, "abc_00001"), tmp_path / "b")
    assert a.seed != b.seed and a.total_epochs == 3 and a.schedule.scale == pytest.approx(0.5)
    assert a.augmenter == {"name": "pba", "policy": policy, "cutout": 0}
    assert a.data.val_size == 300 and a.data.train_subset == 256 and a.data.split_seed == 5
    split_a, name = load_dataset(a.data, a.seed)
    split_b, _ = load_dataset(b.data, b.seed)
    assert name == "val" and len(split_a.train) == 256 and len(split_a.test) == 300
    assert torch.equal(split_a.train.images, split_b.train.images)  # one split for the whole population
    trainer = build_trainer(a, "train")
    trainer.fit(until_epoch=1)
    assert "val_top1" in trainer.metrics.rows[-1] and trainer.augmenter.policy == tuple(policy)
    # the rest of the training set (6,000 embedded images) is the default validation split
    assert prepare_spec(cfg, "teacher", train_size=1000).val_size == 5000


def test_spec_errors(recipe):
    cfg = load_config(recipe)
    with pytest.raises(ConfigError, match="teacher-checkpoint"):
        prepare_spec(cfg, "student")
    with pytest.raises(ConfigError, match="need one"):
        prepare_spec(load_config(recipe, ["loss.kd.weight=1"]), "teacher")
    with pytest.raises(ConfigError, match="does not fit"):
        prepare_spec(cfg, "teacher", train_size=3000, val_size=3001)
    with pytest.raises(ConfigError, match="role"):
        prepare_spec(cfg, "assistant")


def test_member_seed_is_stable_and_distinct():
    assert member_seed(0, "x_00000") == member_seed(0, "x_00000")
    assert len({member_seed(0, f"x_{i:05d}") for i in range(16)}) == 16
    assert member_seed(1, "x_00000") != member_seed(0, "x_00000")


def test_asynchronous_search_on_too_few_slots_is_flagged():
    two_cpus = {"CPU": 2.0}
    text = concurrency_warning(two_cpus, 16, 1.0, 0.0, synch=False)
    assert text is not None and "only 2 of the 16 members" in text and "--synch" in text
    assert concurrency_warning(two_cpus, 16, 1.0, 0.0, synch=True) is None
    assert concurrency_warning({"CPU": 16.0}, 16, 1.0, 0.0, synch=False) is None
    # GPUs bound the slots too: 8 CPUs but one GPU at 0.25 per member is 4 at once.
    assert "only 4 of the 16" in concurrency_warning({"CPU": 8.0, "GPU": 1.0}, 16, 0.5, 0.25, synch=False)


def test_missing_ray_gives_install_hint(recipe, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    spec = prepare_spec(load_config(recipe), "teacher", epochs=1, train_size=64, val_size=64)
    with pytest.raises(DatakdError, match=r"pip install 'datakd\[pba\]'"):
        run_search(spec, recipe.parent / "out")
    args = [
        "pba",
        "search",
        "--role",
        "teacher",
        "--config",
        str(recipe),
        "--train-size",
        "64",
        "--val-size",
        "64",
    ]
    code = main(args)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'datakd[pba]'" in err


def test_convert_pba_log(tmp_path, capsys):
    line = json.dumps(["1", "0", 2, 2, {"hp_policy": [0] * 60}, {"hp_policy": [1] * 60}])
    (tmp_path / "pbt_policy_1.txt").write_text(line + "\n")
    out = tmp_path / "s.json"
    assert (
        main(["pba", "convert", str(tmp_path / "pbt_policy_1.txt"), "--epochs", "5", "--out", str(out)]) == 0
    )
    assert [p[0] for p in Schedule.load(out).policies] == [0, 0, 1, 1, 1]


def test_ray_pbt_search_then_replay(recipe, tmp_path):
    """Stage-β in miniature: a population of 2 distilled students on real images, real Ray Tune PBT (local,
    2 CPUs, synchronous so the exploit after epoch 1 is certain), then `distill` replaying the schedule."""
    pytest.importorskip("ray")
    teacher = train_tiny_teacher(tmp_path / "teacher", epochs=1, model="resnet8")
    overrides = ["loss.kd.weight=0.9", "loss.kd.temperature=4", "loss.ce.weight=0.1"]
    cfg = load_config(recipe, [*overrides, f"teacher.checkpoint={teacher}"])
    spec = prepare_spec(cfg, "student", epochs=2, train_size=256, val_size=256, split_seed=0)
    out = tmp_path / "search"
    summary = run_search(
        spec, out, population=2, perturbation_interval=1, seed=0, num_cpus=2, synch=True, quiet=True
    )
    schedule = Schedule.load(out / "schedule.json")
    assert schedule.epochs == 2 and schedule.meta["role"] == "student"
    assert schedule.policies[0] == (0,) * POLICY_LENGTH  # every member starts without augmentation
    members = {m["trial"]: m for m in summary["members"]}
    assert len(members) == 2
    assert list(schedule.policies[-1]) == members[summary["best"]["trial"]]["policy"]
    log = (out / "ray" / "search" / "pbt_global.txt").read_text().splitlines()
    assert len(log) >= 1  # synchronous PBT exploited at least once ...
    assert any(any(p) for m in members.values() for p in [m["policy"]])  # ... and explore changed a policy
    # replay: the final run reads the schedule (stretched from 2 to 4 epochs here)
    replay = load_config(
        recipe,
        [
            *overrides,
            f"teacher.checkpoint={teacher}",
            "epochs=4",
            "data.train_subset=512",
            "data.test_subset=200",
            f"out={tmp_path / 'replay'}",
            f"augmenter={{name: pba, schedule: {out / 'schedule.json'}, cutout: 8}}",
        ],
    )
    trainer = build_trainer(replay, "distill")
    policies = []
    for epoch in range(4):
        trainer.fit(until_epoch=epoch + 1)
        policies.append(trainer.augmenter.policy)
    assert policies == [schedule.policies[0]] * 2 + [schedule.policies[1]] * 2
    assert trainer.metrics.rows[-1]["test_top1"] > 15.0
