"""The evidence benchmark's role-wise PBA searches: a validation split of 10,000 training images that is
disjoint from the students' subset and from the test split, the search recipes, the schedule contrast."""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.evidence import arms as A  # noqa: E402
from benchmarks.evidence.protocol import arm_config, write_yaml  # noqa: E402
from benchmarks.evidence.search_schedule import (  # noqa: E402
    parse_args,
    schedule_contrast,
    search_command,
    search_recipe,
    search_teacher,
)
from datakd.augmenters.pba_policy import POLICY_LENGTH, Schedule  # noqa: E402
from datakd.config import DataConfig, config_from_dict, load_config  # noqa: E402
from datakd.data.base import ImageArrays  # noqa: E402
from datakd.data.build import load_dataset  # noqa: E402
from datakd.data.splits import subset_then_validation, take_subset  # noqa: E402
from datakd.errors import DatakdError  # noqa: E402
from datakd.pba.search import prepare_spec  # noqa: E402

TRAIN, TEST = 60_000, 10_000  # Fashion-MNIST's sizes: the real defaults (2,000 + 10,000) must fit them


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _tagged(n: int, split: int) -> np.ndarray:
    """n blank 28×28 images whose first three pixels spell (split, index): an image names itself."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    index = np.arange(n)
    images[:, 0, 0], images[:, 0, 1], images[:, 0, 2] = split, index // 256, index % 256
    return images


def _ids(split: ImageArrays) -> set[tuple[int, int]]:
    """(split, index) of every image of a loaded split."""
    pixels = split.images[:, 0, 0, :3].long()
    ids = {(int(s), int(h) * 256 + int(lo)) for s, h, lo in pixels.tolist()}
    assert len(ids) == len(split)  # the tags survived loading: one image, one id
    return ids


@pytest.fixture(scope="module")
def full_size_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Fashion-MNIST-layout folder of the real split sizes and class balance, each image tagged."""
    root = tmp_path_factory.mktemp("fmnist-tagged")
    rng = np.random.default_rng(0)
    _write_idx(root / "train-images-idx3-ubyte.gz", _tagged(TRAIN, 0))
    _write_idx(root / "train-labels-idx1-ubyte.gz", rng.permutation(np.arange(TRAIN) % 10))
    _write_idx(root / "t10k-images-idx3-ubyte.gz", _tagged(TEST, 1))
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", rng.permutation(np.arange(TEST) % 10))
    return root


def _member_data(role: str, root: Path, tmp_path: Path) -> tuple[ImageArrays, ImageArrays, str]:
    """What one population member of `role`'s search trains and is validated on: the recipe the script
    writes, through `datakd pba search`'s own preparation (its CLI flags) to the member's RunConfig."""
    args = parse_args(["--data-root", str(root)])
    values = search_recipe(role, root, "cpu", tmp_path, teacher_checkpoint=tmp_path / "teacher.pt")
    recipe = write_yaml(values, tmp_path / f"{role}.yaml")
    cmd = search_command(role, recipe, tmp_path / "search", args)
    flag = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
    assert flag["--role"] == role and flag["--seed"] == str(A.DATA["split_seed"])
    assert (flag["--population"], flag["--epochs"]) == (str(A.SEARCH_POPULATION), str(A.EPOCHS))
    spec = prepare_spec(
        load_config(str(recipe)),
        role,
        int(flag["--epochs"]),
        int(flag["--train-size"]),
        int(flag["--val-size"]),
        int(flag["--seed"]),
    )
    cfg = spec.trial_config([0] * POLICY_LENGTH, seed=1234, run_dir=tmp_path / "member")
    assert cfg.total_epochs == A.EPOCHS  # the student's full schedule: nothing stretched
    bundle, eval_split = load_dataset(cfg.data, seed=cfg.seed)
    return bundle.train, bundle.test, eval_split


def _student_data(arm: str, root: Path, tmp_path: Path, seed: int) -> tuple[ImageArrays, ImageArrays, str]:
    """What a student arm's run of `seed` trains and is tested on (run.py's recipe)."""
    teachers = {role: tmp_path / f"{role}.pt" for role in A.TEACHERS}
    values = arm_config(arm, A.scaled_arms(A.EPOCHS)[arm], A.EPOCHS, root, "cpu", teachers, tmp_path)
    cfg = config_from_dict({**values, "seed": seed})
    bundle, eval_split = load_dataset(cfg.data, seed=cfg.seed)
    return bundle.train, bundle.test, eval_split


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_search_validates_on_10000_images_the_students_never_see_and_never_on_test(
    role: str, full_size_root: Path, tmp_path: Path
) -> None:
    train, val, eval_split = _member_data(role, full_size_root, tmp_path)
    assert eval_split == "val"
    train_ids, val_ids = _ids(train), _ids(val)
    assert len(val_ids) == len(val) == A.SEARCH_VAL_SIZE >= 10_000
    assert all(split == 0 for split, _ in val_ids)  # training images, not one test image
    assert not train_ids & val_ids
    # The members train on exactly the students' subset, whatever seed a student run has.
    for arm, seed in (("iikd", 0), ("iikd_pba", 3), ("iikd_pba_teacher_schedule", 7)):
        student_train, student_test, student_eval = _student_data(arm, full_size_root, tmp_path, seed)
        assert student_eval == "test" and len(student_test) == TEST
        assert _ids(student_train) == train_ids and len(train_ids) == A.TRAIN_SIZE
        assert not _ids(student_train) & val_ids  # a student never trains on a validation image
        assert not _ids(student_test) & (val_ids | train_ids)
    # Class balance: the validation split keeps the classes' shares.
    assert torch.bincount(val.labels).tolist() == [A.SEARCH_VAL_SIZE // 10] * 10


def test_without_val_outside_subset_the_old_carve_overlaps_the_subset(full_size_root: Path) -> None:
    """Why the option exists: `val_size` alone carves validation first, with the same seed, and the
    subset the students use is then largely inside it."""
    options = A.DATA["options"]
    base = DataConfig("fashion-mnist", str(full_size_root), split_seed=A.DATA["split_seed"], options=options)
    subset = load_dataset(DataConfig(**{**vars(base), "train_subset": A.TRAIN_SIZE}), seed=0)[0].train
    carved = load_dataset(DataConfig(**{**vars(base), "val_size": A.SEARCH_VAL_SIZE}), seed=0)[0].test
    assert len(_ids(subset) & _ids(carved)) > A.TRAIN_SIZE // 2


def test_subset_then_validation_checks_its_sizes(full_size_root: Path) -> None:
    cfg = DataConfig("fashion-mnist", str(full_size_root), split_seed=0, options=A.DATA["options"])
    train = load_dataset(cfg, seed=0)[0].train
    subset, val = subset_then_validation(train, 100, 500, seed=5)
    assert _ids(subset) == _ids(take_subset(train, 100, seed=5)) and not _ids(subset) & _ids(val)
    with pytest.raises(DatakdError, match="needs both"):
        subset_then_validation(train, None, 500, seed=0)
    with pytest.raises(DatakdError, match="validation size"):
        subset_then_validation(train, 100, TRAIN - 100, seed=0)


def _flat(values: object, prefix: str = "") -> dict[str, object]:
    if isinstance(values, dict):
        out: dict[str, object] = {}
        for key, value in values.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): values}


