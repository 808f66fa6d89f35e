"""Preemption: a signal asks the run to stop at the next step boundary with a checkpoint, not to die.

SLURM and Kubernetes announce a preemption with SIGTERM and kill the job a grace period later. While a run
trains, the signals in ``engine.preempt_signals`` (SIGTERM and SIGUSR1 by default) only set a flag; the
trainer finishes the step it is in, writes ``last.pt`` atomically, records the reason in ``summary.json``
and raises `Preempted`, which the CLI turns into exit code `PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL``:
"try again"). Rerunning the same command with ``--resume`` (or ``--resume auto``, which also starts a fresh
run when there is nothing to resume) continues bit-identically on the CPU.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from datakd.validation import signal_number

PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """The run stopped on a preemption signal after writing its checkpoint; rerun with --resume."""

    def __init__(self, reason: str, run_dir: Path, epoch: int, step: int, global_step: int) -> None:
        self.reason, self.run_dir = reason, run_dir
        self.epoch, self.step, self.global_step = epoch, step, global_step
        super().__init__(
            f"stopped by {reason} after epoch {epoch} step {step} (global step {global_step}); checkpoint "
            f"{str(run_dir / 'last.pt')!r} written; rerun the same command with --resume (or --resume auto) "
            "to continue"
        )

    def record(self) -> dict[str, Any]:
        """What summary.json says about the stop."""
        return {
            "status": "preempted",
            "stopped": {
                "reason": self.reason,
                "epoch": self.epoch,
                "step": self.step,
                "global_step": self.global_step,
                "checkpoint": str(self.run_dir / "last.pt"),
                "exit_code": PREEMPTED_EXIT_CODE,
            },
        }


class StopSignals:
    """While active, the named signals set `received` (the first signal's name) instead of ending the process.

    Handlers can only be installed from the main thread; elsewhere (e.g. a trainer driven from a worker
    thread) this does nothing and signals keep their usual effect. The previous handlers come back on exit.
    """

    def __init__(self, names: list[str]) -> None:
        self.numbers = [signal_number(name) for name in names]
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in self.numbers:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
