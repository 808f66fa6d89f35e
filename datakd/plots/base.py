"""The plot registry behind `datakd plot KIND RUN_DIR`: one function per method-specific figure.

A plot function reads a run directory (metrics.csv and friends) and writes PNGs into `out`, returning
the paths it wrote. matplotlib is imported lazily so the core does not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from datakd.errors import DatakdError
from datakd.registry import Registry

PlotFunction = Callable[[Path, Path], list[Path]]

PLOTS: Registry[PlotFunction] = Registry("plot", packages=("datakd.plots",))


def register_plot(name: str) -> Callable[[PlotFunction], PlotFunction]:
    return PLOTS.register(name)


def pyplot() -> Any:
    """matplotlib.pyplot with a file-only backend, or a one-line install hint."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DatakdError("plotting needs matplotlib: pip install 'datakd[plot]'") from None
    return plt
