"""Fashion-MNIST IDX reading (on the real files when present, and always on IDX files we write)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from datakd.data.fashion_mnist import fashion_mnist, read_idx
from datakd.data.quickstart import quickstart
from datakd.errors import DatakdError


def test_idx_round_trip_and_geometry_options(idx_root: Path) -> None:
    embedded = quickstart()
    bundle = fashion_mnist(str(idx_root), pad_to_32=False, rgb=False)
    assert torch.equal(bundle.train.images, embedded.train.images)
    assert torch.equal(bundle.test.labels, embedded.test.labels)
    padded = fashion_mnist(str(idx_root))
    assert padded.train.images.shape[1:] == (3, 32, 32)
    # Zero border of 2 pixels, original image in the middle, replicated on all channels.
    assert padded.train.images[:, :, :2].sum() == 0 and padded.train.images[:, :, :, -2:].sum() == 0
    assert torch.equal(padded.train.images[:, 1, 2:30, 2:30], embedded.train.images[:, 0])
    assert padded.mean == (0.2860,) * 3 and padded.num_classes == 10


def test_real_fashion_mnist_counts(fmnist_root: Path) -> None:
    bundle = fashion_mnist(str(fmnist_root), pad_to_32=False, rgb=False)
    assert bundle.train.images.shape == (60000, 1, 28, 28) and bundle.test.images.shape == (10000, 1, 28, 28)
    assert bundle.train.labels.bincount().tolist() == [6000] * 10


def test_bad_idx_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatakdError, match="not a uint8 IDX file"):
        read_idx(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(DatakdError, match="expected 6 values"):
        read_idx(b"\x00\x00\x08\x02" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"\x00" * 5)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(b"\x00\x00\x08\x03" + (1).to_bytes(4, "big") * 3 + b"\x00")
    with pytest.raises(DatakdError, match="train-labels-idx1-ubyte"):
        fashion_mnist(str(tmp_path))
    with pytest.raises(DatakdError, match="needs a data root"):
        fashion_mnist(None)
