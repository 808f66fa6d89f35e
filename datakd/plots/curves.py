"""Training curves of any run: losses, accuracy and learning rate per epoch from metrics.csv."""

from __future__ import annotations

from pathlib import Path

from datakd.engine.metrics import read_metrics
from datakd.errors import DatakdError
from datakd.plots.base import pyplot, register_plot


def load_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise DatakdError(f"{str(run_dir)!r} has no metrics.csv (is it a run directory?)")
    return read_metrics(path)


@register_plot("curves")
def plot_curves(run_dir: Path, out: Path) -> list[Path]:
    """Loss terms, top-1/top-5 and learning rate against epochs."""
    plt = pyplot()
    rows = load_rows(run_dir)
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in sorted({k for r in rows for k in r if k.startswith("loss_")}):
        axes[0].plot(epochs, [r.get(key, float("nan")) for r in rows], label=key[5:])
    axes[0].set(title="training loss terms", xlabel="epoch")
    axes[0].legend()
    for key in sorted({k for r in rows for k in r if k.endswith(("_top1", "_top5"))}):
        axes[1].plot(epochs, [r.get(key, float("nan")) for r in rows], label=key)
    axes[1].set(title="accuracy (%)", xlabel="epoch")
    axes[1].legend()
    axes[2].plot(epochs, [r.get("lr", float("nan")) for r in rows])
    axes[2].set(title="learning rate", xlabel="epoch")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
