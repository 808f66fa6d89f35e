"""One feature extractor for every method: forward hooks by module path, no model rewriting.

A tap is ``"path"`` (the module's output) or ``"path:input"`` (its first positional input); a named tap
(``stage3``, ``pre_logits``) is looked up in the model's tap table first. ``logits`` is the model output and
needs no hook. Recordings live in the recorder, are cleared before every forward, and hold references to the
live tensors so gradients flow through them; under DDP each process records its own replica.

Stage taps are the one architecture-independent vocabulary methods share: `stage_taps(model)` lists a
model's ``stage1..N`` in order, and recipes may write ``all_stages`` (every stage, RepDistiller's
``feat[1:-1]``) or ``last_stage`` (the deepest, RepDistiller's ``feat[-2]``), expanded by `resolve_taps`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from datakd.errors import DatakdError
from datakd.models.registry import model_taps

LOGITS = "logits"
ALL_STAGES = "all_stages"
LAST_STAGE = "last_stage"
SYMBOLS = (ALL_STAGES, LAST_STAGE)
_STAGE = re.compile(r"^stage(\d+)$")


def stage_taps(model: nn.Module) -> list[str]:
    """The model's named stage taps ``stage1..N`` in order (empty for models without a tap table)."""
    found = [(int(m.group(1)), name) for name in model_taps(model) if (m := _STAGE.match(name))]
    return [name for _, name in sorted(found)]


def resolve_taps(model: nn.Module, spec: Sequence[str], where: str) -> list[str]:
    """Expand ``all_stages`` / ``last_stage`` in `spec` for `model`; other taps pass through."""
    taps: list[str] = []
    for tap in spec:
        if tap not in SYMBOLS:
            taps.append(tap)
            continue
        stages = stage_taps(model)
        if not stages:
            name = getattr(getattr(model, "module", model), "datakd_name", type(model).__name__)
            raise DatakdError(
                f"{where}: {tap!r} needs named stage taps, but model {name!r} has none; list its taps "
                "explicitly (module paths, see `datakd info --model NAME`)"
            )
        taps.extend(stages if tap == ALL_STAGES else stages[-1:])
    return taps


def resolve_tap(model: nn.Module, tap: str) -> tuple[str, str]:
    """Map a tap name to (module path, "input"|"output")."""
    table = model_taps(model)
    spec = table.get(tap, tap)
    path, _, kind = spec.partition(":")
    kind = kind or "output"
    if kind not in ("input", "output"):
        raise DatakdError(f"tap {tap!r}: the part after ':' must be 'input' or 'output', got {kind!r}")
    return path, kind


def _find_module(model: nn.Module, path: str, tap: str) -> nn.Module:
    wrapped = isinstance(model, nn.parallel.DistributedDataParallel)
    inner = getattr(model, "module", model) if wrapped else model
    if path in ("", "."):
        return inner
    try:
        return inner.get_submodule(path)
    except AttributeError:
        named = model_taps(model)
        hint = f"named taps: {', '.join(sorted(named))}; " if named else ""
        raise DatakdError(
            f"tap {tap!r}: module path {path!r} does not exist in {type(inner).__name__} "
            f"({hint}module paths are listed by `datakd info --model NAME`)"
        ) from None


class FeatureRecorder:
    """Records the tensors at a set of taps during a forward pass of one model."""

    def __init__(self, model: nn.Module, taps: Iterable[str]) -> None:
        self.model = model
        self.taps = [t for t in dict.fromkeys(taps) if t != LOGITS]
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        for tap in self.taps:
            path, kind = resolve_tap(model, tap)
            module = _find_module(model, path, tap)
            if kind == "output":
                handle = module.register_forward_hook(self._output_hook(tap))
            else:
                handle = module.register_forward_pre_hook(self._input_hook(tap))
            self._handles.append(handle)

    def _output_hook(self, tap: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.features[tap] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    def _input_hook(self, tap: str):
        def hook(_module: nn.Module, inputs: Any) -> None:
            self.features[tap] = inputs[0]

        return hook

    def clear(self) -> None:
        self.features = {}

    def forward(self, images: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the model and return (logits, {tap: feature}); recordings are cleared first."""
        self.clear()
        logits = self.model(images, **kwargs)
        features = self.features
        self.features = {}
        missing = [t for t in self.taps if t not in features]
        if missing:
            model_name = type(self.model).__name__
            raise DatakdError(f"taps {missing} were not reached by the forward pass of {model_name}")
        features[LOGITS] = logits
        return logits, features

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.features = {}

    def __enter__(self) -> FeatureRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@torch.no_grad()
def feature_shapes(model: nn.Module, taps: Iterable[str], sample: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Shapes (without batch dim) of the features at `taps`, from one eval-mode forward of `sample`."""
    was_training = model.training
    model.eval()
    try:
        with FeatureRecorder(model, taps) as recorder:
            _, features = recorder.forward(sample)
    finally:
        model.train(was_training)
    # a detector's "logits" entry is its output (detections, a loss dict), a segmenter's a dict: tensors only
    return {tap: tuple(f.shape[1:]) for tap, f in features.items() if isinstance(f, torch.Tensor)}
