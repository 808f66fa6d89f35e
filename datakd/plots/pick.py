"""Seed 001 Fig. 4: the average KL ratio r (Eq. 4) of TLCutMix+pick over training epochs."""

from __future__ import annotations

from pathlib import Path

from datakd.errors import DatakdError
from datakd.plots.base import pyplot, register_plot
from datakd.plots.curves import load_rows


def ratio_columns(rows: list[dict]) -> list[str]:
    """The pick ratio columns in a run's metrics (``pick_kl_ratio``, or ``pick_<criterion>_ratio``)."""
    return sorted({k for r in rows for k in r if k.startswith("pick_") and k.endswith("_ratio")})


@register_plot("pick")
def plot_pick(run_dir: Path, out: Path) -> list[Path]:
    """Per epoch: mean score of the picked CutMix samples over the pool mean (r > 1: harder than average)."""
    rows = load_rows(run_dir)
    columns = ratio_columns(rows)
    if not columns:
        raise DatakdError(
            f"{str(run_dir)!r} has no pick_*_ratio column in metrics.csv; "
            "it was not trained with augmenter tlcutmix_pick"
        )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in columns:
        points = [(r["epoch"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=key)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set(title="TLCutMix+pick: average score ratio r (Eq. 4)", xlabel="epoch", ylabel="r")
    ax.legend()
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pick_ratio.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
