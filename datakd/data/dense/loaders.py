"""Training and evaluation loaders for detection and segmentation, with WorkerLoader's interface.

`len(loader)` is the number of steps per epoch and `loader.epoch(epoch, start_step)` yields `Batch`es on
the device. The epoch order comes from `generator_for(seed, epoch)` (TrainLoader.order), every random
choice of a sample from a generator seeded by (seed, epoch, index), and the DataLoader gets its own
seeded generator, so the process's global RNG is never read or advanced and a run resumed at
`start_step` sees exactly the batches it would have seen (skipped batches are not decoded). A global
batch is split across DDP ranks the way WorkerLoader splits it.

Detection batches: `images` a list of float 3×H×W in [0, 1], `annotations` one target dict per image
(crowd objects dropped in training, kept and flagged by `iscrowd` in evaluation, where coordinates are
the original image's). Segmentation batches: normalised N×3×H×W images and int64 N×H×W label maps.

A sample that fails to decode (missing or corrupt file, bad label map) reaches the main process as a
message and is raised there as a one-line DatakdError, not as a worker traceback.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from datakd.config import DataConfig
from datakd.data.base import DatasetBundle
from datakd.data.dense.cityscapes import IGNORE, SegmentationSplit, read_label_map
from datakd.data.dense.coco import DetectionSplit
from datakd.data.dense.transforms import DenseAugment, detection_sample, segmentation_sample
from datakd.data.file_loader import decode
from datakd.data.loaders import (
    Batch,
    Normalizer,
    TrainLoader,
    derive_seed,
    generator_for,
    worker_ignores_preemption,
)
from datakd.errors import ConfigError, DatakdError, choice_error

TASKS = ("detection", "segmentation")
DENSE_AUGMENTS = ("flip", "crop_flip", "none")
# Splits whose decoded pixels fit in this many bytes are cached in memory by default (cache: null).
CACHE_BYTES = 512 * 2**20
DenseSplit = DetectionSplit | SegmentationSplit
Raw = tuple[torch.Tensor, dict[str, torch.Tensor] | torch.Tensor]


@dataclass
class _Failure:
    """A sample that could not be loaded: its message travels to the main process and is raised there."""

    message: str


class DenseDataset(Dataset):
    """Samples keyed by (epoch, index): decoded (optionally from the cache), then transformed if training.

    `augment` None means evaluation: the sample as stored, annotations in original coordinates.
    """

    def __init__(
        self,
        split: DenseSplit,
        augment: DenseAugment | None,
        seed: int,
        masks: bool = False,
    ) -> None:
        self.split = split
        self.task = "detection" if isinstance(split, DetectionSplit) else "segmentation"
        self.augment = augment
        self.seed = seed
        self.masks = masks and self.task == "detection"
        self.cache: list[Raw] | None = None

    def __len__(self) -> int:
        return len(self.split)

    def fill_cache(self) -> None:
        """Decode every sample once (in this process; forked workers share the result)."""
        if self.cache is None:
            self.cache = [self.decode(i) for i in range(len(self.split))]

    def decode(self, index: int) -> Raw:
        """The stored sample: uint8 image and its target (detection) or uint8 label map (segmentation)."""
        if isinstance(self.split, SegmentationSplit):
            image = decode(self.split.images[index])
            return image, read_label_map(
                self.split.label_maps[index], image.shape[1], image.shape[2], self.split.num_classes
            )
        record = self.split.records[index]
        image = decode(record.path)
        if tuple(image.shape[1:]) != (record.height, record.width):
            raise DatakdError(
                f"image {str(record.path)!r} is {image.shape[2]}×{image.shape[1]}, its annotation file says "
                f"{record.width}×{record.height} (image id {record.image_id}); valid: the size in 'images'"
            )
        target = {
            "boxes": record.boxes.clone(),
            "labels": record.labels.clone(),
            "iscrowd": record.iscrowd.clone(),
            "area": record.area.clone(),
            "image_id": torch.tensor(record.image_id, dtype=torch.int64),
        }
        if self.masks:
            target["masks"] = self.split.masks(index)
        return image, target

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, Any, int] | _Failure:
        epoch, index = key
        try:
            image, target = self.cache[index] if self.cache is not None else self.decode(index)
            if self.augment is None:
                return image, target, index
            generator = generator_for(self.seed, epoch, index, 0xDE45E)
            if isinstance(target, torch.Tensor):
                image, label = segmentation_sample(image, target, self.augment, generator)
                return image, label, index
            keep = target["iscrowd"] == 0
            per_object = {k: v[keep] for k, v in target.items() if k != "image_id"}
            image, out = detection_sample(image, per_object, self.augment, generator)
            out["image_id"] = target["image_id"]
            return image, out, index
        except DatakdError as exc:
            return _Failure(str(exc))


@dataclass
class _PackedDetection:
    """A detection batch as few tensors as possible: every tensor a worker hands over costs a shared-memory
    file and a socket round trip (8 images × 6 target tensors made the IPC the loop's largest overhead)."""

    images: torch.Tensor | list[torch.Tensor]  # stacked when all sizes agree
    fields: dict[str, torch.Tensor]  # per-object fields of all images, concatenated
    ragged: dict[
        str, list[torch.Tensor]
    ]  # per-image fields that cannot be concatenated (masks of other sizes)
    counts: list[int]  # objects per image
    image_ids: torch.Tensor
    indices: list[int]

    def unpack(self, device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        images = self.images.to(device, non_blocking=True) if isinstance(self.images, torch.Tensor) else None
        floats = (
            list(images.float().div_(255).unbind(0))
            if images is not None
            else [im.to(device, non_blocking=True).float().div_(255) for im in self.images]
        )
        fields = {k: v.to(device, non_blocking=True) for k, v in self.fields.items()}
        parts = {k: v.split(self.counts) for k, v in fields.items()}
        image_ids = self.image_ids.to(device)
        ragged = {k: [v.to(device, non_blocking=True) for v in values] for k, values in self.ragged.items()}
        targets = [
            {
                **{k: parts[k][i] for k in fields},
                **{k: v[i] for k, v in ragged.items()},
                "image_id": image_ids[i],
            }
            for i in range(len(self.counts))
        ]
        return floats, targets


def _collate(items: list[Any]) -> list[Any] | _PackedDetection:
    """Segmentation samples stay a list (stacked and padded in the main process); detection samples are
    packed into a few tensors (see `_PackedDetection`)."""
    if any(isinstance(item, _Failure) for item in items) or not items or not isinstance(items[0][1], dict):
        return items
    images = [im for im, _, _ in items]
    same = all(im.shape == images[0].shape for im in images)
    targets = [t for _, t, _ in items]
    keys = [k for k in targets[0] if k != "image_id"]
    flat = [k for k in keys if len({t[k].shape[1:] for t in targets}) == 1]
    return _PackedDetection(
        torch.stack(images) if same else images,
        {k: torch.cat([t[k] for t in targets]) for k in flat},
        {k: [t[k] for t in targets] for k in keys if k not in flat},
        [int(t["boxes"].shape[0]) for t in targets],
        torch.stack([t["image_id"] for t in targets]),
        [i for _, _, i in items],
    )


def _raise_failures(items: list[Any]) -> None:
    for item in items:
        if isinstance(item, _Failure):
            raise DatakdError(item.message)


def _pad_stack(tensors: list[torch.Tensor], fill: int) -> torch.Tensor:
    """Stack tensors of possibly different H×W, padding bottom/right with `fill` to the largest."""
    height = max(t.shape[-2] for t in tensors)
    width = max(t.shape[-1] for t in tensors)
    return torch.stack(
        [F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=fill) for t in tensors]
    )


def to_batch(
    items: list[Any] | _PackedDetection, task: str, normalizer: Normalizer, device: torch.device
) -> Batch:
    """Samples -> a Batch on `device` (detection: [0, 1] floats; segmentation: normalised, 255 padding)."""
    if isinstance(items, _PackedDetection):
        images, annotations = items.unpack(device)
        return Batch(images, None, torch.tensor(items.indices, dtype=torch.int64, device=device), annotations)
    _raise_failures(items)
    indices = torch.tensor([i for _, _, i in items], dtype=torch.int64, device=device)
    if task == "segmentation":
        images = _pad_stack([im for im, _, _ in items], 0).to(device, non_blocking=True)
        labels = _pad_stack([lb for _, lb, _ in items], IGNORE).to(device, non_blocking=True).long()
        return Batch(normalizer(images), labels, indices)
    images = [im.to(device, non_blocking=True).float().div_(255) for im, _, _ in items]
    annotations = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for _, t, _ in items]
    return Batch(images, None, indices, annotations)


