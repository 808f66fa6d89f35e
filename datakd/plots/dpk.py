"""DPK's training curves (paper Fig. 7/8): CKA and mask ratio π per stage (classification) or per FPN level
(fgd_dpk, detection), epoch means from metrics.csv."""

from __future__ import annotations

import re
from pathlib import Path

from datakd.errors import DatakdError
from datakd.plots.base import pyplot, register_plot
from datakd.plots.curves import load_rows

COLUMN = re.compile(r"(?P<term>\w+?)_(?P<kind>cka|pi)_(?P<stage>\w+)")


def dpk_columns(rows: list[dict]) -> dict[str, list[str]]:
    """metrics.csv columns written by a dpk term, grouped as {"cka": [...], "pi": [...]} (sorted)."""
    found: dict[str, list[str]] = {"cka": [], "pi": []}
    for key in sorted({k for r in rows for k in r}):
        match = COLUMN.fullmatch(key)
        if match and not key.startswith("loss_"):
            found[match["kind"]].append(key)
    return found


@register_plot("dpk")
def plot_dpk(run_dir: Path, out: Path) -> list[Path]:
    """DPK: CKA between student and teacher stage features and the mask ratio π per stage, per epoch."""
    rows = load_rows(run_dir)
    columns = dpk_columns(rows)
    if not columns["cka"] and not columns["pi"]:
        raise DatakdError(f"{str(run_dir)!r} has no DPK columns (*_cka_*, *_pi_*) in metrics.csv")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, kind, title in (
        (axes[0], "cka", "CKA(student, teacher) per stage or FPN level (Fig. 7)"),
        (axes[1], "pi", "mask ratio π per stage or FPN level (Fig. 8)"),
    ):
        for key in columns[kind]:
            points = [(r["epoch"], r[key]) for r in rows if key in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=key)
        ax.set(title=title, xlabel="epoch", ylim=(0.0, 1.0))
        if columns[kind]:
            ax.legend()
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "dpk.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
