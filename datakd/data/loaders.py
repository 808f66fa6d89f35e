"""Loaders that feed the trainer normalised (images, labels, indices) batches.

`DeviceLoader` keeps a whole uint8 split on the target device and does shuffling, random crop with
padding, horizontal flip and normalisation as batched tensor ops there (no per-sample Python), the way
airbench makes small-image training fast. `WorkerLoader` is the standard DataLoader path for datasets that
do not fit (ImageNet layout), decoding and cropping per sample on workers.

Both draw every random decision from generators seeded by (seed, epoch, step) or (seed, epoch, index),
never from the global RNG, so a run resumed in the middle of an epoch sees exactly the batches it would have
seen, and a global batch is split across DDP ranks the same way whatever the number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from datakd.data.base import ImageArrays
from datakd.errors import DatakdError

# uint8 batch -> uint8 batch, applied before crop/flip (e.g. PBA's policy ops); gets a seeded generator.
RawTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

AUGMENTS = ("crop_flip", "flip", "none", "imagenet")


@dataclass
class Batch:
    """What every loader yields: images, labels, dataset indices and (dense tasks) annotations.

    Classification: normalised float images N×C×H×W and int64 labels N. Segmentation: normalised images
    N×C×H×W and int64 label maps N×H×W (255 = ignore). Detection: `images` is a list of float C×H×W
    tensors in [0, 1] (the detector normalises and resizes them itself), `labels` is None and
    `annotations` holds one target dict per image (`boxes` xyxy float, `labels` int64 1..K, optional
    `masks`, `image_id`), as torchvision's detectors take them.
    """

    images: torch.Tensor | list[torch.Tensor]
    labels: torch.Tensor | None
    indices: torch.Tensor
    annotations: list[dict[str, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])


# Signals a scheduler sends to a job's whole process group to preempt it (a run checkpoints on them).
GROUP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP")


def worker_ignores_preemption(_worker_id: int) -> None:
    """DataLoader `worker_init_fn`: a loader worker ignores the preemption signals that come from outside,
    so that a SIGTERM to the whole process group (Slurm, `kill -TERM -PGID`) reaches the training process
    alone, which finishes its step, checkpoints and shuts its workers down (exit 75), instead of dying in
    the middle of an epoch on "DataLoader worker is killed by signal: Terminated".

    The same signal from the worker's parent still ends it: at interpreter exit, `multiprocessing`
    terminates the daemonic workers a live loader still holds (SIGTERM) and then joins them, so a worker
    that ignored every SIGTERM hung the parent's exit forever (a CI run once timed out on it after its
    tests had passed). The signals are blocked and a thread reads each one with `sigwaitinfo`, which names
    the sender. Where `sigwaitinfo` is missing (macOS) the worker keeps the default dispositions."""
    import os
    import signal
    import threading

    if not hasattr(signal, "sigwaitinfo"):
        return
    signals = {getattr(signal, name) for name in GROUP_SIGNALS if hasattr(signal, name)}
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)

    def wait_for_the_parent() -> None:
        while True:
            info = signal.sigwaitinfo(signals)
            if info.si_pid == parent:
                os._exit(128 + info.si_signo)

    threading.Thread(target=wait_for_the_parent, name="datakd-worker-signals", daemon=True).start()


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style mixing), stable across processes and platforms."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value ^= int(part) + 0x9E3779B97F4A7C15 + ((value << 6) & 0xFFFFFFFFFFFFFFFF) + (value >> 2)
        value &= 0xFFFFFFFFFFFFFFFF
        value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


def generator_for(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


class Normalizer:
    """uint8 → float, (x/255 − mean)/std as one fused multiply-add on the batch's device."""

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> None:
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * std_t)).to(dtype)
        self.shift = (-mean_t / std_t).to(dtype)
        self.dtype = dtype
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.addcmul(self.shift, images.to(self.dtype), self.scale)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def inverse(self, images: torch.Tensor) -> torch.Tensor:
        """Float normalised images back to uint8 (for ops defined on pixels)."""
        pixels = (images.float() - self.shift.float()) / self.scale.float()
        return pixels.round_().clamp_(0, 255).to(torch.uint8)


CropFlipDraws = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def crop_flip_draws(
    n: int, padding: int, crop: bool, flip: bool, generator: torch.Generator
) -> CropFlipDraws:
    """Row offsets, column offsets and flips of `n` images, drawn on the CPU (device-independent)."""
    if crop and padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    else:
        dy = dx = torch.zeros(n, dtype=torch.long)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return dy, dx, flips


