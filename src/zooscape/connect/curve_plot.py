"""Plots for curves: metric along the curve (with the straight line for comparison) and plane contours.

Functions return matplotlib ``Figure`` objects (no global pyplot state); :func:`save_png` writes one atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from zooscape._io import save_figure
from zooscape.connect.curve_eval import CurveEvaluation
from zooscape.connect.path import LinearPath
from zooscape.connect.plane import PlaneGrid

__all__ = ["plot_curve", "plot_plane", "save_png"]


def save_png(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write a figure as PNG atomically (temp file in the same directory + ``os.replace``).

    Args:
        fig: the figure.
        path: target file (parent directories are created).
        dpi: resolution.

    Returns:
        The path written.
    """
    return save_figure(fig, path, dpi=dpi, format="png")


def plot_curve(
    evaluation: CurveEvaluation,
    metric: str = "error",
    linear: CurveEvaluation | LinearPath | None = None,
    title: str | None = None,
) -> Figure:
    """A metric along the curve, one line per split, optionally with the straight line dashed.

    Args:
        evaluation: result of :func:`~zooscape.connect.curve_eval.evaluate_curve`.
        metric: ``"loss"``, ``"nll"`` or ``"error"`` (errors drawn in percent).
        linear: the straight line between the same endpoints (a ``num_bends=0`` evaluation or a
            :class:`LinearPath`).
        title: figure title.

    Returns:
        A matplotlib ``Figure``.
    """
    scale = 100.0 if metric == "error" else 1.0
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    for i, split in enumerate(evaluation.splits):
        color = f"C{i}"
        values = evaluation.values(metric, split)
        ax.plot(evaluation.ts.tolist(), (values * scale).tolist(), color=color,
                label=f"{evaluation.kind} {split}")
        if linear is not None:
            if isinstance(linear, LinearPath):
                table = {"loss": linear.loss, "nll": linear.loss, "error": linear.error}[metric]
                xs = linear.alphas
            else:
                table = getattr(linear, metric)
                xs = linear.ts
            if split in table:
                ax.plot(xs.tolist(), (table[split] * scale).tolist(), color=color, linestyle="--",
                        label=f"line {split}")
    ax.set_xlabel("t")
    ax.set_ylabel(f"{metric}" + (" (%)" if metric == "error" else ""))
    ax.set_title(title or f"{evaluation.kind} curve, {evaluation.num_bends} bend(s), length "
                 f"{evaluation.length:.3g}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_plane(
    grid: PlaneGrid,
    metric: str = "loss",
    split: str = "train",
    levels: int = 20,
    title: str | None = None,
) -> Figure:
    """Contours of a metric over the plane, with the curve and its nodes drawn on top.

    Loss-like metrics are drawn on log-spaced levels (clipped at their 95th percentile so that the far corners
    do not flatten the interesting region); errors on linear levels, in percent.

    Args:
        grid: result of :func:`~zooscape.connect.plane.evaluate_plane`.
        metric: ``"loss"``, ``"nll"`` or ``"error"``.
        split: an evaluated split.
        levels: number of contour levels.
        title: figure title.

    Returns:
        A matplotlib ``Figure``.

    References:
        Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity, and Fast
        Ensembling of DNNs" (``plane_plot.py``).
    """
    z = grid.values(metric, split).numpy().T  # [Gy, Gx] for contourf
    xs, ys = grid.xs.numpy(), grid.ys.numpy()
    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    if metric == "error":
        z = z * 100.0
        lv = np.linspace(float(np.nanmin(z)), float(np.nanmax(z)) + 1e-9, levels)
        label = f"{split} error (%)"
    else:
        lo = max(float(np.nanmin(z)), 1e-8)
        hi = max(float(np.nanpercentile(z, 95)), lo * 1.0001)
        z = np.clip(z, lo, hi)
        lv = np.geomspace(lo, hi, levels)
        label = f"{split} {metric}"
    cs = ax.contourf(xs, ys, z, levels=lv, cmap="viridis_r", extend="neither")
    ax.contour(xs, ys, z, levels=lv, colors="k", linewidths=0.3, alpha=0.5)
    fig.colorbar(cs, ax=ax, label=label, format="%.3g")
    cxy = grid.curve_xy.numpy()
    ax.plot(cxy[:, 0], cxy[:, 1], color="white", linewidth=2.0, label="curve")
    ax.plot([0.0, grid.plane.dx], [0.0, 0.0], color="white", linestyle="--", linewidth=1.0, label="line")
    nxy = grid.node_xy.numpy()
    ax.scatter(nxy[1:-1, 0], nxy[1:-1, 1], marker="D", color="orange", zorder=3, label="bends")
    ax.scatter(nxy[[0, -1], 0], nxy[[0, -1], 1], marker="o", color="red", zorder=3, label="endpoints")
    ax.set_xlabel("x (start -> end)")
    ax.set_ylabel("y (towards the bend; axes not to scale)")
    ax.set_title(title or f"{split} {metric} in the plane of the curve")
    ax.legend(fontsize="x-small", loc="best", framealpha=0.6)
    fig.tight_layout()
    return fig
