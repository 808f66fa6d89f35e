"""Faults of the machine a run stands on, as one line each: a full or read-only disk, too little memory,
a data file that vanished mid-run.

Such faults surface deep in other code (torch's zip writer, TensorBoard's writer thread, a DataLoader
worker) and often as a second exception raised while handling the first (torch raises `RuntimeError`
after the `OSError` of a full disk). These helpers find the real cause in the exception chain and build a
`DatakdError` that names the path or the setting and what to do; each kind has its own exit code, so a
requeue script can tell "fix the input" (2) from "fix the storage" (74) and "fit the memory" (3).
See docs/reliability.md.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from datakd.errors import DatakdError

STORAGE_EXIT_CODE = 74  # sysexits' EX_IOERR: a file could not be written or read
OUT_OF_MEMORY_EXIT_CODE = 3

# errnos that mean "the storage refused", as opposed to a programming error that happens to be an OSError
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT}
)

# c10's allocator prefixes its message with the C++ check that failed; the user needs only the rest
_ENFORCE_PREFIX = re.compile(r"^\[enforce fail at [^\]]*\][^.]*\.\s*")
_OOM_MARKERS = ("can't allocate memory", "out of memory", "cannot allocate memory", "unable to allocate")


class StorageError(DatakdError, OSError):
    """A run file could not be written, or a data file read; the earlier files are intact."""

    exit_code = STORAGE_EXIT_CODE
    fact: str | None = None  # the message without its advice, for a tool that advises otherwise


class DataReadError(StorageError):
    """A data file (an image of a file-backed dataset) is gone, unreadable or truncated."""


class OutOfMemory(DatakdError):
    """A batch (or the model) did not fit in memory; no checkpoint was written by the failed step."""

    exit_code = OUT_OF_MEMORY_EXIT_CODE


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, nearest first (cycle-safe)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen) and len(seen) < 16:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def os_error_in(exc: BaseException) -> OSError | None:
    """The first OSError with an errno in `exc`'s chain (the real cause behind torch's RuntimeError)."""
    return next((e for e in _chain(exc) if isinstance(e, OSError) and e.errno is not None), None)


def reason(error: OSError) -> str:
    """The OS's words and number, e.g. ``No space left on device (errno 28)``."""
    return f"{error.strerror or error} (errno {error.errno})"


def write_error(
    path: Path | str,
    error: OSError,
    resume_hint: bool = True,
    hint: str | None = None,
    cls: type[StorageError] = StorageError,
) -> StorageError:
    """`path` could not be written because of `error`; says whether an older version survived. `hint`
    replaces the advice (a tool without --resume says how it is rerun)."""
    path = Path(path)
    if path.is_dir():
        kept = f"the earlier files in {path.name}/ are intact"
    elif path.exists():
        kept = f"the previous {path.name} is intact"
    else:
        kept = f"no earlier {path.name} existed"
    if hint is None:
        hint = (
            "free space or choose a writable --out, then rerun with --resume"
            if resume_hint
            else "free space or choose a writable location, then rerun"
        )
    fact = f"cannot write {str(path)!r}: {reason(error)}; {kept}"
    fault = cls(f"{fact}; {hint}")
    fault.fact = fact
    return fault


def rehint(fault: StorageError, hint: str) -> StorageError:
    """The same storage fault with another tool's advice: the writers say "rerun with --resume", which a
    tool that resumes by itself (the evidence runner) or has no such flag must not tell its user."""
    fact = getattr(fault, "fact", None) or str(fault).split("; ")[0]
    new = type(fault)(f"{fact}; {hint}")
    new.fact = fact
    return new


def storage_fault(exc: BaseException, hint: str) -> StorageError | None:
    """A tool's one-line storage fault for `exc` (a datakd writer's error or a bare OSError from a write
    it made itself), with the tool's own `hint`; None when `exc` is no storage fault."""
    if isinstance(exc, StorageError):
        return rehint(exc, hint)
    error = os_error_in(exc)
    if error is None or error.errno not in STORAGE_ERRNOS:
        return None
    if error.filename:
        return write_error(error.filename, error, hint=hint)
    fault = StorageError(f"a file could not be written: {reason(error)}; {hint}")
    fault.fact = f"a file could not be written: {reason(error)}"
    return fault


