"""The quick-start dataset: a 6k/2k stratified Fashion-MNIST subset shipped inside the package."""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from datakd.data.base import DatasetBundle, ImageArrays, register_dataset
from datakd.data.fashion_mnist import bundle_from_splits
from datakd.errors import DatakdError

EMBEDDED = "fashion_mnist_quickstart.npz"


def _load() -> tuple[ImageArrays, ImageArrays]:
    source = resources.files("datakd.data.embedded").joinpath(EMBEDDED)
    with source.open("rb") as handle, np.load(handle) as npz:
        splits = tuple(
            ImageArrays(
                torch.from_numpy(npz[f"{s}_images"].copy()).unsqueeze(1),
                torch.from_numpy(npz[f"{s}_labels"].astype(np.int64)),
            )
            for s in ("train", "test")
        )
    return splits  # type: ignore[return-value]


@register_dataset("quickstart")
def quickstart(
    root: str | None = None, download: bool = False, pad_to_32: bool = False, rgb: bool = False
) -> DatasetBundle:
    """Embedded Fashion-MNIST subset (6,000 train / 2,000 test, MIT licence); 28×28 grayscale by default."""
    if root is not None or download:
        raise DatakdError(
            "dataset 'quickstart' is embedded in the package; use dataset=fashion-mnist for a data root"
        )
    train, test = _load()
    return bundle_from_splits("quickstart", train, test, pad_to_32, rgb)
