"""The evaluation loader: sequential, un-augmented batches of an in-memory split or of image files.

It sits above both training loaders' modules because it serves both kinds of split: in-memory arrays are
sliced on the device, files go through the worker path's `eval_batches`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from datakd.data.base import ImageArrays, ImageFiles
from datakd.data.file_loader import eval_batches
from datakd.data.loaders import Batch, Normalizer


class EvalLoader:
    """Sequential, un-augmented batches of a split (in-memory or files), normalised on the device."""

    def __init__(
        self,
        split: ImageArrays | ImageFiles,
        batch_size: int,
        normalizer: Normalizer,
        device: torch.device,
        workers: int = 0,
        image_size: int = 224,
        augment: str = "none",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.normalizer = normalizer
        self.device = device
        self.workers = workers
        self.image_size = image_size
        self.augment = augment
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if isinstance(self.split, ImageArrays):
            n = len(self.split)
            shard = torch.arange(self.rank, n, self.world_size)
            for start in range(0, len(shard), self.batch_size):
                idx = shard[start : start + self.batch_size]
                images = self.split.images[idx].to(self.device, non_blocking=True)
                yield Batch(
                    self.normalizer(images), self.split.labels[idx].to(self.device), idx.to(self.device)
                )
            return
        yield from eval_batches(
            self.split,
            self.batch_size,
            self.normalizer,
            self.device,
            self.workers,
            self.image_size,
            self.augment,
            self.rank,
            self.world_size,
        )
