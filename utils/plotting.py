"""Plots drawn from metric files: one PNG with a panel per quantity, readable at a glance.

    plot_panels("curves.png", x=[1, 2, 3], xlabel="epoch",
                panels=[("loss", {"train": [2.1, 1.7, 1.5]}), ("lr", {"lr": [0.6, 0.3, 0.001]})])
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from utils.io import atomic_write  # noqa: E402

Panel = tuple[str, dict[str, Sequence[float | None]]]


def plot_panels(path: str | Path, x: Sequence[float], panels: list[Panel], xlabel: str = "epoch",
                title: str | None = None, log_y: Sequence[str] = ()) -> Path:
    """Draw each (panel title, {series label: values}) as a subplot sharing `x`; write atomically.

    Values may contain None (not measured at that x); such points are skipped.
    """
    panels = [(name, series) for name, series in panels if any(v is not None for s in series.values() for v in s)]
    cols = min(len(panels), 2) or 1
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (name, series) in zip(axes.flat, panels):
        for label, values in series.items():
            pts = [(xi, v) for xi, v in zip(x, values) if v is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, label=label)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        if name in log_y:
            ax.set_yscale("log")
        if len(series) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=110))
    plt.close(fig)
    return path
