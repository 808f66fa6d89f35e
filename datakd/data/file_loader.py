"""The DataLoader path: per-sample decoding and cropping on worker processes, for data too large to keep
on the device (ImageNet layout, Tiny-ImageNet files). Images travel as uint8 and are normalised on the
device in the main process (cheaper transfers, GPU-side normalisation).

Every random choice of a sample comes from a generator seeded by (seed, epoch, index), so batches do not
depend on the number of workers and a resumed run sees the same crops.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from datakd.data.base import ImageArrays, ImageFiles
from datakd.data.loaders import (
    Batch,
    Normalizer,
    RawTransform,
    TrainLoader,
    generator_for,
    random_crop_flip,
    worker_ignores_preemption,
)
from datakd.faults import DataReadError, reason


def decode(path: Path) -> torch.Tensor:
    """An image file as uint8 3×H×W (grayscale and alpha converted to RGB).

    The bytes are read here (not by torchvision's `read_file`) so that a file deleted or unreadable
    mid-run is an OSError with the OS's reason; a PNG without its end chunk is reported as truncated
    before libpng prints its own complaint. Both are a one-line `DataReadError`. torchvision 0.29 (pinned)
    deprecates its decoders in favour of torchcodec; they still work, and one warning per image would
    drown the log, so it is silenced here.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataReadError(f"image {str(path)!r} cannot be read: {reason(exc)}") from None
    if data.startswith(PNG_SIGNATURE) and PNG_END not in data[-4096:]:  # junk after IEND is allowed
        raise DataReadError(f"image {str(path)!r} is truncated ({len(data)} bytes, no PNG end chunk)")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
            buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return decode_image(buffer, mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        text = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown decoder error"
        raise DataReadError(
            f"cannot decode image {str(path)!r} ({len(data)} bytes): {text.rsplit(', ', 1)[-1]}; it is "
            "truncated or not an image"
        ) from None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC, which end a complete PNG


class _Unreadable:
    """What a worker returns for a sample whose file failed: the message travels to the main process,
    which raises it as one line (DataLoader would re-raise a worker's exception with its traceback
    folded into the message)."""

    def __init__(self, message: str) -> None:
        self.message = message


def random_resized_crop_params(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an Inception-style crop: area fraction in `scale`, log-uniform aspect `ratio`;
    ten tries, then the largest centred crop of admissible aspect (torchvision's documented behaviour)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(3, generator=generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


class SampleDataset(Dataset):
    """Keys are (epoch, index); returns (uint8 C×H×W of a fixed size, label, index)."""

    def __init__(
        self,
        split: ImageArrays | ImageFiles,
        augment: str,
        image_size: int,
        padding: int,
        seed: int,
        train: bool,
    ) -> None:
        self.split = split
        self.augment = augment
        self.image_size = image_size
        self.padding = padding
        self.seed = seed
        self.train = train

    def __len__(self) -> int:
        return len(self.split)

    def _load(self, index: int) -> torch.Tensor:
        if isinstance(self.split, ImageArrays):
            return self.split.images[index]
        return decode(self.split.paths[index])

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int] | _Unreadable:
        epoch, index = key
        try:
            image = self._load(index)
        except DataReadError as exc:
            return _Unreadable(str(exc))
        if not self.train:
            image = self._eval_view(image)
        elif self.augment == "imagenet":
            generator = generator_for(self.seed, epoch, index, 0x1A6E)
            top, left, h, w = random_resized_crop_params(image.shape[1], image.shape[2], generator)
            image = TF.resized_crop(image, top, left, h, w, [self.image_size] * 2, antialias=True)
            if bool(torch.rand(1, generator=generator) < 0.5):
                image = image.flip(-1)
        elif self.augment in ("crop_flip", "flip"):
            generator = generator_for(self.seed, epoch, index, 0x1A6E)
            image = random_crop_flip(
                image.unsqueeze(0), self.padding, self.augment == "crop_flip", True, generator
            )[0]
        return image, int(self.split.labels[index]), index

    def _eval_view(self, image: torch.Tensor) -> torch.Tensor:
        if self.augment != "imagenet":
            return image
        resize = round(self.image_size / 0.875)  # 224 → 256, the standard ImageNet evaluation
        image = TF.resize(image, [resize], antialias=True)
        return TF.center_crop(image, [self.image_size] * 2)


Collated = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _collate(items: list[tuple[torch.Tensor, int, int] | _Unreadable]) -> Collated | _Unreadable:
    failed = next((item for item in items if isinstance(item, _Unreadable)), None)
    if failed is not None:
        return failed
    images, labels, indices = zip(*items)
    return torch.stack(images), torch.tensor(labels), torch.tensor(indices)


class WorkerLoader(TrainLoader):
    """Training batches decoded and augmented per sample on DataLoader workers."""

    def __init__(
        self,
        split: ImageArrays | ImageFiles,
        batch_size: int,
        normalizer: Normalizer,
        device: torch.device,
        seed: int,
        augment: str = "imagenet",
        padding: int = 4,
        image_size: int = 224,
        workers: int = 4,
        shuffle: bool = True,
        drop_last: bool = False,
        raw_transform: RawTransform | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(
            batch_size, normalizer, device, seed, shuffle, drop_last, raw_transform, rank, world_size
        )
        self.dataset = SampleDataset(split, augment, image_size, padding, seed, train=True)
        self.workers = workers

    def num_samples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        order = self.order(epoch).tolist()
        batches = []
        for step in range(start_step, len(self)):
            chunk = order[step * self.batch_size : (step + 1) * self.batch_size]
            if self.world_size > 1:
                chunk = chunk[self.rank_slice()]
            batches.append([(epoch, i) for i in chunk])
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            worker_init_fn=worker_ignores_preemption,
        )
        for step, collated in enumerate(loader, start=start_step):
            images, labels, indices = _checked(collated)
            images = images.to(self.device, non_blocking=True)
            if self.raw_transform is not None:
                images = self.raw_transform(images, generator_for(self.seed, epoch, step))
            yield Batch(
                self.normalizer(images),
                labels.to(self.device, non_blocking=True),
                indices.to(self.device, non_blocking=True),
            )


def eval_batches(
    split: ImageFiles,
    batch_size: int,
    normalizer: Normalizer,
    device: torch.device,
    workers: int,
    image_size: int,
    augment: str,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """Un-augmented batches; ImageNet-style data is resized and centre-cropped to `image_size`."""
    dataset = SampleDataset(split, augment, image_size, 0, 0, train=False)
    keys = [(0, i) for i in range(rank, len(split), world_size)]
    batches = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        worker_init_fn=worker_ignores_preemption,
    )
    for collated in loader:
        images, labels, indices = _checked(collated)
        yield Batch(normalizer(images.to(device, non_blocking=True)), labels.to(device), indices.to(device))


def _checked(collated: Collated | _Unreadable) -> Collated:
    """A batch, or the one-line error of the file that failed in it (raised in the main process, after
    every earlier batch was trained on: DataLoader hands batches back in order)."""
    if isinstance(collated, _Unreadable):
        raise DataReadError(collated.message)
    return collated