class _Batches:
    """The batch sampler a loader refills every epoch: with persistent workers the DataLoader (and its
    worker processes) outlive the epoch and only the list of sample keys changes."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


class _Feeder:
    """Batches of sample keys through a DataLoader. With workers, one DataLoader with persistent workers
    serves every epoch (starting two worker processes each epoch cost about 15 % of a test-bed epoch on
    this CPU); every random draw is keyed by (seed, epoch, index), so nothing depends on which worker or
    when."""

    def __init__(self, dataset: DenseDataset, workers: int, device: torch.device, seed: int) -> None:
        self.sampler = _Batches()
        self.loader: DataLoader | None = None
        self.dataset, self.workers, self.device, self.seed = dataset, workers, device, seed

    def __call__(self, batches: list[list[tuple[int, int]]]) -> Iterator[list[Any]]:
        self.sampler.batches = batches
        if self.loader is None or self.workers == 0:
            # An explicit generator: a DataLoader otherwise draws its base seed from the global RNG.
            self.loader = DataLoader(
                self.dataset,
                batch_sampler=self.sampler,
                num_workers=self.workers,
                collate_fn=_collate,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(derive_seed(self.seed, 0xDA7A)),
                persistent_workers=self.workers > 0,
                worker_init_fn=worker_ignores_preemption,
            )
        return iter(self.loader)


def want_cache(split: DenseSplit, cache: bool | None, image_size: tuple[int, int]) -> bool:
    """`cache` when given, else whether the decoded split (images + masks/maps) fits in CACHE_BYTES."""
    if cache is not None:
        return bool(cache)
    if isinstance(split, DetectionSplit):
        pixels = sum(r.height * r.width for r in split.records)
    else:
        pixels = len(split) * image_size[0] * image_size[1]
    return pixels * 4 <= CACHE_BYTES


class DenseTrainLoader(TrainLoader):
    """Training batches of a detection or segmentation split; see the module docstring."""

    def __init__(
        self,
        split: DenseSplit,
        batch_size: int,
        normalizer: Normalizer,
        device: torch.device,
        seed: int,
        augment: DenseAugment,
        workers: int = 0,
        masks: bool = False,
        cache: bool = False,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(batch_size, normalizer, device, seed, shuffle, drop_last, None, rank, world_size)
        self.dataset = DenseDataset(split, augment, seed, masks)
        self.task = self.dataset.task
        self.workers = workers
        self.cache = cache
        self._feed = _Feeder(self.dataset, workers, device, seed)

    def num_samples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        if self.cache:
            self.dataset.fill_cache()
        order = self.order(epoch).tolist()
        batches = []
        for step in range(start_step, len(self)):  # batches before start_step are never decoded
            chunk = order[step * self.batch_size : (step + 1) * self.batch_size]
            if self.world_size > 1:
                chunk = chunk[self.rank_slice()]
            batches.append([(epoch, i) for i in chunk])
        if not batches:
            return
        for items in self._feed(batches):
            yield to_batch(items, self.task, self.normalizer, self.device)


class DenseEvalLoader:
    """The test split in order, un-augmented, sharded rank::world_size like EvalLoader."""

    def __init__(
        self,
        split: DenseSplit,
        batch_size: int,
        normalizer: Normalizer,
        device: torch.device,
        workers: int = 0,
        masks: bool = False,
        cache: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.dataset = DenseDataset(split, None, 0, masks)
        self.task = self.dataset.task
        self.batch_size = batch_size
        self.normalizer = normalizer
        self.device = device
        self.workers = workers
        self.cache = cache
        self.rank = rank
        self.world_size = world_size
        self._feed = _Feeder(self.dataset, workers, device, 0)

    @property
    def split(self) -> DenseSplit:
        return self.dataset.split

    def __len__(self) -> int:
        return math.ceil(len(range(self.rank, len(self.dataset), self.world_size)) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if self.cache:
            self.dataset.fill_cache()
        keys = [(0, i) for i in range(self.rank, len(self.dataset), self.world_size)]
        batches = [keys[i : i + self.batch_size] for i in range(0, len(keys), self.batch_size)]
        if not batches:
            return
        for items in self._feed(batches):
            yield to_batch(items, self.task, self.normalizer, self.device)


def dense_normalizer(bundle: DatasetBundle, device: torch.device) -> Normalizer:
    """The bundle's mean/std normaliser (segmentation images; detectors normalise themselves)."""
    return Normalizer(bundle.mean, bundle.std, device)


