"""Checkpoints written atomically (temp file + fsync + rename) and RNG state capture for exact resume.

A run killed at any moment leaves either the previous checkpoint or the new one on disk, never a torn
file. Checkpoints are plain dicts of tensors and builtins, loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datakd.errors import DatakdError
from datakd.faults import StorageError, os_error_in, write_error

FORMAT_VERSION = 1


class CheckpointWriteError(StorageError):
    """Writing a file failed (disk full, unwritable folder); the previous version of the file is intact."""


def _write_failure(path: Path, exc: Exception) -> StorageError | None:
    """The one-line error when `exc` came from the storage; torch's zip writer raises `RuntimeError`
    (``unexpected pos``) while closing after the `OSError` of a full disk, so the whole chain is searched."""
    error = os_error_in(exc)
    if error is None:
        return None
    return write_error(path, error, cls=CheckpointWriteError)


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write `obj` with torch.save so that `path` is replaced in one step.

    A storage failure (disk full, no permission, read-only) becomes a one-line `CheckpointWriteError`
    naming the path and the reason; the previous file at `path` is untouched because the new one never got
    renamed over it, and the partial temp file is removed (which also gives the space back).
    """
    path = Path(path)
    try:
        _atomic_save(obj, path)
    except Exception as exc:
        failure = None if isinstance(exc, DatakdError) else _write_failure(path, exc)
        if failure is None:
            raise
        raise failure from None


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(text: str, path: str | Path) -> None:
    """Replace `path` with `text` in one step; a storage failure is one line, the old file intact."""
    path = Path(path)
    try:
        _atomic_write_text(text, path)
    except OSError as exc:
        failure = None if isinstance(exc, DatakdError) else _write_failure(path, exc)
        if failure is None:
            raise
        raise failure from None


def _atomic_write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU; a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise DatakdError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:
            raise DatakdError(
                f"checkpoint {str(path)!r} cannot be read ({str(exc).splitlines()[0].split('. ')[0]}); "
                "it is truncated or not a torch checkpoint"
            ) from None
    if not isinstance(data, dict):
        raise DatakdError(f"checkpoint {str(path)!r} is not a dict (found {type(data).__name__})")
    return data


def capture_rng() -> dict[str, Any]:
    """Every global RNG that model code may touch: torch (CPU and CUDA), numpy, python."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_python_state_from_plain(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_plain(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed every global RNG; with `deterministic`, ask torch for deterministic kernels too."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
