"""The model registry: every network is built by name, with its named feature taps.

A tap is where a method reads an intermediate feature: ``"layer2"`` (a module's output) or ``"fc:input"``
(a module's input). Zoo models name their taps (``stage1..stageN``, ``pre_logits``) so recipes can say
``student: stage3`` without knowing module paths; any module path also works as a tap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from datakd.errors import DatakdError, choice_error
from datakd.registry import Registry, check_kwargs


@dataclass(frozen=True)
class ModelEntry:
    """A buildable model: factory(num_classes=..., **kwargs) -> nn.Module, and its named taps."""

    name: str
    factory: Callable[..., nn.Module]
    taps: dict[str, str] = field(default_factory=dict)
    family: str = "cifar"  # cifar | imagenet | detection | segmentation
    description: str = ""


MODELS: Registry[ModelEntry] = Registry("model", packages=("datakd.models",))


def register_model(
    name: str, taps: dict[str, str] | None = None, family: str = "cifar", description: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under `name` with its named feature taps."""

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        doc = description or (factory.__doc__ or "").strip().splitlines()[0:1]
        text = doc if isinstance(doc, str) else (doc[0] if doc else "")
        MODELS.register(name)(ModelEntry(name, factory, dict(taps or {}), family, text))
        return factory

    return decorator


# Resolvers for names the registry cannot list up front (e.g. "tv:resnet18", "timm:resnet34d",
# "resnet18@w4a4"); each returns an entry or None when the name is not its own.
_RESOLVERS: list[Callable[[str], ModelEntry | None]] = []
# What `datakd list models` prints for each resolver's name pattern, e.g. ("tv:NAME", "...").
_PATTERNS: list[tuple[str, str]] = []


def add_resolver(
    resolver: Callable[[str], ModelEntry | None], patterns: list[tuple[str, str]] | None = None
) -> Callable[[str], ModelEntry | None]:
    _RESOLVERS.append(resolver)
    _PATTERNS.extend(patterns or [])
    return resolver


# Other spellings of registered names, lower-case alias -> registered name. Registered names themselves are
# matched case-insensitively, so RepDistiller/mdistiller's `ResNet50`, `MobileNetV2`, `ShuffleV1` work as is;
# this table holds only names that differ by more than case (e.g. the TST code's `vgg13_bn`).
_ALIASES: dict[str, str] = {}


def register_alias(alias: str, name: str) -> None:
    """Accept `alias` (any case) wherever model `name` is accepted (recipes, `create`, checkpoints)."""
    _ALIASES[alias.lower()] = name


for _depth in (8, 11, 13, 16, 19):  # RepDistiller's vgg*_bn functions, the TST code's config names
    register_alias(f"vgg{_depth}_bn", f"vgg{_depth}")
register_alias("ShuffleNetV1", "shufflev1")
register_alias("ShuffleNetV2", "shufflev2")


def canonical_name(name: str) -> str:
    """The registered spelling of `name`: itself if registered, else a case-insensitive match or alias."""
    if name in MODELS:
        return name
    folded = name.lower()
    by_case = {registered.lower(): registered for registered in MODELS.names()}
    if folded in by_case:
        return by_case[folded]
    return _ALIASES.get(folded, name)


def list_model_names() -> list[tuple[str, str]]:
    """(name, description) of every registered model, then the name patterns resolvers accept."""
    rows = [(name, entry.description) for name, entry in MODELS.items()]
    return rows + list(_PATTERNS)


def get_entry(name: str) -> ModelEntry:
    canonical = canonical_name(name)
    if canonical in MODELS:
        return MODELS.get(canonical)
    for resolver in _RESOLVERS:
        entry = resolver(name)
        if entry is not None:
            return entry
    raise choice_error("model", name, MODELS.names())


def create(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build model `name` for `num_classes` classes; its taps are attached as ``model.datakd_taps``."""
    if not isinstance(name, str) or not name:
        raise DatakdError(f"a model name is required, got {name!r}; see `datakd list models`")
    entry = get_entry(name)
    check_kwargs(f"model {name!r}", entry.factory, kwargs, reserved=("num_classes",))
    model = entry.factory(num_classes=num_classes, **kwargs)
    model.datakd_taps = dict(entry.taps)  # type: ignore[assignment]
    model.datakd_name = name  # type: ignore[assignment]
    return model


def model_taps(model: nn.Module) -> dict[str, str]:
    """Named taps of a model built by `create` (empty for foreign models)."""
    inner = model
    for _ in range(2):  # DDP / DataParallel, and the fast path's CompiledForward around either
        inner = getattr(inner, "module", inner)
    return dict(getattr(inner, "datakd_taps", {}))
