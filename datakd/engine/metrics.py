"""Per-epoch running means and the run's files: metrics.csv, TensorBoard events, summary.json.

Sums stay on the device as tensors during the epoch (no host sync per step) and are read once at the end.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from datakd.checkpoint import atomic_write_text
from datakd.faults import os_error_in, write_error


class EpochMeters:
    """Weighted running means keyed by name; state is saved in mid-epoch checkpoints."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, float] = {}

    def add(self, name: str, value: float | torch.Tensor, count: float = 1) -> None:
        value = value.detach().float() * count if isinstance(value, torch.Tensor) else float(value) * count
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0.0) + count

    def means(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """Per-name means; `reduce` sums (sum, count) pairs across DDP ranks (same names on every rank)."""
        keys = sorted(self.sums)
        if reduce is not None and keys:
            device = next((v.device for v in self.sums.values() if isinstance(v, torch.Tensor)), None)
            packed = torch.tensor(
                [[float(self.sums[k]), self.counts[k]] for k in keys], dtype=torch.float64, device=device
            )
            packed = reduce(packed).tolist()
            return {k: s / c for k, (s, c) in zip(keys, packed) if c > 0}
        return {k: float(self.sums[k]) / self.counts[k] for k in keys if self.counts[k] > 0}

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": {
                k: (v.cpu() if isinstance(v, torch.Tensor) else torch.tensor(v)) for k, v in self.sums.items()
            },
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.counts = dict(state["counts"])


class MetricsCSV:
    """metrics.csv with one row per epoch; columns are the union of keys seen, rewritten atomically."""

    FIRST = ("epoch", "lr")

    def __init__(self, path: Path, rows: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = list(rows or [])

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        columns: list[str] = list(self.FIRST)
        for row in self.rows:
            columns.extend(k for k in row if k not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        atomic_write_text(buffer.getvalue(), self.path)


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """metrics.csv rows with numbers parsed (empty cells dropped)."""
    rows = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, Any] = {}
            for key, value in row.items():
                if value in ("", None):
                    continue
                try:
                    parsed[key] = int(value) if key == "epoch" else float(value)
                except ValueError:
                    parsed[key] = value
            rows.append(parsed)
    return rows


class TensorBoardLog:
    """Scalar logging to TensorBoard when available; silently a no-op otherwise.

    TensorBoard writes on a thread of its own and hands a failed write (a full disk) back to the next
    `scalars` call; here that becomes a one-line `StorageError` naming the events file, and the writer
    thread's own traceback is silenced (see `_quiet_writer_thread_errors`).
    """

    def __init__(self, log_dir: Path, enabled: bool) -> None:
        self.writer = None
        self.events_file = log_dir
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed
                return
            _quiet_writer_thread_errors()
            try:
                self.writer = SummaryWriter(log_dir=str(log_dir))
            except OSError as exc:
                raise write_error(log_dir, exc) from None
            self.events_file = _events_file(self.writer, log_dir)

    def scalars(self, values: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        try:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()
        except Exception as exc:
            error = os_error_in(exc)
            if error is None:
                raise
            raise write_error(self.events_file, error) from None

    def close(self) -> None:
        """Close the writer; a failure to flush is reported unless another error is already on its way
        (then that one is the news, and TensorBoard's tail is the least of the user's worries)."""
        if self.writer is None:
            return
        writer, self.writer = self.writer, None
        in_flight = sys.exc_info()[1]  # set when called from a `finally` while another error propagates
        try:
            writer.close()
        except Exception as exc:
            error = os_error_in(exc)
            if error is None:
                raise
            if in_flight is not None:
                return
            raise write_error(self.events_file, error) from None


def _events_file(writer: Any, log_dir: Path) -> Path:
    """The events file being written (private TensorBoard attributes; the folder if they change)."""
    try:
        name = writer._get_file_writer().event_writer._file_name
        return Path(name.decode() if isinstance(name, bytes) else name)
    except (AttributeError, TypeError):
        return log_dir


def _quiet_writer_thread_errors() -> None:
    """Keep TensorBoard's writer thread from printing a traceback for an OSError (a full disk): the
    thread stores the error and TensorBoard raises it again in the caller, which reports it in one line.
    Installed again whenever another hook replaced it (pytest swaps hooks per test)."""
    previous = threading.excepthook
    if getattr(previous, "datakd_quiet_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        thread = type(args.thread).__name__ if args.thread is not None else ""
        if thread == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
            return
        previous(args)

    hook.datakd_quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def write_json(data: dict[str, Any], path: Path) -> None:
    atomic_write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", path)
