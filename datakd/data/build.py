"""From the `data` config section to a dataset bundle and the loaders the trainer uses."""

from __future__ import annotations

from dataclasses import replace

import torch

from datakd.config import DataConfig
from datakd.data.base import DATASETS, DatasetBundle, ImageArrays
from datakd.data.eval_loader import EvalLoader
from datakd.data.file_loader import WorkerLoader
from datakd.data.loaders import AUGMENTS, DeviceLoader, Normalizer, RawTransform
from datakd.errors import ConfigError, choice_error

LOADERS = ("auto", "device", "workers")


def load_dataset(cfg: DataConfig, seed: int) -> tuple[DatasetBundle, str]:
    """The bundle with the configured subsets/validation split applied, and the name of the eval split."""
    from datakd.data.splits import make_validation_split, subset_then_validation, take_subset

    bundle = DATASETS.build(cfg.dataset, root=cfg.root, download=cfg.download, **cfg.options)
    train, test = bundle.train, bundle.test
    if cfg.split_seed is not None:
        seed = cfg.split_seed
    eval_split = "test"
    if cfg.val_outside_subset:
        train, test = subset_then_validation(train, cfg.train_subset, cfg.val_size, seed)
        eval_split = "val"
    else:
        if cfg.val_size:
            # The validation images come out of the training split; the test split stays untouched.
            train, test = make_validation_split(train, cfg.val_size, seed=seed)
            eval_split = "val"
        if cfg.train_subset:
            train = take_subset(train, cfg.train_subset, seed=seed)
    if cfg.test_subset:
        test = take_subset(test, cfg.test_subset, seed=seed + 1)
    return replace(bundle, train=train, test=test), eval_split


def make_normalizer(bundle: DatasetBundle, device: torch.device, channels_last: bool = False) -> Normalizer:
    return Normalizer(bundle.mean, bundle.std, device, channels_last=channels_last)


def train_loader(
    cfg: DataConfig,
    bundle: DatasetBundle,
    normalizer: Normalizer,
    device: torch.device,
    seed: int,
    raw_transform: RawTransform | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> DeviceLoader | WorkerLoader:
    if cfg.loader not in LOADERS:
        raise choice_error("data.loader", cfg.loader, LOADERS, ConfigError)
    augment = bundle.default_augment if cfg.augment == "default" else cfg.augment
    if augment not in AUGMENTS:
        raise choice_error("data.augment", augment, (*AUGMENTS, "default"), ConfigError)
    use_device = cfg.loader == "device" or (
        cfg.loader == "auto" and isinstance(bundle.train, ImageArrays) and augment != "imagenet"
    )
    if use_device:
        if not isinstance(bundle.train, ImageArrays):
            raise ConfigError(
                f"data.loader=device needs an in-memory dataset; {bundle.name!r} is read from files "
                "(use data.loader=workers, or the dataset's in_memory option)"
            )
        return DeviceLoader(
            bundle.train,
            cfg.batch_size,
            normalizer,
            device,
            seed,
            augment,
            cfg.crop_padding,
            raw_transform=raw_transform,
            rank=rank,
            world_size=world_size,
        )
    return WorkerLoader(
        bundle.train,
        cfg.batch_size,
        normalizer,
        device,
        seed,
        augment,
        cfg.crop_padding,
        cfg.image_size,
        cfg.workers,
        raw_transform=raw_transform,
        rank=rank,
        world_size=world_size,
    )


def eval_loader(
    cfg: DataConfig,
    bundle: DatasetBundle,
    normalizer: Normalizer,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> EvalLoader:
    augment = bundle.default_augment if cfg.augment == "default" else cfg.augment
    return EvalLoader(
        bundle.test,
        cfg.eval_batch_size,
        normalizer,
        device,
        cfg.workers,
        cfg.image_size,
        augment,
        rank,
        world_size,
    )


def analysis_split(
    dataset: str,
    root: str | None,
    options: dict,
    batch_size: int,
    split: str,
    size: int | None,
    seed: int,
) -> tuple[DataConfig, DatasetBundle]:
    """The un-augmented images an analysis command reads (`datakd cka`, `datakd effdstl fgsm`): `size` images
    of the train or test split, served by `eval_loader` as the bundle's test split."""
    cfg = DataConfig(
        dataset=dataset,
        root=root,
        eval_batch_size=batch_size,
        options=dict(options),
        workers=2,
        train_subset=size if split == "train" else None,
        test_subset=size if split == "test" else None,
    )
    bundle, _ = load_dataset(cfg, seed=seed)
    if split == "train":
        bundle = replace(bundle, test=bundle.train)
    return cfg, bundle
