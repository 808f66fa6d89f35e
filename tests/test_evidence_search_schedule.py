"""The evidence benchmark's schedule search: the subset it searches on is exactly the students' subset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.evidence.search_schedule import search_teacher, write_subset_folder  # noqa: E402
from datakd.data.fashion_mnist import read_split  # noqa: E402
from datakd.data.splits import take_subset  # noqa: E402


def test_subset_folder_holds_the_students_images_and_labels(idx_root: Path, tmp_path: Path) -> None:
    folder = write_subset_folder(idx_root, tmp_path, 50, seed=0)
    written = read_split(folder, "train")
    expected = take_subset(read_split(idx_root, "train"), 50, seed=0)
    assert written.images.shape == expected.images.shape
    assert torch.equal(written.images, expected.images)
    assert torch.equal(written.labels, expected.labels)
    # a second seed picks other images: the folder is the subset, not the split's head
    other = take_subset(read_split(idx_root, "train"), 50, seed=1)
    assert not torch.equal(other.images, expected.images)
    # the test split is copied unchanged, so the folder loads as a dataset
    assert torch.equal(read_split(folder, "test").labels, read_split(idx_root, "test").labels)


def test_subset_folder_is_written_once(idx_root: Path, tmp_path: Path) -> None:
    first = write_subset_folder(idx_root, tmp_path, 40, seed=0)
    stamp = (first / "train-images-idx3-ubyte.gz").stat().st_mtime_ns
    assert write_subset_folder(idx_root, tmp_path, 40, seed=0) == first
    assert (first / "train-images-idx3-ubyte.gz").stat().st_mtime_ns == stamp


def test_a_given_teacher_checkpoint_is_used_without_training(tmp_path: Path) -> None:
    checkpoint = tmp_path / "teacher" / "last.pt"
    args = argparse.Namespace(teacher_checkpoint=str(checkpoint))
    assert search_teacher(args, tmp_path, tmp_path / "out", 0.0) == checkpoint.resolve()
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written
