"""Per-epoch running means and the run's files: metrics.csv, TensorBoard events, summary.json.

Sums stay on the device as tensors during the epoch (no host sync per step) and are read once at the end.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from datakd.checkpoint import atomic_write_text


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
    """Scalar logging to TensorBoard when available; silently a no-op otherwise."""

    def __init__(self, log_dir: Path, enabled: bool) -> None:
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed
                return
            self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and key != "epoch":
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_json(data: dict[str, Any], path: Path) -> None:
    atomic_write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", path)
