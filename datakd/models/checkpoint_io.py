"""Loading weights into a model from a state dict or a training checkpoint, with one-line mismatch errors.

Accepted inputs: a raw state dict; a checkpoint dict holding the state dict under ``model`` (our checkpoints,
RepDistiller's and mdistiller's ``ckpt_epoch_240.pth``), ``state_dict`` or ``net``; or a path to a file with
any of these (read with ``torch.load(..., weights_only=True)``). Key prefixes added by wrappers
(``module.`` from DataParallel/DDP, ``_orig_mod.`` from ``torch.compile``) are stripped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datakd.errors import DatakdError

CHECKPOINT_KEYS = ("model", "state_dict", "net")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
SHOWN = 3  # keys named per category in an error message


@dataclass
class LoadReport:
    """What did not fit: missing keys, unexpected keys, and (key, checkpoint shape, model shape) triples."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict in `checkpoint` (itself or under model/state_dict/net), wrapper prefixes removed."""
    state = checkpoint
    if not _is_state_dict(state):
        for key in CHECKPOINT_KEYS:
            if _is_state_dict(checkpoint.get(key)):
                state = checkpoint[key]
                break
        else:
            found = ", ".join(sorted(map(str, checkpoint))[:8]) or "nothing"
            raise DatakdError(
                f"no state dict found in the checkpoint: expected tensors at the top level or under "
                f"{', '.join(repr(k) for k in CHECKPOINT_KEYS)}; it holds {found}"
            )
    out = dict(state)
    for prefix in WRAPPER_PREFIXES:
        if out and all(key.startswith(prefix) for key in out):
            out = {key[len(prefix) :]: value for key, value in out.items()}
    return out


def _read(source: str | os.PathLike[str]) -> Mapping[str, Any]:
    path = Path(source).expanduser()
    if not path.is_file():
        raise DatakdError(f"checkpoint file {str(path)!r} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise DatakdError(f"cannot read checkpoint {str(path)!r}: {str(error).splitlines()[0]}") from None
    if not isinstance(loaded, Mapping):
        raise DatakdError(f"checkpoint {str(path)!r} holds a {type(loaded).__name__}, not a state dict")
    return loaded


def compare(model: nn.Module, state: Mapping[str, torch.Tensor]) -> LoadReport:
    """Which keys/shapes of `state` do not fit `model` (BN ``num_batches_tracked`` may be absent)."""
    own = model.state_dict()
    report = LoadReport()
    report.missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    report.unexpected = [k for k in state if k not in own]
    report.mismatched = [
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    return report


def _some(keys: list[str]) -> str:
    more = f" ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def describe_mismatch(model: nn.Module, report: LoadReport) -> str:
    """One line: the architecture, then the first few missing, unexpected and shape-mismatched keys."""
    inner = getattr(model, "module", model)
    name = getattr(inner, "datakd_name", None) or type(inner).__name__
    parts = []
    if report.missing:
        parts.append(f"missing keys {_some(report.missing)}")
    if report.unexpected:
        parts.append(f"unexpected keys {_some(report.unexpected)}")
    if report.mismatched:
        shown = [f"{k} {_shape(ckpt)} vs {_shape(mine)}" for k, ckpt, mine in report.mismatched[:SHOWN]]
        more = f" ({len(report.mismatched) - SHOWN} more)" if len(report.mismatched) > SHOWN else ""
        parts.append(f"shape mismatch (checkpoint vs model) {', '.join(shown)}{more}")
    return f"checkpoint does not fit model {name!r}: " + "; ".join(parts)


def load_weights(
    model: nn.Module,
    state_dict_or_checkpoint: Mapping[str, Any] | str | os.PathLike[str],
    strict: bool = True,
) -> LoadReport:
    """Load a state dict / checkpoint (or a file of one) into `model`, in place.

    With ``strict=True`` any missing, unexpected or shape-mismatched key raises `DatakdError` (one line, see
    `describe_mismatch`) and nothing is loaded. With ``strict=False`` the fitting tensors are loaded and the
    rest is returned in the `LoadReport`. DataParallel/DDP models are loaded through ``.module``.
    """
    source = state_dict_or_checkpoint
    checkpoint = _read(source) if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(checkpoint, Mapping):
        raise DatakdError(
            f"expected a state dict, a checkpoint dict or a path, got {type(checkpoint).__name__}"
        )
    state = extract_state_dict(checkpoint)
    target = (
        model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model
    )
    report = compare(target, state)
    if strict and not report.ok:
        raise DatakdError(describe_mismatch(target, report))
    skip = {key for key, _, _ in report.mismatched} | set(report.unexpected)
    target.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=False)
    return report
