"""Multi-seed, multi-point experiments: run a recipe over seeds × grid points, aggregate, compare to papers.

A sweep directory holds one run directory per (grid point, seed): ``OUT/<point>/seed<k>``. A run whose
``summary.json`` says it finished is never re-run or counted twice; a run with only ``last.pt``, or one
stopped by a preemption signal (its ``summary.json`` says ``"status": "preempted"``), is resumed.
Aggregation reads only the run directories, so a sweep can be killed and restarted at any time.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from datakd.checkpoint import atomic_write_text
from datakd.config import load_config, parse_overrides
from datakd.errors import ConfigError

METRICS = ("top1_last", "top1_best", "top5_last", "top5_best", "images_per_sec", "device_hours")


@dataclass(frozen=True)
class SweepRun:
    """One (grid point, seed) of a sweep."""

    point: tuple[tuple[str, Any], ...]
    seed: int
    run_dir: Path

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={_yaml_value(v)}" for k, v in self.point] + [f"seed={self.seed}", f"out={self.run_dir}"]


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def parse_grid(specs: list[str]) -> list[tuple[str, list[Any]]]:
    """``key=v1,v2`` → (key, [v1, v2]); values are YAML scalars (a list value needs brackets: [1,2])."""
    grid = []
    for spec in specs:
        if "=" not in spec:
            raise ConfigError(f"grid {spec!r} is not of the form key=v1,v2,...")
        key, raw = spec.split("=", 1)
        parts = re.split(r",(?![^\[]*\])", raw)  # commas outside brackets
        values = [v for _, v in parse_overrides([f"{key}={p}" for p in parts])]
        grid.append((key.strip(), values))
    return grid


def point_name(point: tuple[tuple[str, Any], ...]) -> str:
    if not point:
        return "base"
    text = "_".join(f"{k.split('.')[-1]}={_yaml_value(v)}" for k, v in point)
    return re.sub(r"[^A-Za-z0-9_.=+-]", "-", text)


def plan(out: Path, seeds: list[int], grid: list[tuple[str, list[Any]]]) -> list[SweepRun]:
    keys = [k for k, _ in grid]
    points = [tuple(zip(keys, combo)) for combo in itertools.product(*[v for _, v in grid])] or [()]
    return [SweepRun(p, s, out / point_name(p) / f"seed{s}") for p in points for s in seeds]


def run_finished(run_dir: Path) -> bool:
    """True when the run in `run_dir` trained to its last epoch.

    A run stopped by SIGTERM/SIGUSR1 also writes summary.json (with the epoch it stopped at and
    `"status": "preempted"`), so the file alone does not mean finished: counting it would report a
    part-trained model as the result and never resume it. Summaries written before the status field
    existed were only written by finished runs.
    """
    path = run_dir / "summary.json"
    if not path.is_file():
        return False
    try:
        status = json.loads(path.read_text()).get("status", "finished")
    except (OSError, ValueError):
        return False
    return status == "finished"


def run_state(run: SweepRun) -> str:
    if run_finished(run.run_dir):
        return "done"
    if (run.run_dir / "last.pt").is_file():
        return "partial"
    return "new"


def command_for(run: SweepRun, recipe: Path, mode: str, overrides: list[str], quiet: bool) -> list[str]:
    cmd = [sys.executable, "-m", "datakd", mode, "--config", str(recipe), *overrides, *run.overrides]
    if run_state(run) != "done":  # a run killed before its first checkpoint has files but no last.pt
        cmd += ["--resume", "auto"]
    if quiet:
        cmd.append("--quiet")
    return cmd


def execute(
    runs: list[SweepRun], recipe: Path, mode: str, overrides: list[str], gpus: list[str], quiet: bool = True
) -> None:
    """Run every unfinished run: sequentially, or one process per visible GPU at a time."""
    todo = [r for r in runs if run_state(r) != "done"]
    if len(gpus) <= 1:
        for run in todo:
            subprocess.run(command_for(run, recipe, mode, overrides, quiet), check=True)
        return
    free: queue.Queue[str] = queue.Queue()
    for gpu in gpus:
        free.put(gpu)

    def run_on_a_free_gpu(run: SweepRun) -> int:
        gpu = free.get()
        try:
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
            return subprocess.run(command_for(run, recipe, mode, overrides, quiet), env=env).returncode
        finally:
            free.put(gpu)

    with ThreadPoolExecutor(max_workers=len(gpus)) as pool:
        codes = list(pool.map(run_on_a_free_gpu, todo))
    failed = [run for run, code in zip(todo, codes) if code != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} sweep runs failed, e.g. {failed[0].run_dir}")


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n−1); std is None for a single value."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def aggregate(runs: list[SweepRun]) -> list[dict[str, Any]]:
    """Per grid point: n finished seeds and mean ± sample std of each metric; unfinished runs are listed."""
    rows = []
    for point, group in itertools.groupby(runs, key=lambda r: r.point):
        group = list(group)
        summaries = {}
        for run in group:
            if run_finished(run.run_dir):
                summaries[run.seed] = json.loads((run.run_dir / "summary.json").read_text())
        row: dict[str, Any] = {
            "point": dict(point),
            "name": point_name(point),
            "seeds": sorted(summaries),
            "missing_seeds": sorted(r.seed for r in group if r.seed not in summaries),
            "n": len(summaries),
        }
        for metric in METRICS:
            values = [s[metric] for s in summaries.values() if s.get(metric) is not None]
            if values:
                mean, std = mean_std(values)
                row[metric] = {"mean": mean, "std": std, "values": values}
        rows.append(row)
    return rows


def _pm(stat: dict[str, Any] | None, digits: int = 2) -> str:
    if not stat:
        return "–"
    mean, std = stat["mean"], stat["std"]
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]], title: str) -> str:
    lines = [
        f"## {title}",
        "",
        "| point | seeds | top-1 last | top-1 best | top-5 last | img/s | device-hours |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['n']} | {_pm(row.get('top1_last'))} | {_pm(row.get('top1_best'))} | "
            f"{_pm(row.get('top5_last'))} | {_pm(row.get('images_per_sec'), 0)} | "
            f"{_pm(row.get('device_hours'), 4)} |"
        )
    return "\n".join(lines) + "\n"


def write_results(out: Path, recipe: Path, mode: str, runs: list[SweepRun], overrides: list[str]) -> dict:
    cfg = load_config(recipe, overrides)
    rows = aggregate(runs)
    result = {
        "recipe": str(recipe.resolve()),
        "name": cfg.name,
        "mode": mode,
        "overrides": overrides,
        "dataset": cfg.data.dataset,
        "epochs": cfg.total_epochs,
        "reference": cfg.reference,
        "points": rows,
    }
    atomic_write_text(json.dumps(result, indent=2) + "\n", out / "sweep.json")
    title = f"{cfg.name} ({cfg.data.dataset}, {cfg.total_epochs} epochs)"
    atomic_write_text(markdown_table(rows, title), out / "sweep.md")
    return result
