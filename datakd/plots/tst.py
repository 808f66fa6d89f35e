"""TST policy curves (the paper's Fig. 2 / Fig. 4): the 14 probabilities and 11 magnitudes over Stage II."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from datakd.augmenters.tst.augmenter import POLICY_FILE
from datakd.augmenters.tst.ops import OPS
from datakd.errors import DatakdError
from datakd.plots.base import pyplot, register_plot


def read_policy(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / POLICY_FILE
    if not path.is_file():
        raise DatakdError(
            f"{str(run_dir)!r} has no {POLICY_FILE} (was it a TST run with a tst_search event?)"
        )
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@register_plot("tst")
def plot_tst(run_dir: Path, out: Path) -> list[Path]:
    """TST: σ(θ_p) of the 14 sub-policies and σ(θ_m) of the 11 magnitudes against Stage II iterations."""
    plt = pyplot()
    rows = read_policy(run_dir)
    p_curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    m_curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    starts: dict[int, int] = {}
    for row in rows:
        step = int(row["search_step"])
        p_curves[row["op"]].append((step, float(row["p"])))
        if row["m"] != "":
            m_curves[row["op"]].append((step, float(row["m"])))
        if row["pass"] == "0":
            starts[int(row["call"])] = step
    colours = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, 2, figsize=(15, 5))
    for ax, curves, title in (
        (axes[0], p_curves, "probabilities σ(θ_p)"),
        (axes[1], m_curves, "magnitudes σ(θ_m)"),
    ):
        for op, points in curves.items():
            index = OPS.index(op) if op in OPS else 0
            ax.plot(
                [s for s, _ in points],
                [v for _, v in points],
                marker=".",
                label=op,
                color=colours(index % 20),
                linestyle="-" if index < 11 else "--",
            )
        for step in sorted(starts.values()):
            ax.axvline(step, color="grey", linewidth=0.5, linestyle="--")
        ax.set(title=title, xlabel="Stage II iterations (dashed: start of a call)")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tst_policy.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
