"""Shared fixtures: the real Fashion-MNIST location and small deterministic tensors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FMNIST_CANDIDATES = [
    os.environ.get("DATAKD_FMNIST", ""),
    str(REPO.parent / "shared" / "data" / "fashion-mnist"),
]


@pytest.fixture(scope="session")
def fmnist_root() -> Path:
    """Folder with the real Fashion-MNIST IDX files (skips when absent)."""
    for candidate in FMNIST_CANDIDATES:
        if candidate and (Path(candidate) / "train-labels-idx1-ubyte.gz").is_file():
            return Path(candidate)
    pytest.skip("real Fashion-MNIST not found (set DATAKD_FMNIST)")


@pytest.fixture
def one_thread():
    """Tiny convolutions on a shared 2-core machine run much faster on one thread, and sums are then
    reproduced bit for bit (use with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def scenes_bed(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny scenes test bed (16 train / 8 val canvases of 64 px from the real Fashion-MNIST), shared."""
    from datakd.data.dense.scenes import generate_scenes

    out = tmp_path_factory.mktemp("scenes_bed") / "bed"
    generate_scenes(fmnist_root, out, train=16, val=8, size=64, seed=1)
    return out


@pytest.fixture(autouse=True)
def _single_thread_determinism():
    torch.manual_seed(0)
    yield


def write_idx(path: Path, array) -> None:
    """Write a uint8 array in the IDX format (gzip-compressed), the layout Fashion-MNIST ships in."""
    import gzip
    import struct

    import numpy as np

    data = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, data.ndim) + struct.pack(f">{data.ndim}I", *data.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + data.tobytes())


@pytest.fixture(scope="session")
def idx_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Fashion-MNIST-format folder holding the embedded real subset (always there, unlike the full set)."""
    from datakd.data.quickstart import _load

    train, test = _load()
    root = tmp_path_factory.mktemp("fmnist-idx")
    write_idx(root / "train-images-idx3-ubyte.gz", train.images[:, 0].numpy())
    write_idx(root / "train-labels-idx1-ubyte.gz", train.labels.numpy())
    write_idx(root / "t10k-images-idx3-ubyte.gz", test.images[:, 0].numpy())
    write_idx(root / "t10k-labels-idx1-ubyte.gz", test.labels.numpy())
    return root
