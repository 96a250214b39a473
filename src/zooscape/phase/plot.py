"""Figures of a phase study: every metric as a heatmap on the temperature-load plane, the phase map and an overview.

Cells are drawn at their real grid values (``pcolormesh`` with edges halfway between neighbouring values, in log
space on log axes), annotated with the mean over seeds and its spread (``+- std``). Metrics whose name ends in
``_delta`` (the averaging and soup deltas) use a diverging colour map centred at 0. Drawn with matplotlib's Agg
canvas (no pyplot, no global state); files are written atomically.

References:
    Schürholt et al. (2024), "Phase Transitions in Model Zoos" (overview figure); Yang et al. (2021),
    "Taxonomizing local versus global structure in neural network loss landscapes" (phase maps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zooscape.connect.curve_plot import save_png
from zooscape.phase.classify import PHASES, UNCERTAIN, UNCLASSIFIED
from zooscape.phase.table import metric_names

__all__ = ["OVERVIEW_METRICS", "PHASE_COLORS", "axis_edges", "overview_figure", "phase_map_figure",
           "metric_figure", "plot_phases"]

#: Colours of the phases in the phase map.
PHASE_COLORS: dict[str, str] = {"I": "#d62728", "II": "#ff7f0e", "III": "#9467bd", "IV-A": "#1f77b4",
                                "IV-B": "#2ca02c", UNCERTAIN: "#bbbbbb", UNCLASSIFIED: "#ffffff"}
#: Panels of the overview figure, in order (those present in the table are drawn), then the phase map.
OVERVIEW_METRICS: tuple[str, ...] = (
    "test_error", "train_loss", "hessian_log_top_eigenvalue", "hessian_log_trace", "cka", "curve_mc_error_test",
    "curve_mc_loss_train", "barrier_loss_train_linear", "distance", "epoch_avg_acc_test_delta",
    "seed_avg_naive_acc_test_delta", "seed_avg_aligned_acc_test_delta", "soup_greedy_acc_test_delta",
)


def _is_log(values: np.ndarray, log: bool | None) -> bool:
    if log is not None:
        return bool(log)
    return bool(len(values) > 1 and np.all(values > 0) and values.max() / values.min() >= 8)


def axis_edges(values: Sequence[float], log: bool) -> np.ndarray:
    """Cell edges around sorted grid values: midpoints between neighbours (geometric on a log axis).

    Args:
        values: K sorted distinct grid values (positive when ``log``).
        log: edges in log space.

    Returns:
        ``[K + 1]`` edges.
    """
    v = np.asarray(values, dtype=float)
    if log and np.any(v <= 0):
        raise ValueError(f"a log axis needs positive values, got {v.tolist()}")
    u = np.log(v) if log else v
    if len(u) == 1:
        half = math.log(2.0) if log else (abs(u[0]) * 0.5 or 0.5)
        edges = np.array([u[0] - half, u[0] + half])
    else:
        mid = (u[1:] + u[:-1]) / 2
        edges = np.concatenate([[u[0] - (mid[0] - u[0])], mid, [u[-1] + (u[-1] - mid[-1])]])
    return np.exp(edges) if log else edges


def _grid(table: pd.DataFrame, temperature: str, load: str, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = np.array(sorted(table[temperature].dropna().unique()), dtype=float)
    ys = np.array(sorted(table[load].dropna().unique()), dtype=float)
    kind = float if pd.api.types.is_numeric_dtype(table[column]) else object
    values = np.full((len(ys), len(xs)), np.nan, dtype=kind)
    for _, row in table.iterrows():
        i = int(np.searchsorted(ys, float(row[load])))
        j = int(np.searchsorted(xs, float(row[temperature])))
        values[i, j] = row[column]
    return xs, ys, values


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return ""
    return f"{v:.2g}" if abs(v) < 0.01 and v != 0 else f"{v:.3g}"


def _axes(ax: Any, table: pd.DataFrame, temperature: str, load: str, log: tuple[bool | None, bool | None]
          ) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    xs = np.array(sorted(table[temperature].dropna().unique()), dtype=float)
    ys = np.array(sorted(table[load].dropna().unique()), dtype=float)
    xlog, ylog = _is_log(xs, log[0]), _is_log(ys, log[1])
    if xlog:
        ax.set_xscale("log")
    if ylog:
        ax.set_yscale("log")
    ax.set_xticks(xs, [f"{v:g}" for v in xs], rotation=45 if len(xs) > 6 else 0)
    ax.set_yticks(ys, [f"{v:g}" for v in ys])
    ax.minorticks_off()
    ax.set_xlabel(f"{temperature} (temperature)")
    ax.set_ylabel(f"{load} (load)")
    return xs, ys, xlog, ylog


def _draw_metric(fig: Any, ax: Any, table: pd.DataFrame, metric: str, temperature: str, load: str,
                 log: tuple[bool | None, bool | None], fontsize: float) -> None:
    xs, ys, xlog, ylog = _axes(ax, table, temperature, load, log)
    _, _, mean = _grid(table, temperature, load, f"{metric}_mean")
    std_col = f"{metric}_std"
    std = _grid(table, temperature, load, std_col)[2] if std_col in table.columns else np.full_like(mean, np.nan)
    mean, std = mean.astype(float), std.astype(float)
    finite = mean[np.isfinite(mean)]
    kwargs: dict[str, Any] = {"cmap": "viridis"}
    if metric.endswith("_delta"):
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        kwargs = {"cmap": "RdBu", "vmin": -(bound or 1.0), "vmax": bound or 1.0}
    mesh = ax.pcolormesh(axis_edges(xs, xlog), axis_edges(ys, ylog), np.ma.masked_invalid(mean), **kwargs)
    fig.colorbar(mesh, ax=ax)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            if np.isfinite(mean[i, j]):
                text = _fmt(mean[i, j]) + (f"\n±{_fmt(std[i, j])}" if np.isfinite(std[i, j]) else "")
                ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color="black",
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "alpha": 0.55, "lw": 0})
    ax.set_title(metric, fontsize=fontsize + 3)


def _draw_phases(ax: Any, table: pd.DataFrame, temperature: str, load: str, log: tuple[bool | None, bool | None],
                 fontsize: float) -> None:
    from matplotlib.patches import Patch, Rectangle

    xs, ys, xlog, ylog = _axes(ax, table, temperature, load, log)
    xe, ye = axis_edges(xs, xlog), axis_edges(ys, ylog)
    _, _, phase = _grid(table, temperature, load, "phase")
    cand = _grid(table, temperature, load, "phase_candidates")[2] if "phase_candidates" in table.columns else None
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            p = phase[i, j]
            if not isinstance(p, str):
                continue
            ax.add_patch(Rectangle((xe[j], ye[i]), xe[j + 1] - xe[j], ye[i + 1] - ye[i], facecolor=PHASE_COLORS[p],
                                   edgecolor="black", lw=0.5, hatch="//" if p == UNCERTAIN else None))
            label = p
            if p == UNCERTAIN and cand is not None and isinstance(cand[i, j], str):
                label = cand[i, j].replace("|", "/") + "?"
            ax.text(x, y, label, ha="center", va="center", fontsize=fontsize + 1)
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(ye[0], ye[-1])
    handles = [Patch(facecolor=PHASE_COLORS[p], edgecolor="black", label=p, hatch="//" if p == UNCERTAIN else None)
               for p in (*PHASES, UNCERTAIN, UNCLASSIFIED)]
    ax.legend(handles=handles, fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("phase (Yang et al. 2021)", fontsize=fontsize + 3)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _size(table: pd.DataFrame, temperature: str, load: str) -> tuple[float, float]:
    nx, ny = table[temperature].nunique(), table[load].nunique()
    return max(4.8, 2.0 + 0.8 * nx), max(3.6, 1.4 + 0.6 * ny)


def _keys(table: pd.DataFrame, temperature: str | None, load: str | None) -> tuple[str, str]:
    temperature = temperature or table.attrs.get("temperature_key")
    load = load or table.attrs.get("load_key")
    for role, key in (("temperature", temperature), ("load", load)):
        if not key or key not in table.columns:
            raise KeyError(f"the {role} axis column {key!r} is not in the table (pass {role}=...; columns: "
                           f"{sorted(table.columns)})")
    return str(temperature), str(load)


def metric_figure(table: pd.DataFrame, metric: str, temperature: str | None = None, load: str | None = None,
                  log: tuple[bool | None, bool | None] = (None, None)) -> Any:
    """Heatmap of one metric (mean over seeds, annotated ``mean +- std``) on the temperature-load plane.

    Args:
        table: cell table with ``<metric>_mean`` (and ``_std``) and the two axis columns.
        metric: metric name.
        temperature: column of the temperature axis (x; default ``table.attrs["temperature_key"]``).
        load: column of the load axis (y; default ``table.attrs["load_key"]``).
        log: log scale of (x, y); None = log when all values are positive and span a factor >= 8.

    Returns:
        A matplotlib ``Figure``.
    """
    temperature, load = _keys(table, temperature, load)
    if f"{metric}_mean" not in table.columns:
        raise KeyError(f"metric {metric!r} is not in the table (metrics: {metric_names(table)})")
    fig = _figure(*_size(table, temperature, load))
    _draw_metric(fig, fig.add_subplot(), table, metric, temperature, load, log, fontsize=7)
    return fig


def phase_map_figure(table: pd.DataFrame, temperature: str | None = None, load: str | None = None,
                     log: tuple[bool | None, bool | None] = (None, None)) -> Any:
    """The phase map: each cell coloured by its phase; uncertain cells hatched and labelled with their candidates.

    Args:
        table: classified cell table (:func:`zooscape.phase.classify`).
        temperature: column of the temperature axis.
        load: column of the load axis.
        log: log scale of (x, y) (see :func:`metric_figure`).

    Returns:
        A matplotlib ``Figure``.
    """
    temperature, load = _keys(table, temperature, load)
    if "phase" not in table.columns:
        raise KeyError("the table has no 'phase' column: classify it first (zooscape.phase.classify)")
    w, h = _size(table, temperature, load)
    fig = _figure(w + 1.2, h)
    _draw_phases(fig.add_subplot(), table, temperature, load, log, fontsize=7)
    return fig


def overview_figure(table: pd.DataFrame, metrics: Sequence[str] | None = None, temperature: str | None = None,
                    load: str | None = None, log: tuple[bool | None, bool | None] = (None, None),
                    title: str = "") -> Any:
    """One figure with a panel per metric plus the phase map (like the overview of the phase-transition zoos).

    Args:
        table: (classified) cell table.
        metrics: panels (default: those of :data:`OVERVIEW_METRICS` present in the table).
        temperature: column of the temperature axis.
        load: column of the load axis.
        log: log scale of (x, y).
        title: figure title.

    Returns:
        A matplotlib ``Figure``.
    """
    temperature, load = _keys(table, temperature, load)
    present = set(metric_names(table))
    metrics = [m for m in (metrics or OVERVIEW_METRICS) if m in present]
    panels = len(metrics) + (1 if "phase" in table.columns else 0)
    if panels == 0:
        raise ValueError(f"nothing to draw: none of the metrics is in the table (metrics: {sorted(present)})")
    cols = min(4, panels)
    rows = math.ceil(panels / cols)
    w, h = _size(table, temperature, load)
    fig = _figure(cols * w * 0.85, rows * h * 0.85)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        _draw_metric(fig, ax, table, metric, temperature, load, log, fontsize=5)
    if "phase" in table.columns:
        _draw_phases(axes[len(metrics)], table, temperature, load, log, fontsize=5)
    for ax in axes[panels:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def plot_phases(table: pd.DataFrame, out_dir: str | Path, metrics: Sequence[str] | None = None,
                temperature: str | None = None, load: str | None = None,
                log: tuple[bool | None, bool | None] = (None, None), title: str = "") -> dict[str, Path]:
    """Write one PNG per metric, the phase map and the overview figure (atomically) to ``out_dir``.

    Args:
        table: (classified) cell table from :func:`zooscape.phase.cell_table` / :func:`zooscape.phase.classify`.
        out_dir: output directory (created).
        metrics: metrics to draw (default: every metric of the table).
        temperature: column of the temperature axis (default ``table.attrs["temperature_key"]``).
        load: column of the load axis (default ``table.attrs["load_key"]``).
        log: log scale of (x, y); None = automatic (see :func:`metric_figure`).
        title: title of the overview figure.

    Returns:
        dict name -> written path: each metric (``<metric>.png``), ``"phase"`` (``phase.png``) and
        ``"overview"`` (``overview.png``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(metrics) if metrics is not None else metric_names(table)
    written: dict[str, Path] = {}
    for metric in names:
        written[metric] = save_png(metric_figure(table, metric, temperature, load, log), out / f"{metric}.png")
    if "phase" in table.columns:
        written["phase"] = save_png(phase_map_figure(table, temperature, load, log), out / "phase.png")
    written["overview"] = save_png(overview_figure(table, None, temperature, load, log, title), out / "overview.png")
    return written
