"""Regenerate the quick-start subset shipped in datakd/data/embedded/ from the real Fashion-MNIST files.

Usage: python tools/make_quickstart_subset.py --data-root ../shared/data/fashion-mnist
The subset is stratified (equal images per class) and chosen by a fixed seed, so re-running gives the
same bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from datakd.data.fashion_mnist import read_split

OUT = Path(__file__).resolve().parents[1] / "datakd" / "data" / "embedded" / "fashion_mnist_quickstart.npz"


def stratified(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(int(labels.max()) + 1):
        idx = (labels == c).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    return torch.cat(picks).sort().values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=200)
    args = parser.parse_args()
    root = Path(args.data_root)
    train, test = read_split(root, "train"), read_split(root, "test")
    tr = stratified(train.labels, args.train_per_class, seed=2017)
    te = stratified(test.labels, args.test_per_class, seed=2018)
    np.savez_compressed(
        OUT,
        train_images=train.images[tr, 0].numpy(),
        train_labels=train.labels[tr].numpy().astype(np.uint8),
        train_source_index=tr.numpy().astype(np.int32),
        test_images=test.images[te, 0].numpy(),
        test_labels=test.labels[te].numpy().astype(np.uint8),
        test_source_index=te.numpy().astype(np.int32),
    )
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): {len(tr)} train, {len(te)} test")


if __name__ == "__main__":
    main()
