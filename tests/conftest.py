"""Shared fixtures: the real Fashion-MNIST location and small deterministic tensors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FMNIST_CANDIDATES = [
    os.environ.get("DATAKD_FMNIST", ""), str(REPO.parent / "shared" / "data" / "fashion-mnist")
]


@pytest.fixture(scope="session")
def fmnist_root() -> Path:
    """Folder with the real Fashion-MNIST IDX files (skips when absent)."""
    for candidate in FMNIST_CANDIDATES:
        if candidate and (Path(candidate) / "train-labels-idx1-ubyte.gz").is_file():
            return Path(candidate)
    pytest.skip("real Fashion-MNIST not found (set DATAKD_FMNIST)")


@pytest.fixture(autouse=True)
def _single_thread_determinism():
    torch.manual_seed(0)
    yield
