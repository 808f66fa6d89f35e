"""Paper numbers next to ours: every sweep.json under a folder, plus recipes that were never run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def _reference_top1(reference: dict[str, Any] | None) -> float | None:
    if not reference:
        return None
    value = reference.get("top1")
    return float(value) if isinstance(value, (int, float)) else None


def _label(reference: dict[str, Any] | None, name: str) -> str:
    if not reference:
        return name
    parts = [f"paper {reference.get('paper', '?')}"]
    if "table" in reference:
        parts.append(f"table {reference['table']}")
    if "row" in reference:
        parts.append(str(reference["row"]))
    return " · ".join(parts)


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.rglob("sweep.json"))]


def recipe_references(folders: list[Path]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Recipe path → (name, reference) for every recipe that carries a paper number."""
    found = {}
    for folder in folders:
        files = [folder] if folder.is_file() else sorted(folder.rglob("*.yaml"))
        for path in files:
            data = yaml.safe_load(path.read_text()) or {}
            if isinstance(data, dict) and data.get("reference"):
                found[str(path.resolve())] = (data.get("name", path.stem), data["reference"])
    return found


def report_table(sweep_dir: Path, recipe_folders: list[Path]) -> str:
    lines = [
        "| recipe | reference | point | seeds | ours top-1 (last) | ours top-1 (best) | paper | Δ last |",
        "|---|---|---|---|---|---|---|---|",
    ]
    seen = set()
    for sweep in collect(sweep_dir):
        seen.add(str(Path(sweep["recipe"]).resolve()))
        paper = _reference_top1(sweep.get("reference"))
        for point in sweep["points"]:
            last, best = point.get("top1_last"), point.get("top1_best")
            fmt = _fmt(last)
            delta = f"{last['mean'] - paper:+.2f}" if last and paper is not None else "–"
            lines.append(
                f"| {sweep['name']} | {_label(sweep.get('reference'), sweep['name'])} | {point['name']} | "
                f"{point['n']} | {fmt} | {_fmt(best)} | {paper if paper is not None else '–'} | {delta} |"
            )
    for path, (name, reference) in recipe_references(recipe_folders).items():
        if path in seen:
            continue
        paper = _reference_top1(reference)
        lines.append(
            f"| {name} | {_label(reference, name)} | – | 0 | not run | not run | "
            f"{paper if paper is not None else '–'} | – |"
        )
    return "\n".join(lines)


def _fmt(stat: dict[str, Any] | None) -> str:
    if not stat:
        return "–"
    std = stat["std"]
    return f"{stat['mean']:.2f} ± {std:.2f}" if std is not None else f"{stat['mean']:.2f}"
