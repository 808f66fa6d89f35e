"""EffDstl's analysis figures: training vs validation accuracy (Fig. 8) and the FGSM probe (Fig. 7)."""

from __future__ import annotations

from pathlib import Path

from datakd.errors import DatakdError
from datakd.plots.base import pyplot, register_plot
from datakd.plots.curves import load_rows
from datakd.targets.analysis import ProbeRecord

EVAL_KEYS = ("test_top1", "val_top1")


def accuracy_curves(rows: list[dict], where: str) -> tuple[list, list, list, str]:
    """(epochs, train top-1, eval top-1, eval column) of a run's metrics; one-line error without them."""
    eval_key = next((k for k in EVAL_KEYS if any(k in r for r in rows)), None)
    if eval_key is None or not any("train_top1" in r for r in rows):
        raise DatakdError(
            f"{where} needs train_top1 and test_top1 (or val_top1) in metrics.csv; "
            "runs trained before datakd logged train_top1 do not have it"
        )
    points = [(r["epoch"], r["train_top1"], r[eval_key]) for r in rows if "train_top1" in r and eval_key in r]
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points], eval_key


def draw_trainval(runs: list[tuple[str, list[dict]]], path: Path) -> Path:
    """Fig. 8: per run, training (dashed) and validation (solid) top-1 against epochs; right: the gap."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, rows) in enumerate(runs):
        epochs, train, val, eval_key = accuracy_curves(rows, f"run {label!r}")
        color = f"C{i}"
        left.plot(epochs, train, linestyle="--", color=color, label=f"{label} train")
        left.plot(epochs, val, linestyle="-", color=color, label=f"{label} {eval_key.split('_')[0]}")
        right.plot(epochs, [t - v for t, v in zip(train, val)], color=color, label=label)
    left.set(xlabel="epoch", ylabel="top-1 (%)", title="training vs validation accuracy")
    right.set(xlabel="epoch", ylabel="train − validation top-1 (points)", title="generalisation gap")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@register_plot("trainval")
def plot_trainval(run_dir: Path, out: Path) -> list[Path]:
    """Training top-1 (augmented training batches) vs validation top-1 and their gap (EffDstl Fig. 8)."""
    return [draw_trainval([(run_dir.name, load_rows(run_dir))], out / "trainval.png")]


def draw_fgsm_probe(records: list[ProbeRecord], path: Path, bins: int = 40) -> Path:
    """Fig. 7: per probed network, histograms (density) of the label-confidence change under the teacher's
    FGSM, for kept (blue) and manipulated (red) samples."""
    networks = list(dict.fromkeys(r.network for r in records))
    if not networks:
        raise DatakdError("the FGSM probe has no samples to plot")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(networks), figsize=(4.5 * len(networks), 3.6), squeeze=False)
    deltas = [r.delta for r in records]
    low, high = min(deltas), max(deltas)
    edges = [low + (high - low) * k / bins for k in range(bins + 1)] if high > low else bins
    for ax, name in zip(axes[0], networks):
        for flag, color, label in ((False, "tab:blue", "kept"), (True, "tab:red", "manipulated")):
            values = [r.delta for r in records if r.network == name and r.manipulated == flag]
            if values:
                ax.hist(values, bins=edges, density=True, histtype="step", color=color, label=label)
        ax.set(title=name, xlabel="p(y | x_adv) − p(y | x)", ylabel="density")
        ax.legend(fontsize=8)
    fig.suptitle("confidence change under FGSM from the teacher")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