def random_crop_flip(
    images: torch.Tensor, padding: int, crop: bool, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Zero-pad by `padding`, take a random H×W window per image, flip half of them, all in one gather.

    Offsets and flips are drawn on the CPU from `generator` (so the result does not depend on the device),
    then applied with a single advanced-indexing gather on the batch's device.
    """
    draws = crop_flip_draws(images.shape[0], padding, crop, flip, generator)
    return apply_crop_flip(images, padding, crop, draws)


def apply_crop_flip(
    images: torch.Tensor, padding: int, crop: bool, draws: CropFlipDraws, padded: bool = False
) -> torch.Tensor:
    """The crop/flip of `draws` as one gather; `padded` (crop only) says `images` carry the zero border."""
    dy, dx, flips = draws
    n, _, h, w = images.shape
    if padded:
        h, w = h - 2 * padding, w - 2 * padding
    device = images.device
    if not crop and not flips.any():
        return images
    source = images if padded or not (crop and padding > 0) else F.pad(images, (padding,) * 4)
    rows = dy.to(device).view(n, 1, 1, 1) + torch.arange(h, device=device).view(1, 1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, 1, w).expand(n, 1, 1, w)
    cols = torch.where(flips.to(device).view(n, 1, 1, 1), (w - 1) - cols, cols) + dx.to(device).view(
        n, 1, 1, 1
    )
    batch_idx = torch.arange(n, device=device).view(n, 1, 1, 1)
    chan_idx = torch.arange(images.shape[1], device=device).view(1, -1, 1, 1)
    return source[batch_idx, chan_idx, rows, cols]


class TrainLoader:
    """What both training loaders share: settings, the seeded epoch order and the DDP shard of a batch.

    A global batch of `batch_size` is drawn in the same order whatever the number of processes; rank r
    keeps its slice `rank_slice()` of it, so N processes see exactly the batch one process would.
    Subclasses give `__len__` (steps per epoch), `num_samples()` and `epoch(epoch, start_step)`.
    """

    def __init__(
        self,
        batch_size: int,
        normalizer: Normalizer,
        device: torch.device,
        seed: int,
        shuffle: bool,
        drop_last: bool,
        raw_transform: RawTransform | None,
        rank: int,
        world_size: int,
    ) -> None:
        if batch_size % world_size:
            raise DatakdError(f"batch size {batch_size} is not divisible by the {world_size} processes")
        self.batch_size = batch_size
        self.normalizer = normalizer
        self.device = device
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last or world_size > 1
        self.raw_transform = raw_transform
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        raise NotImplementedError

    def num_samples(self) -> int:
        raise NotImplementedError

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield the batches of `epoch`, starting at `start_step` (for resuming mid-epoch)."""
        raise NotImplementedError

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's sample order, seeded by (seed, epoch) alone."""
        n = self.num_samples()
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=generator_for(self.seed, epoch, 0x5EED))

    def rank_slice(self) -> slice:
        """This process's part of a global batch."""
        per_rank = self.batch_size // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)


class DeviceLoader(TrainLoader):
    """Training batches from a uint8 split resident on `device`; see the module docstring."""

    def __init__(
        self,
        split: ImageArrays,
        batch_size: int,
        normalizer: Normalizer,
        device: torch.device,
        seed: int,
        augment: str = "crop_flip",
        padding: int = 4,
        shuffle: bool = True,
        drop_last: bool = False,
        raw_transform: RawTransform | None = None,
        rank: int = 0,
        world_size: int = 1,
        prenormalise: bool | None = None,
    ) -> None:
        if augment not in ("crop_flip", "flip", "none"):
            raise DatakdError(
                f"the device loader supports augment crop_flip, flip or none, not {augment!r}; "
                "use data.loader=workers for imagenet-style augmentation"
            )
        super().__init__(
            batch_size, normalizer, device, seed, shuffle, drop_last, raw_transform, rank, world_size
        )
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.augment = augment
        self.padding = padding
        # Without a raw transform (which works on uint8 pixels) the zero border and the normalisation are
        # per-pixel and commute with the crop/flip gather, so they are done once for the split (exact).
        # Normalised floats take 4x the memory: by default only on CUDA and for splits under 2 GiB.
        self.prepadded = raw_transform is None and augment == "crop_flip" and padding > 0
        if prenormalise is None:
            prenormalise = device.type == "cuda" and self.images.numel() * 4 <= 2**31
        self.prenormalised = bool(prenormalise) and raw_transform is None
        source = F.pad(self.images, (padding,) * 4) if self.prepadded else self.images
        if self.prenormalised:
            source = torch.addcmul(normalizer.shift, source.to(normalizer.dtype), normalizer.scale)
        self.source = source

    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        n = len(self.labels)
        if self.drop_last:
            return n // self.batch_size
        steps = math.ceil(n / self.batch_size)
        return steps - 1 if n % self.batch_size == 1 and steps > 1 else steps  # never a batch of one

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        order = self.order(epoch)
        shard = self.rank_slice()
        crop, flip = self.augment == "crop_flip", self.augment in ("crop_flip", "flip")
        for step in range(start_step, len(self)):
            global_idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            generator = generator_for(self.seed, epoch, step)
            if self.raw_transform is not None:
                # A raw transform draws for the whole global batch: augment it all, then take this shard.
                idx = global_idx.to(self.device)
                images = self.raw_transform(self.images[idx], generator)
                images = random_crop_flip(images, self.padding, crop, flip, generator)
                if self.world_size > 1:
                    images, idx = images[shard], idx[shard]
                yield Batch(self.normalizer(images), self.labels[idx], idx)
                continue
            # Draws for the whole global batch (so every image gets the draws it gets in one process), but
            # each rank gathers and augments only its own shard.
            draws = crop_flip_draws(len(global_idx), self.padding, crop, flip, generator)
            if self.world_size > 1:
                global_idx = global_idx[shard]
                draws = (draws[0][shard], draws[1][shard], draws[2][shard])
            idx = global_idx.to(self.device)
            images = apply_crop_flip(self.source[idx], self.padding, crop, draws, self.prepadded)
            yield Batch(self._normalise(images), self.labels[idx], idx)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        if not self.prenormalised:
            return self.normalizer(images)
        return (
            images.contiguous(memory_format=torch.channels_last) if self.normalizer.channels_last else images
        )
