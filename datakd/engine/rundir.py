"""What a run may do with its --out directory: resume it, start it, or (only when told) replace it.

A finished or partial run is never overwritten by accident: starting into a directory that holds any file
of a run needs ``--resume`` (continue from ``last.pt``) or ``--overwrite`` (delete the run's files first).
``--resume auto`` resumes when there is a ``last.pt`` and starts fresh when there is none, so one requeue
command serves the first start and every restart after a preemption.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from datakd.errors import ConfigError, DatakdError
from datakd.faults import check_writable

# The files a run writes into its directory (TensorBoard events go to tb/).
RUN_FILES = ("last.pt", "best.pt", "summary.json", "metrics.csv", "config.yaml", "tb")
RESUME_MODES = (False, True, "auto")


def run_files(run_dir: Path) -> list[str]:
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def prepare_run_dir(run_dir: Path, resume: bool | str, overwrite: bool, is_main: bool = True) -> bool:
    """Check `run_dir` against the resume/overwrite request; True when ``last.pt`` is to be loaded.

    Nothing is deleted here: with `overwrite`, call `clear_run` once the run is known to build. The
    directory (or the folder it will be created in) must take a file, else a one-line `StorageError`.
    """
    load = _resume_or_start(run_dir, resume, overwrite, is_main)
    if is_main:  # a read-only or full --out fails now, not at the first checkpoint an epoch later
        check_writable(run_dir)
    return load


def _resume_or_start(run_dir: Path, resume: bool | str, overwrite: bool, is_main: bool) -> bool:
    if resume not in RESUME_MODES:
        raise ConfigError(f"--resume {resume!r} is not a resume mode; valid: --resume, --resume auto")
    last = run_dir / "last.pt"
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; valid: one of them")
    if resume == "auto":
        return last.is_file()
    if resume:
        if not last.is_file():
            raise DatakdError(
                f"--resume: run directory {str(run_dir)!r} holds no last.pt to continue; valid: the --out "
                "of an interrupted run, or --resume auto (starts fresh when there is nothing to resume)"
            )
        return True
    if not is_main:  # rank 0 checks (other ranks could see the files rank 0 starts writing meanwhile)
        return False
    found = run_files(run_dir)
    if found and not overwrite:
        state = "a finished run" if "summary.json" in found and last.is_file() else "a run"
        raise DatakdError(
            f"run directory {str(run_dir)!r} already holds {state} ({', '.join(found)}); pass --resume to "
            "continue it, --overwrite to replace it, or choose another --out"
        )
    return False


def clear_run(run_dir: Path) -> None:
    """Delete the files of an earlier run in `run_dir` (only those, never other files in the folder)."""
    for name in run_files(run_dir):
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