def dense_augment(cfg: DataConfig, bundle: DatasetBundle) -> DenseAugment:
    """The training transform from data.augment and the dataset's loader options.

    Segmentation crops to data.options.crop_size, else data.image_size (batches need one size).
    """
    task = bundle.extra.get("task")
    augment = bundle.default_augment if cfg.augment == "default" else cfg.augment
    if augment not in DENSE_AUGMENTS:
        raise choice_error(f"data.augment for {task}", augment, (*DENSE_AUGMENTS, "default"), ConfigError)
    options = bundle.extra.get("loader", {})
    crop = options.get("crop_size")
    if task == "segmentation" and crop is None:
        crop = (cfg.image_size, cfg.image_size)
    return DenseAugment(
        flip=augment != "none",
        scale_range=options.get("scale_range"),
        crop_size=crop,
        random=augment != "none",
    )


def build_dense_loaders(
    cfg: DataConfig,
    bundle: DatasetBundle,
    device: torch.device,
    seed: int,
    rank: int = 0,
    world: int = 1,
) -> tuple[DenseTrainLoader, DenseEvalLoader]:
    """The training and evaluation loaders of a detection or segmentation bundle (extra["task"])."""
    task = bundle.extra.get("task")
    if task not in TASKS:
        raise ConfigError(f"dataset {bundle.name!r} has task {task!r}; the dense loaders serve {TASKS}")
    if cfg.loader == "device":
        raise ConfigError(
            f"data.loader=device serves classification arrays; {task} data uses the worker loader "
            "(data.loader=auto or workers)"
        )
    if cfg.workers < 0:
        raise ConfigError(f"data.workers must be >= 0, got {cfg.workers}")
    spec = dense_augment(cfg, bundle)
    options = bundle.extra.get("loader", {})
    masks = bool(bundle.extra.get("masks", False))
    normalizer = dense_normalizer(bundle, device)
    train_split, test_split = bundle.train, bundle.test
    if not isinstance(train_split, DetectionSplit | SegmentationSplit) or not isinstance(
        test_split, DetectionSplit | SegmentationSplit
    ):
        raise ConfigError(f"dataset {bundle.name!r} does not hold detection or segmentation splits")
    size = tuple(bundle.image_size)
    train = DenseTrainLoader(
        train_split,
        cfg.batch_size,
        normalizer,
        device,
        seed,
        spec,
        workers=cfg.workers,
        masks=masks,
        cache=want_cache(train_split, options.get("cache"), size),  # type: ignore[arg-type]
        rank=rank,
        world_size=world,
    )
    evaluator = DenseEvalLoader(
        test_split,
        cfg.eval_batch_size,
        normalizer,
        device,
        workers=cfg.workers,
        masks=masks,
        cache=want_cache(test_split, options.get("cache"), size),  # type: ignore[arg-type]
        rank=rank,
        world_size=world,
    )
    return train, evaluator
