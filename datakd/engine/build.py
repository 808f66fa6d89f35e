"""Assemble a Trainer from a RunConfig: data, models, methods, and (with resume) the saved state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from datakd.augmenters.base import build_augmenter
from datakd.checkpoint import load_checkpoint, seed_everything
from datakd.config import RunConfig
from datakd.data.base import ImageArrays
from datakd.data.build import eval_loader, load_dataset, make_normalizer, train_loader
from datakd.data.file_loader import decode
from datakd.engine import distributed as D
from datakd.engine.context import SetupContext
from datakd.engine.fastpath import resolve_fast_path
from datakd.engine.trainer import Trainer
from datakd.errors import ConfigError, DatakdError
from datakd.events.base import build_events
from datakd.losses.base import build_terms
from datakd.models import create
from datakd.models.checkpoint_io import load_weights
from datakd.targets.base import build_target_transform

MODES = ("train", "distill")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DatakdError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
        device = torch.device(name)
        if device.index is None and D.is_distributed():
            import os

            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return device
    if name != "cpu":
        raise ConfigError(f"unknown device {name!r}; valid choices: auto, cpu, cuda, cuda:N")
    return torch.device("cpu")


def default_run_dir(cfg: RunConfig) -> Path:
    return Path("runs") / cfg.name / f"seed{cfg.seed}"


def load_model(
    checkpoint: str | Path, num_classes: int, name: str | None = None, kwargs: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """A model rebuilt from one of our checkpoints (its name is stored there) or any state_dict + `name`."""
    state = load_checkpoint(checkpoint)
    model_name = name or state.get("model_name")
    if not model_name:
        raise DatakdError(
            f"checkpoint {str(checkpoint)!r} does not record its architecture; give the model name "
            "(e.g. teacher.name=resnet56)"
        )
    model_kwargs = dict(state.get("model_kwargs") or {})
    model_kwargs.update(kwargs or {})
    stored_classes = state.get("num_classes", num_classes)
    if stored_classes != num_classes:
        raise DatakdError(
            f"checkpoint {str(checkpoint)!r} was trained for {stored_classes} classes but this "
            f"dataset has {num_classes}"
        )
    model = create(model_name, num_classes, **model_kwargs)
    load_weights(model, state)
    return model, {"checkpoint": str(checkpoint), "name": model_name, "kwargs": model_kwargs}


def freeze_teacher(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Teachers are always in eval mode and never receive gradients, unless a method says otherwise."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    model.requires_grad_(False)
    return model


def _sample_images(bundle: Any, normalizer: Any, device: torch.device, image_size: int) -> torch.Tensor:
    train = bundle.train
    if isinstance(train, ImageArrays):
        images = train.images[:4]
    else:
        from torchvision.transforms.v2 import functional as TF

        images = torch.stack(
            [
                TF.center_crop(TF.resize(decode(p), [image_size], antialias=True), [image_size] * 2)
                for p in train.paths[:4]
            ]
        )
    return normalizer(images.to(device))


def build_trainer(cfg: RunConfig, mode: str, run_dir: Path | None = None, resume: bool = False) -> Trainer:
    """Everything a run needs, validated before the first step; `resume` loads ``run_dir/last.pt``."""
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; valid choices: {', '.join(MODES)}")
    device = resolve_device(cfg.device)
    run_dir = Path(run_dir or cfg.out or default_run_dir(cfg))
    last = run_dir / "last.pt"
    if not resume and last.exists():
        raise DatakdError(
            f"run directory {str(run_dir)!r} already holds a run; pass --resume to continue it "
            "or choose another --out"
        )
    _check_names(cfg, mode)
    seed_everything(cfg.seed, cfg.engine.deterministic)
    if device.type == "cpu":
        # Subnormal floats (tiny KD gradients late in training) slow CPU kernels by 10-20x; flushing them to
        # zero changes nothing measurable and keeps CPU throughput steady.
        torch.set_flush_denormal(True)
    rank, world = D.rank(), D.world_size()

    bundle, eval_split = load_dataset(cfg.data, cfg.seed)
    steps = -(-len(bundle.train) // cfg.data.batch_size) * cfg.total_epochs  # about; all auto needs
    fast = resolve_fast_path(cfg.engine.channels_last, cfg.engine.compile, device, steps, world)
    normalizer = make_normalizer(bundle, device, fast.channels_last)

    if not cfg.student.name:
        raise ConfigError("no model to train: set student.name (or model.name) in the recipe")
    student = create(cfg.student.name, bundle.num_classes, **cfg.student.kwargs)
    if cfg.student.checkpoint:
        load_weights(student, load_checkpoint(cfg.student.checkpoint))

    def teacher_loader(checkpoint: str, name: str | None) -> tuple[nn.Module, dict[str, Any]]:
        kwargs = cfg.teacher.kwargs if checkpoint == cfg.teacher.checkpoint else None
        model, source = load_model(checkpoint, bundle.num_classes, name, kwargs)
        return freeze_teacher(model, device, fast.channels_last), source

    teacher, teacher_source = None, None
    if mode == "distill":
        if not cfg.teacher.checkpoint:
            raise ConfigError(
                "distillation needs a teacher: pass --teacher-checkpoint CKPT (or teacher.checkpoint)"
            )
        teacher, teacher_source = teacher_loader(cfg.teacher.checkpoint, cfg.teacher.name)
        if cfg.student.init_from_teacher:
            _init_from(student, teacher)

    student = student.to(device)
    if fast.channels_last:
        student = student.to(memory_format=torch.channels_last)

    terms = build_terms(cfg.loss)
    if mode == "train":
        needy = [t.term_name for t in terms if t.needs_teacher and t.weight != 0]
        if needy:
            raise ConfigError(
                f"`datakd train` has no teacher, but loss terms {', '.join(needy)} need one; "
                "use `datakd distill` or remove them"
            )
    augmenter = build_augmenter(cfg.augmenter)
    for term in terms:
        unknown = [v for v in term.views if v not in augmenter.view_names]
        if unknown:
            raise ConfigError(
                f"loss.{term.term_name}.views names {unknown}, but augmenter "
                f"{cfg.augmenter['name']!r} produces views {list(augmenter.view_names)}"
            )
    target_transform = build_target_transform(cfg.target_transform)
    events = build_events(cfg.events)

    loader = train_loader(
        cfg.data, bundle, normalizer, device, cfg.seed, augmenter.raw_transform(), rank, world
    )
    evaluator = eval_loader(cfg.data, bundle, normalizer, device, rank, world)
    ctx = SetupContext(
        student=student,
        teacher=teacher,
        num_classes=bundle.num_classes,
        num_train=len(bundle.train),
        train_labels=bundle.train.labels,
        sample_images=_sample_images(bundle, normalizer, device, cfg.data.image_size),
        device=device,
        batch_size=cfg.data.batch_size,
        steps_per_epoch=len(loader),
        total_epochs=cfg.total_epochs,
        normalizer=normalizer,
        mean=bundle.mean,
        std=bundle.std,
        seed=cfg.seed,
        run_dir=run_dir,
        extra={"bundle": bundle, "config": cfg, "fast_path": fast},
    )
    augmenter.setup(ctx)
    augmenter.to(device)
    for term in terms:
        term.setup(ctx)
        term.to(device)
    if target_transform is not None:
        target_transform.setup(ctx)
        target_transform.to(device)

    trainer = Trainer(
        cfg,
        run_dir,
        device,
        bundle,
        eval_split,
        loader,
        evaluator,
        normalizer,
        student,
        teacher,
        teacher_source,
        terms,
        augmenter,
        target_transform,
        events,
        teacher_loader,
        fast,
    )
    if resume and last.exists():
        trainer.load_state(last)
    return trainer


def _check_names(cfg: RunConfig, mode: str) -> None:
    """Fail on a misspelt name before spending time on loading data."""
    from datakd.augmenters.base import AUGMENTERS
    from datakd.data.base import DATASETS
    from datakd.events.base import EVENTS
    from datakd.losses.base import LOSSES
    from datakd.models.registry import get_entry
    from datakd.targets.base import TARGET_TRANSFORMS

    DATASETS.get(cfg.data.dataset)
    if cfg.student.name:
        get_entry(cfg.student.name)
    if mode == "distill" and cfg.teacher.name:
        get_entry(cfg.teacher.name)
    for name, options in cfg.loss.items():
        LOSSES.get(options.get("type", name))
    AUGMENTERS.get(cfg.augmenter["name"])
    if cfg.target_transform:
        TARGET_TRANSFORMS.get(cfg.target_transform["name"])
    for event in cfg.events:
        EVENTS.get(event["name"])


def _init_from(student: nn.Module, teacher: nn.Module) -> None:
    """Copy every teacher tensor whose name and shape match into the student (quantised students)."""
    own = student.state_dict()
    copied = {k: v for k, v in teacher.state_dict().items() if k in own and own[k].shape == v.shape}
    if not copied:
        raise DatakdError("student.init_from_teacher: no parameter of the teacher matches the student")
    own.update(copied)
    student.load_state_dict(own)
