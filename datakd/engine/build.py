"""Assemble a Trainer from a RunConfig: data, models, methods, and (with resume) the saved state."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datakd.api import distributed as D
from datakd.api.context import SetupContext
from datakd.augmenters.base import Augmenter, build_augmenter
from datakd.checkpoint import load_checkpoint, seed_everything
from datakd.config import RunConfig
from datakd.data.base import ImageArrays
from datakd.data.build import eval_loader, load_dataset, make_normalizer, train_loader
from datakd.data.file_loader import decode
from datakd.engine.fastpath import FastPath, resolve_fast_path
from datakd.engine.rundir import clear_run, prepare_run_dir
from datakd.engine.tasks import TASKS, Task, make_task
from datakd.engine.trainer import Trainer
from datakd.errors import ConfigError, DatakdError, InertSettingWarning, choice_error
from datakd.events.base import StageEvent, build_events
from datakd.losses.base import LossTerm, build_terms, inert_weight_warnings
from datakd.models import create
from datakd.models.checkpoint_io import load_weights
from datakd.models.loading import freeze_teacher, load_model
from datakd.targets.base import TargetTransform, build_target_transform
from datakd.validation import check_model_input

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


def build_trainer(
    cfg: RunConfig,
    mode: str,
    run_dir: Path | None = None,
    resume: bool | str = False,
    overwrite: bool = False,
) -> Trainer:
    """Everything a run needs, validated before the first step; `resume` loads ``run_dir/last.pt``
    (``"auto"``: when there is one), `overwrite` replaces an earlier run (see `datakd.engine.rundir`).

    The steps run in this order on purpose: cheap checks first (mode, device, run directory, names), then
    seeding, so that model initialisation, method construction and setup draw from the seeded RNG in the
    same order every time.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; valid choices: {', '.join(MODES)}")
    device = resolve_device(cfg.device)
    run_dir = Path(run_dir or cfg.out or default_run_dir(cfg))
    last = run_dir / "last.pt"
    _check_names(cfg, mode)
    fresh_over_old = overwrite or resume == "auto"  # auto without last.pt: files of a run never checkpointed
    resume = prepare_run_dir(run_dir, resume, overwrite, is_main=D.rank() == 0)
    _seed_process(cfg, device)
    rank, world = D.rank(), D.world_size()

    bundle, eval_split = load_dataset(cfg.data, cfg.seed)
    task = make_task(cfg.task, bundle)
    steps = -(-len(bundle.train) // cfg.data.batch_size) * cfg.total_epochs  # about; all `auto` needs
    fast = _fast_path(cfg, task, device, steps, world)
    normalizer = make_normalizer(bundle, device, fast.channels_last)
    models = load_models(cfg, mode, bundle.num_classes, device, fast.channels_last)
    methods = build_methods(cfg, mode)

    extra: dict[str, Any] = {}
    if task.name == "classification":
        loader = train_loader(
            cfg.data, bundle, normalizer, device, cfg.seed, methods.augmenter.raw_transform(), rank, world
        )
        evaluator = eval_loader(cfg.data, bundle, normalizer, device, rank, world)
        samples = _sample_images(bundle, normalizer, device, cfg.data.image_size)
        check_model_input(models.student, samples, "student", cfg.student.name, cfg.data.dataset)
        if models.teacher is not None and models.teacher_source is not None:
            check_model_input(
                models.teacher, samples, "teacher", models.teacher_source["name"], cfg.data.dataset
            )
    else:
        from datakd.data.dense.loaders import build_dense_loaders

        loader, evaluator = build_dense_loaders(cfg.data, bundle, device, cfg.seed, rank, world)
        samples = _dense_samples(evaluator, cfg.data.dataset)
        if task.name == "detection":
            extra["dense_shapes"] = _detector_shapes(models, samples)
    ctx = SetupContext(
        student=models.student,
        teacher=models.teacher,
        num_classes=bundle.num_classes,
        num_train=len(bundle.train),
        train_labels=bundle.train.labels,
        sample_images=samples,
        device=device,
        batch_size=cfg.data.batch_size,
        steps_per_epoch=len(loader),
        total_epochs=cfg.total_epochs,
        normalizer=normalizer,
        mean=bundle.mean,
        std=bundle.std,
        seed=cfg.seed,
        run_dir=run_dir,
        extra={"bundle": bundle, "config": cfg, "fast_path": fast, "task": task.name, **extra},
    )
    methods.setup(ctx, device)

    trainer = Trainer(
        cfg,
        run_dir,
        device,
        bundle,
        eval_split,
        loader,
        evaluator,
        normalizer,
        models.student,
        models.teacher,
        models.teacher_source,
        methods.terms,
        methods.augmenter,
        methods.target_transform,
        methods.events,
        models.teacher_loader,
        fast,
        task,
    )
    if resume:
        try:
            trainer.load_state(last)
        except DatakdError as exc:
            raise DatakdError(
                f"cannot resume: {exc}; valid: an intact last.pt (or start again with --overwrite)"
            ) from None
    elif fresh_over_old and rank == 0:
        clear_run(run_dir)  # only now that everything built: a bad input leaves the earlier run intact
    return trainer


def _fast_path(cfg: RunConfig, task: Task, device: torch.device, steps: int, world: int) -> FastPath:
    """Classification's fast path; dense tasks train eagerly in contiguous memory (torchvision's detectors
    run through their components and take lists of images of any size: neither compile nor channels-last
    has been measured to help there)."""
    if task.name == "classification":
        return resolve_fast_path(cfg.engine.channels_last, cfg.engine.compile, device, steps, world)
    for key in ("channels_last", "compile"):
        if getattr(cfg.engine, key) is True:
            raise ConfigError(f"engine.{key}=true is for classification; task {task.name!r} runs eagerly")
    return FastPath(False, False, f"{task.name}: eager, contiguous memory")


def _dense_samples(evaluator: Any, dataset: str) -> Any:
    """The first evaluation batch's images: what setup measures feature shapes on."""
    for batch in evaluator:
        return batch.images
    raise DatakdError(f"dataset {dataset!r}: the evaluation split is empty")


@torch.no_grad()
def _detector_shapes(models: Models, samples: Any) -> dict[str, dict[str, tuple[int, ...]]]:
    """(C, h, w) of every FPN level of student and teacher on the sample images, as taps "fpn.<level>"."""
    from datakd.models.detection.forward import run_detector

    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for role, model in (("student", models.student), ("teacher", models.teacher)):
        if model is None:
            continue
        was_training = model.training
        model.eval()
        try:
            outputs = run_detector(model, list(samples[:1]), None, losses=False)
        finally:
            model.train(was_training)
        shapes[role] = {f"fpn.{k}": tuple(v.shape[1:]) for k, v in outputs["features"].items()}
    return shapes


def _seed_process(cfg: RunConfig, device: torch.device) -> None:
    seed_everything(cfg.seed, cfg.engine.deterministic)
    if device.type == "cpu":
        # Subnormal floats (tiny KD gradients late in training) slow CPU kernels by 10-20x; flushing them to
        # zero changes nothing measurable and keeps CPU throughput steady.
        torch.set_flush_denormal(True)


@dataclass
class Models:
    """The run's student (on the device) and teacher (frozen), and how to load another teacher later."""

    student: nn.Module
    teacher: nn.Module | None
    teacher_source: dict[str, Any] | None
    teacher_loader: Callable[[str, str | None], tuple[nn.Module, dict[str, Any]]]


def load_models(
    cfg: RunConfig, mode: str, num_classes: int, device: torch.device, channels_last: bool
) -> Models:
    """The student (created, optionally initialised from a checkpoint or the teacher) and, to distil, the
    teacher; `teacher_loader` is what `switch_teacher` uses later. `channels_last` is the resolved memory
    format (the fast path's, not the recipe's possibly `auto` value)."""
    if not cfg.student.name:
        raise ConfigError("no model to train: set student.name (or model.name) in the recipe")
    student = create(cfg.student.name, num_classes, **cfg.student.kwargs)
    if cfg.student.checkpoint:
        load_weights(student, load_checkpoint(cfg.student.checkpoint))

    def teacher_loader(checkpoint: str, name: str | None) -> tuple[nn.Module, dict[str, Any]]:
        kwargs = cfg.teacher.kwargs if checkpoint == cfg.teacher.checkpoint else None
        model, source = load_model(checkpoint, num_classes, name, kwargs)
        return freeze_teacher(model, device, channels_last), source

    teacher, teacher_source = None, None
    if mode == "distill":
        if not cfg.teacher.checkpoint:
            raise ConfigError(
                "distillation needs a teacher: pass --teacher-checkpoint CKPT (or teacher.checkpoint)"
            )
        teacher, teacher_source = teacher_loader(cfg.teacher.checkpoint, cfg.teacher.name)
        if cfg.student.init_from_teacher:
            _init_from(student, teacher)
        if cfg.student.init_neck_head:
            from datakd.models.detection import copy_neck_and_head

            copy_neck_and_head(student, teacher)

    student = student.to(device)
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    return Models(student, teacher, teacher_source, teacher_loader)


@dataclass
class Methods:
    """The run's loss terms, augmenter, target transform and stage events, built from the recipe."""

    terms: list[LossTerm]
    augmenter: Augmenter
    target_transform: TargetTransform | None
    events: list[StageEvent]

    def setup(self, ctx: SetupContext, device: torch.device) -> None:
        """Augmenter, then terms, then target transform: each sees the models and data facts in `ctx`."""
        self.augmenter.setup(ctx)
        self.augmenter.to(device)
        for term in self.terms:
            term.setup(ctx)
            term.to(device)
        if self.target_transform is not None:
            self.target_transform.setup(ctx)
            self.target_transform.to(device)


def build_methods(cfg: RunConfig, mode: str) -> Methods:
    """Build the recipe's methods and check that they fit together (teacher needs, view names)."""
    terms = build_terms(cfg.loss)
    if mode == "train":
        needy = [t.term_name for t in terms if t.needs_teacher and t.weight != 0]
        if needy:
            raise ConfigError(
                f"`datakd train` has no teacher, but loss terms {', '.join(needy)} need one; "
                "use `datakd distill` or remove them"
            )
    augmenter = build_augmenter(cfg.augmenter)
    _check_tasks(cfg, terms, augmenter)
    for term in terms:
        unknown = [v for v in term.views if v not in augmenter.view_names]
        if unknown:
            raise ConfigError(
                f"loss.{term.term_name}.views names {unknown}, but augmenter "
                f"{cfg.augmenter['name']!r} produces views {list(augmenter.view_names)}"
            )
    target_transform = build_target_transform(cfg.target_transform)
    events = build_events(cfg.events)
    for message in inert_weight_warnings(cfg.loss, terms, events):
        warnings.warn(message, InertSettingWarning, stacklevel=2)
    return Methods(terms, augmenter, target_transform, events)


def _check_tasks(cfg: RunConfig, terms: list[LossTerm], augmenter: Augmenter) -> None:
    """Each loss term and the augmenter must serve the recipe's task (a KD term on image logits cannot
    read a detector's outputs, an image-only augmentation would leave boxes behind)."""
    for term in terms:
        if cfg.task not in term.tasks:
            raise ConfigError(
                f"loss.{term.term_name} ({type(term).__name__}) serves task {'/'.join(term.tasks)}, not "
                f"{cfg.task!r}; valid for {cfg.task}: {', '.join(_terms_for(cfg.task))}"
            )
    if cfg.task not in augmenter.tasks:
        raise ConfigError(
            f"augmenter {cfg.augmenter['name']!r} serves task {'/'.join(augmenter.tasks)}, not {cfg.task!r}"
        )


def _terms_for(task: str) -> list[str]:
    from datakd.losses.base import LOSSES

    return sorted(name for name, cls in LOSSES.items() if task in getattr(cls, "tasks", ()))


def _check_names(cfg: RunConfig, mode: str) -> None:
    """Fail on a misspelt name before spending time on loading data."""
    from datakd.augmenters.base import AUGMENTERS
    from datakd.data.base import DATASETS
    from datakd.events.base import EVENTS
    from datakd.losses.base import LOSSES
    from datakd.models.registry import get_entry
    from datakd.targets.base import TARGET_TRANSFORMS

    if cfg.task not in TASKS:
        raise choice_error("task", cfg.task, TASKS, ConfigError)
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