def out_of_memory_text(exc: BaseException) -> str | None:
    """The allocator's own words when `exc` (or what it was raised from) is an out-of-memory error."""
    for error in _chain(exc):
        if isinstance(error, OutOfMemory):
            return None  # already explained
        if isinstance(error, MemoryError):
            text = str(error).strip()
            return text.splitlines()[0] if text else "MemoryError"
        if isinstance(error, RuntimeError):
            text = str(error).strip()
            if type(error).__name__ == "OutOfMemoryError" or any(m in text.lower() for m in _OOM_MARKERS):
                return _ENFORCE_PREFIX.sub("", text.splitlines()[0]) if text else type(error).__name__
    return None


def out_of_memory(text: str, batch_size: int | None, eval_batch_size: int | None, where: str) -> OutOfMemory:
    """One line naming the batch sizes and what to change (datakd has no gradient accumulation)."""
    if batch_size is None:
        sizes = "lower data.batch_size (training) or data.eval_batch_size (evaluation)"
    else:
        smaller = max(batch_size // 2, 1)
        sizes = (
            f"lower data.batch_size (now {batch_size}, e.g. data.batch_size={smaller}; scale optim.lr with "
            f"it) or data.eval_batch_size (now {eval_batch_size}) if it failed in evaluation"
        )
    return OutOfMemory(
        f"out of memory{where}: {text}; {sizes}, or use a smaller model or data.image_size, or a device "
        "with more memory; no checkpoint was written by the failed step (last.pt, if any, is intact)"
    )


def check_writable(directory: Path, what: str = "run directory") -> None:
    """Fail now, before any training, when `directory` (or the folder it will be created in) refuses a
    file: read-only, permission denied, or already full. Leaves nothing behind."""
    target = Path(directory)
    probe_dir = target
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        if not probe_dir.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(probe_dir))
        fd, name = tempfile.mkstemp(prefix=".datakd-write-check.", dir=probe_dir)
        try:
            os.write(fd, b"\0" * 4096)  # a full disk may still create an empty file
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        where = "" if probe_dir == target else f" (it would be created in {str(probe_dir)!r})"
        raise StorageError(
            f"{what} {str(target)!r} is not writable{where}: {reason(exc)}; choose a writable --out, or make "
            "it writable (free space, remount read-write, fix its permissions)"
        ) from None


def run_fault(trainer: Any, exc: BaseException) -> DatakdError | None:
    """The one-line error for a machine fault in `trainer.fit`, or None to let `exc` propagate.

    A vanished data file stops the run after the step in progress with ``last.pt`` written at that point
    (resumable once the file is back); out of memory writes nothing, so no half-trained step is saved.
    """
    data = trainer.cfg.data
    if isinstance(exc, DataReadError):
        trainer.save_checkpoint()
        return DataReadError(
            f"{exc}; stopped after epoch {trainer.epoch} step {trainer.step} (global step "
            f"{trainer.global_step}) with {str(trainer.run_dir / 'last.pt')!r} written: restore the file "
            "(or remove it from the dataset) and rerun the same command with --resume"
        )
    text = out_of_memory_text(exc)
    if text is not None:
        where = f" in epoch {trainer.epoch + 1} step {trainer.step + 1}"
        return out_of_memory(text, data.batch_size, data.eval_batch_size, where)
    return None


def cli_fault(exc: BaseException) -> DatakdError | None:
    """Last resort for the CLI: a storage or memory fault that escaped the writers that know its path."""
    text = out_of_memory_text(exc)
    if text is not None:
        return out_of_memory(text, None, None, "")
    error = os_error_in(exc)
    if error is None or error.errno not in STORAGE_ERRNOS:
        return None
    if error.filename:
        return StorageError(f"cannot access {str(error.filename)!r}: {reason(error)}")
    return StorageError(f"a file could not be written or read: {reason(error)}")
