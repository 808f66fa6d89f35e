"""`datakd plot pba PATH`: a learned PBA schedule drawn as in role-wise KD's Figs. 3-4.

PATH is a schedule JSON file, a search output folder holding ``schedule.json``, or a run directory whose
recipe used ``augmenter: {name: pba, schedule: ...}``. Left: per-op application probability (mean of the
op's two copies) stacked over epochs, normalised by the largest per-epoch sum (the paper's normalisation);
right: per-op magnitude level (mean of the two copies) as stacked bars at about 20 evenly spaced epochs.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from datakd.augmenters.pba_ops import OPS
from datakd.augmenters.pba_policy import NUM_OPS, PROB_MAX, Schedule
from datakd.errors import DatakdError
from datakd.plots.base import pyplot, register_plot


def find_schedule(path: Path) -> Path:
    """The schedule file behind a file, search folder or run directory."""
    if path.is_file():
        return path
    if (path / "schedule.json").is_file():
        return path / "schedule.json"
    config = path / "config.yaml"
    if config.is_file():
        augmenter = (yaml.safe_load(config.read_text()) or {}).get("augmenter") or {}
        if augmenter.get("name") == "pba" and augmenter.get("schedule"):
            return Path(augmenter["schedule"])
    raise DatakdError(
        f"{str(path)!r} is not a PBA schedule, a search folder with schedule.json, or a run that used one"
    )


def schedule_curves(schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """(probability, magnitude level) per epoch and op, each E×15: the mean over the op's two copies."""
    levels = torch.tensor(schedule.policies, dtype=torch.float64).view(schedule.epochs, 2, NUM_OPS, 2)
    probability = levels[..., 0].mean(dim=1) / PROB_MAX
    magnitude = levels[..., 1].mean(dim=1)
    return probability, magnitude


@register_plot("pba")
def plot_pba(run_dir: Path, out: Path) -> list[Path]:
    """A PBA schedule: normalised op probabilities and magnitudes over epochs (role-wise KD Figs. 3-4)."""
    plt = pyplot()
    path = find_schedule(Path(run_dir))
    schedule = Schedule.load(path)
    probability, magnitude = schedule_curves(schedule)
    epochs = torch.arange(1, schedule.epochs + 1)
    colours = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(1, 2, figsize=(16, 5))
    totals = probability.sum(dim=1)
    scale = float(totals.max()) if float(totals.max()) > 0 else 1.0
    axes[0].stackplot(
        epochs.numpy(), (probability / scale).t().numpy(), labels=list(OPS), colors=colours[:NUM_OPS]
    )
    axes[0].set(xlabel="epoch", ylabel="normalised probability", ylim=(0, 1), title="operation probability")
    step = max(1, schedule.epochs // 20)
    picked = torch.arange(0, schedule.epochs, step)
    bottom = torch.zeros(len(picked), dtype=torch.float64)
    for i in range(NUM_OPS):
        values = magnitude[picked, i]
        axes[1].bar(
            picked.numpy() + 1, values.numpy(), width=0.6 * step, bottom=bottom.numpy(), color=colours[i]
        )
        bottom += values
    axes[1].set(xlabel="epoch", ylabel="magnitude level (stacked)", title="operation magnitude")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], loc="center right", fontsize=8)
    role = schedule.meta.get("role")
    fig.suptitle(f"PBA schedule{f' ({role})' if role else ''}: {path.name}, {schedule.epochs} epochs")
    fig.tight_layout(rect=(0, 0, 0.88, 0.95))
    if out.parent.is_file():  # `datakd plot pba FILE.json` defaults to FILE.json/plots: use its folder
        out = out.parent.parent / "plots"
    out.mkdir(parents=True, exist_ok=True)
    target = out / "pba_schedule.png"
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return [target]
