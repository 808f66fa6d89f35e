"""Range checks on configuration values, run where the config is read.

`datakd.config` already checks names and types; this module checks what the types cannot say (a batch size
of 0, a negative learning rate, a momentum of 2), so such a value fails at load time with one line naming
the key, the bad value and the valid range, instead of as a ZeroDivisionError or a torch ValueError steps
into the run. One table, one rule per key; method options (loss terms, augmenters, events) are checked by
their own constructors.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from datakd.errors import ConfigError

Rule = tuple[str, Callable[[Any], bool], str]


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _unit_open(v: Any) -> bool:
    return 0 <= v < 1


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


RULES: tuple[Rule, ...] = (
    ("epochs", _positive, "a positive integer"),
    ("data.batch_size", _positive, "a positive integer"),
    ("data.eval_batch_size", _positive, "a positive integer"),
    ("data.workers", _non_negative, "an integer >= 0"),
    ("data.crop_padding", _non_negative, "an integer >= 0"),
    ("data.image_size", _positive, "a positive integer"),
    ("data.val_size", _non_negative, "an integer >= 0 (0 = evaluate on the test split)"),
    ("data.train_subset", _optional(_positive), "a positive integer or null"),
    ("data.test_subset", _optional(_positive), "a positive integer or null"),
    ("optim.lr", _positive, "a number > 0"),
    ("optim.momentum", _unit_open, "a number in [0, 1)"),
    ("optim.weight_decay", _non_negative, "a number >= 0"),
    ("optim.eps", _positive, "a number > 0"),
    ("optim.betas", lambda v: all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    ("optim.base_batch", _optional(_positive), "a positive integer or null"),
    ("schedule.milestones", lambda v: all(m >= 0 for m in v), "a list of epochs >= 0"),
    ("schedule.gamma", _positive, "a number > 0"),
    ("schedule.step_size", _positive, "a number > 0"),
    ("schedule.eta_min", _non_negative, "a number >= 0"),
    ("schedule.decay_epochs", _optional(_positive), "a number > 0 or null"),
    ("schedule.warmup_epochs", _non_negative, "a number >= 0"),
    ("schedule.warmup_start_factor", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ("schedule.scale", _positive, "a number > 0"),
    ("engine.grad_clip_norm", _optional(_positive), "a number > 0 or null"),
    ("engine.checkpoint_every_iters", _non_negative, "an integer >= 0 (0 = only at epoch ends)"),
    ("engine.checkpoint_every_minutes", _non_negative, "a number >= 0 (0 = off)"),
    ("engine.eval_every", _positive, "a positive integer"),
)


def _get(cfg: Any, dotted: str) -> Any:
    value = cfg
    for key in dotted.split("."):
        value = getattr(value, key)
    return value


def validate_config(cfg: Any) -> None:
    """Raise ConfigError for the first value outside its valid range (see RULES)."""
    for key, check, valid in RULES:
        try:
            value = _get(cfg, key)
        except AttributeError:  # a section without this key (kept working while configs evolve)
            continue
        if not check(value):
            raise ConfigError(f"{key}={value!r} is out of range; valid: {valid}")
    if cfg.total_epochs < 1:
        raise ConfigError(
            f"epochs={cfg.epochs} × schedule.scale={cfg.schedule.scale} rounds to {cfg.total_epochs} "
            "epochs; valid: at least 1"
        )
    names = getattr(cfg.engine, "preempt_signals", [])
    for name in names:
        signal_number(name)


CATCHABLE_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP")


def signal_number(name: str) -> int:
    """The number of a signal a run may treat as a preemption notice (engine.preempt_signals)."""
    if name not in CATCHABLE_SIGNALS or not hasattr(signal, name):
        raise ConfigError(
            f"engine.preempt_signals names {name!r}; valid: a list of {', '.join(CATCHABLE_SIGNALS)}"
        )
    return int(getattr(signal, name))


def check_model_input(model: Any, images: Any, role: str, name: str | None, dataset: str) -> None:
    """One forward pass on sample images, so a model built for other images (channels, size) fails here
    with a one-line error instead of as a shape error inside the first training step."""
    import torch

    from datakd.errors import DatakdError

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(images[:2])
    except (RuntimeError, ValueError) as exc:
        shape = "×".join(str(s) for s in images.shape[1:])
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatakdError(
            f"{role} {name!r} cannot take the {shape} (channels×height×width) images of {dataset!r}: "
            f"{reason}; valid: a model built for {images.shape[1]} input channels and this size "
            f"(e.g. {role}.kwargs.in_channels={images.shape[1]}), or data.options / data.image_size "
            "that give the images the model expects"
        ) from None
    finally:
        model.train(was_training)
