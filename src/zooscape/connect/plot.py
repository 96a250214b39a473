"""Plots for mode-connectivity results (matplotlib ``Figure`` objects; no global pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from zooscape.connect.path import LinearPath
from zooscape.connect.spawn import barrier_table

__all__ = ["plot_instability", "plot_path"]


def plot_instability(
    records: Sequence[dict[str, Any]],
    metric: str = "error",
    split: str = "test",
    definition: str = "linear",
    title: str | None = None,
) -> Figure:
    """Barrier against spawn epoch ``k1``, one line per comparison epoch ``k2``.

    Args:
        records: instability records (``k1``, ``k2``, ``barrier_<metric>_<split>_<definition>``).
        metric: ``"loss"`` or ``"error"`` (error barriers are drawn in percentage points).
        split: data split.
        definition: barrier definition (``"linear"``, ``"mean"``, ``"midpoint"``).
        title: figure title (default: names the metric, split and definition).

    Returns:
        A matplotlib ``Figure``; save it with ``fig.savefig(path)``.

    References:
        Frankle, Dziugaite, Roy, Carbin (2020), "Linear Mode Connectivity and the Lottery Ticket Hypothesis".
    """
    table = barrier_table(records, metric, split, definition)
    scale = 100.0 if metric == "error" else 1.0
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for k2, row in table.items():
        ax.plot(list(row), [v * scale for v in row.values()], marker="o", label=f"k2 = {k2}")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("spawn epoch k1")
    ax.set_ylabel(f"{split} {metric} barrier" + (" (pp)" if metric == "error" else ""))
    ax.set_title(title or f"Instability: {definition} barrier of {split} {metric}")
    if len(table) <= 12:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_path(path: LinearPath, metric: str = "loss", title: str | None = None) -> Figure:
    """Loss or error along a linear path, one line per split.

    Args:
        path: a :class:`LinearPath`.
        metric: ``"loss"`` or ``"error"``.
        title: figure title.

    Returns:
        A matplotlib ``Figure``.
    """
    curves = path.loss if metric == "loss" else path.error
    if not curves:
        raise ValueError(f"path has no {metric!r} curves (task {path.task!r})")
    fig = Figure(figsize=(5.0, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    for split, values in curves.items():
        ax.plot(path.alphas.tolist(), values.tolist(), marker=".", label=split)
    ax.set_xlabel("alpha")
    ax.set_ylabel(metric)
    ax.set_title(title or f"linear path (distance {path.distance:.3g}, BN {path.bn_mode})")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
