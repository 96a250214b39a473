"""Figures of the zoo report, drawn with matplotlib's Agg canvas (no pyplot, no global state) and returned as
``data:image/png;base64,...`` URIs so that the page needs no other file and makes no request.

Every function aggregates before drawing: boxplots take per-group value arrays, curves take per-epoch quantiles,
so a figure's cost and size do not grow with the number of models.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["boxplots", "heatmap", "line_bands", "new_figure", "paths", "png_uri", "scatter"]

#: Resolution of the inlined PNGs (dots per inch); 90 keeps a figure around 20-60 kB.
DPI = 90
#: Most labelled ticks on a heatmap axis (matplotlib's text layout dominates the cost beyond that).
MAX_TICKS = 40


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` with an Agg canvas and constrained layout.

    Args:
        width: inches.
        height: inches.

    Returns:
        matplotlib.figure.Figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_uri(fig: Any) -> str:
    """Render a figure to PNG and return it as a ``data:`` URI (inlined in the page).

    Args:
        fig: matplotlib Figure.

    Returns:
        ``"data:image/png;base64,..."``.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def boxplots(groups: Mapping[str, np.ndarray], ylabel: str, title: str = "", xlabel: str = "") -> str:
    """Boxplots of one value per model, one box per group (grid cell or epoch), as in the Model Zoos paper.

    Whiskers span the 5th-95th percentiles; outliers are not drawn (their number grows with the zoo).

    Args:
        groups: label -> values ``[n_models_in_group]`` (NaNs dropped; empty groups drawn empty).
        ylabel: value axis label.
        title: figure title.
        xlabel: group axis label.

    Returns:
        PNG data URI.
    """
    labels = list(groups)
    data = [np.asarray(v, dtype=float) for v in groups.values()]
    data = [v[np.isfinite(v)] for v in data]
    fig = new_figure(min(14.0, max(5.0, 1.0 + 0.45 * len(labels))), 3.6)
    ax = fig.add_subplot()
    ax.boxplot([v if v.size else [np.nan] for v in data], whis=(5, 95), showfliers=False,
               patch_artist=True, boxprops={"facecolor": "#cfe0f3"}, medianprops={"color": "#1f4e8c"})
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=45 if len(labels) > 4 else 0,
                  ha="right" if len(labels) > 4 else "center", fontsize=7)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return png_uri(fig)


def line_bands(x: np.ndarray, series: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], xlabel: str,
               ylabel: str, title: str = "") -> str:
    """Curves with spread: one line (the median) and a shaded band (lower to upper quantile) per series.

    Args:
        x: ``[T]`` x values (epochs).
        series: label -> (median ``[T]``, lower ``[T]``, upper ``[T]``).
        xlabel: x axis label.
        ylabel: y axis label.
        title: figure title.

    Returns:
        PNG data URI.
    """
    fig = new_figure(5.6, 3.4)
    ax = fig.add_subplot()
    for label, (mid, lo, hi) in series.items():
        (line,) = ax.plot(x, mid, label=label, lw=1.5)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if 1 < len(series) <= 10:
        ax.legend(fontsize=7)
    return png_uri(fig)


def heatmap(values: np.ndarray, xs: Sequence[Any], ys: Sequence[Any], xlabel: str, ylabel: str, title: str = "",
            annotate: bool = True, cmap: str = "viridis") -> str:
    """An annotated heatmap (row 0 at the bottom); NaN cells are left blank.

    Args:
        values: ``[len(ys), len(xs)]``.
        xs: column labels.
        ys: row labels.
        xlabel: horizontal axis label.
        ylabel: vertical axis label.
        title: figure title.
        annotate: write the values into the cells (skipped above 400 cells).
        cmap: matplotlib colormap name.

    Returns:
        PNG data URI.
    """
    values = np.asarray(values, dtype=float)
    fig = new_figure(min(10.0, max(4.2, 1.8 + 0.55 * len(xs))), min(8.0, max(3.0, 1.2 + 0.4 * len(ys))))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(values), origin="lower", aspect="auto", cmap=cmap)
    fig.colorbar(im, ax=ax)
    finite = values[np.isfinite(values)]
    if annotate and values.size <= 400 and finite.size:
        mid = float(finite.min() + finite.max()) / 2
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.3g}", ha="center", va="center", fontsize=7,
                            color="black" if values[i, j] > mid else "white")
    fmt = lambda v: f"{v:g}" if isinstance(v, float) else str(v)
    if len(xs) <= MAX_TICKS:
        ax.set_xticks(range(len(xs)), [fmt(v) for v in xs], rotation=45 if len(xs) > 6 else 0, fontsize=7)
    if len(ys) <= MAX_TICKS:
        ax.set_yticks(range(len(ys)), [fmt(v) for v in ys], fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    return png_uri(fig)


def scatter(x: np.ndarray, y: np.ndarray, c: np.ndarray, xlabel: str, ylabel: str, clabel: str, title: str = "",
            log: bool = True) -> str:
    """A scatter plot coloured by a third value (e.g. temperature x load coloured by test accuracy).

    Args:
        x: ``[N]``.
        y: ``[N]``.
        c: ``[N]`` colour values.
        xlabel: x axis label.
        ylabel: y axis label.
        clabel: colour bar label.
        title: figure title.
        log: logarithmic axes (where all values are positive).

    Returns:
        PNG data URI.
    """
    fig = new_figure(5.6, 4.0)
    ax = fig.add_subplot()
    sc = ax.scatter(x, y, c=c, s=18, cmap="viridis", edgecolors="none")
    fig.colorbar(sc, ax=ax, label=clabel)
    if log and np.all(np.asarray(x) > 0):
        ax.set_xscale("log")
    if log and np.all(np.asarray(y) > 0):
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return png_uri(fig)


def paths(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], xlabel: str, ylabel: str, title: str = "") -> str:
    """Loss (or error) along paths between two models, one line per path.

    Args:
        curves: (label, t ``[P]``, value ``[P]``) per path.
        xlabel: x axis label.
        ylabel: y axis label.
        title: figure title.

    Returns:
        PNG data URI.
    """
    fig = new_figure(5.6, 3.4)
    ax = fig.add_subplot()
    for label, t, v in curves:
        ax.plot(t, v, marker="o", ms=3, lw=1.2, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if len(curves) <= 10:
        ax.legend(fontsize=6)
    return png_uri(fig)