def test_the_two_searches_differ_only_in_the_role(tmp_path: Path) -> None:
    student = _flat(search_recipe("student", tmp_path, "cpu", tmp_path, tmp_path / "t.pt"))
    teacher = _flat(search_recipe("teacher", tmp_path, "cpu", tmp_path))
    differ = {k for k in set(student) | set(teacher) if student.get(k) != teacher.get(k)}
    roles = ("name", "student.name", "loss", "teacher")
    assert {k for k in differ if not any(k == r or k.startswith(r + ".") for r in roles)} == set()
    assert teacher["student.name"] == A.TEACHERS["main"] and student["student.name"] == A.STUDENT
    assert student["data.val_outside_subset"] is True and student["data.val_size"] == A.SEARCH_VAL_SIZE
    # The student's search runs the II-KD arm's recipe itself (data aside).
    arm = _flat(arm_config("iikd", A.scaled_arms(A.EPOCHS)["iikd"], A.EPOCHS, tmp_path, "cpu", {}, tmp_path))
    extra = {k for k in set(student) | set(arm) if student.get(k) != arm.get(k)}
    assert extra == {"name", "teacher.checkpoint", "data.val_size", "data.val_outside_subset"}


def test_a_given_teacher_checkpoint_is_used_without_training(tmp_path: Path) -> None:
    checkpoint = tmp_path / "teacher" / "last.pt"
    found = search_teacher(str(checkpoint), tmp_path, tmp_path / "work", "cpu", 1, tmp_path / "t.log")
    assert found == checkpoint.resolve()
    assert not (tmp_path / "work").exists() and not (tmp_path / "t.log").exists()  # nothing trained


def _schedule(levels: dict[int, int], epochs: int = 6, start: int = 0) -> Schedule:
    """A schedule that sets the given policy positions from epoch `start` on."""
    policies = []
    for epoch in range(epochs):
        policy = [0] * POLICY_LENGTH
        if epoch >= start:
            for position, level in levels.items():
                policy[position] = level
        policies.append(tuple(policy))
    return Schedule(policies)


def test_schedule_contrast_names_what_each_role_emphasises() -> None:
    # Entry 7 is Contrast (probability at position 14), entry 8 Brightness (position 16).
    student, teacher = _schedule({14: 10, 15: 3}, start=3), _schedule({16: 5})
    contrast = schedule_contrast(student, teacher, epochs=60)
    assert not contrast["identical"] and contrast["epochs_with_the_same_policy"] == 0
    assert contrast["emphasised"] == {"student": ["Contrast"], "teacher": ["Brightness"]}
    assert contrast["profiles"]["student"]["Contrast"] == pytest.approx(0.5)  # on for half the run
    assert contrast["profiles"]["teacher"]["Brightness"] == pytest.approx(0.5)
    assert contrast["profile_l1_distance"] == pytest.approx(1.0)
    empty = _schedule({})
    same = schedule_contrast(empty, _schedule({}, epochs=12), epochs=60)  # stretched alike: the same
    assert same["identical"] and same["empty"] == {"student": True, "teacher": True}


def test_role_wise_arms_and_claims_are_registered_at_the_designs_seeds(tmp_path: Path) -> None:
    keys = {c.key: c for c in A.CLAIMS}
    assert "iikd_pba-iikd" in keys and "iikd_pba-iikd_pba_teacher_schedule" in keys
    assert "Table 3" in keys["iikd_pba-iikd_pba_teacher_schedule"].paper
    assert A.design_seeds("cuda") == list(range(A.SEEDS_PER_CLAIM["cuda"]))  # every claim, these seeds
    assert A.SCHEDULE_FILE != A.TEACHER_SCHEDULE_FILE
    own, theirs = (
        arm_config(arm, A.ARMS[arm], A.EPOCHS, tmp_path, "cpu", {}, tmp_path)
        for arm in ("iikd_pba", "iikd_pba_teacher_schedule")
    )
    assert own["augmenter"]["schedule"] == str(A.SCHEDULE_FILE)
    assert theirs["augmenter"]["schedule"] == str(A.TEACHER_SCHEDULE_FILE)
