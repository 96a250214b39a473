"""Heatmaps of a metric over two grid axes (phase-diagram style), drawn with matplotlib's Agg canvas.

References:
    Yang et al. (2023), "Taxonomizing local versus global structure in neural network loss landscapes".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zooscape._io import save_figure

__all__ = ["save_heatmap"]


def _label(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def save_heatmap(
    path: str | Path,
    xs: Sequence[object],
    ys: Sequence[object],
    values: np.ndarray,
    x_label: str,
    y_label: str,
    title: str = "",
    fmt: str = ".3g",
) -> Path:
    """Draw an annotated heatmap and write it atomically as PNG (no pyplot, no global matplotlib state).

    Args:
        path: output ``.png``; parent directories are created.
        xs: column labels, ``len = values.shape[1]``.
        ys: row labels, ``len = values.shape[0]`` (row 0 drawn at the bottom).
        values: ``[len(ys), len(xs)]`` cell values (NaN = empty cell).
        x_label: horizontal axis label.
        y_label: vertical axis label.
        title: figure title.
        fmt: format of the cell annotations.

    Returns:
        the written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = np.asarray(values, dtype=float)
    if values.shape != (len(ys), len(xs)):
        raise ValueError(f"values has shape {values.shape}, expected (len(ys), len(xs)) = ({len(ys)}, {len(xs)})")
    fig = Figure(figsize=(max(4.8, 1.6 + 0.9 * len(xs)), max(3.2, 1.2 + 0.6 * len(ys))), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(values)
    im = ax.imshow(masked, origin="lower", aspect="auto", cmap="viridis")
    fig.colorbar(im, ax=ax)
    finite = values[np.isfinite(values)]
    mid = float(finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(len(ys)):
        for j in range(len(xs)):
            v = values[i, j]
            if np.isfinite(v):
                ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=8,
                        color="black" if v > mid else "white")
    ax.set_xticks(range(len(xs)), [_label(v) for v in xs], rotation=45 if len(xs) > 6 else 0)
    ax.set_yticks(range(len(ys)), [_label(v) for v in ys])
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path, dpi=120, format="png")
