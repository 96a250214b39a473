"""Summaries of a zoo table: final-epoch rows, per-grid-cell statistics (mean over seeds), heatmap matrices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["SEED_KEYS", "at_epoch", "cell_axes", "cell_summary", "heatmap_matrix"]

#: Grid axes that are replicates (averaged over), not grid cells.
SEED_KEYS = ("training.seed", "training.data_seed", "dataset.seed")


def at_epoch(table: pd.DataFrame, epoch: int | None = None) -> pd.DataFrame:
    """One row per model: the row at ``epoch``, or each model's last recorded epoch when ``epoch`` is None.

    Args:
        table: :meth:`zooscape.zoo.Zoo.table` (columns model_id, epoch, ...).
        epoch: the epoch, or None for the final one.

    Returns:
        DataFrame with one row per model that has that epoch.
    """
    if epoch is None:
        idx = table.groupby("model_id")["epoch"].idxmax()
        return table.loc[idx.values].reset_index(drop=True)
    return table[table["epoch"] == int(epoch)].reset_index(drop=True)


def cell_axes(grid_keys: Sequence[str]) -> list[str]:
    """Grid axes that define cells (every grid key except the seed keys).

    Args:
        grid_keys: dotted grid keys.

    Returns:
        list of keys, in the given order.
    """
    return [k for k in grid_keys if k not in SEED_KEYS]


def _hashable(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    df = df.copy()
    for k in keys:
        if df[k].map(lambda v: isinstance(v, list | dict)).any():
            df[k] = df[k].map(str)
    return df


def cell_summary(rows: pd.DataFrame, axes: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean and standard deviation of metrics per grid cell (over seeds and any axis not listed).

    Args:
        rows: one row per model (see :func:`at_epoch`).
        axes: columns defining the cells (may be empty: one cell).
        metrics: metric columns to summarise (missing ones are skipped).

    Returns:
        DataFrame with the axes, ``n`` (models in the cell) and ``<metric>_mean``, ``<metric>_std`` columns.
    """
    metrics = [m for m in metrics if m in rows.columns]
    axes = list(axes)
    for a in axes:
        if a not in rows.columns:
            raise KeyError(f"axis {a!r} is not a column of the zoo table")
    df = _hashable(rows, axes)
    if not axes:
        df = df.assign(_all=0)
        axes_ = ["_all"]
    else:
        axes_ = axes
    g = df.groupby(axes_, dropna=False, sort=True)
    out = g.size().rename("n").to_frame()
    for m in metrics:
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_std"] = g[m].std(ddof=1) if len(df) > 1 else np.nan
    out = out.reset_index()
    return out.drop(columns=["_all"]) if not axes else out


def heatmap_matrix(rows: pd.DataFrame, x: str, y: str, metric: str) -> tuple[list, list, np.ndarray, np.ndarray]:
    """Mean of a metric over every (y, x) cell (averaging seeds and all other axes).

    Args:
        rows: one row per model.
        x: column for the horizontal axis.
        y: column for the vertical axis.
        metric: metric column.

    Returns:
        (x values sorted, y values sorted, means ``[len(y), len(x)]`` (NaN for empty cells), counts of the same
        shape).

    Raises:
        KeyError: a column is missing (the message lists the available ones).
    """
    for key, what in ((x, "x"), (y, "y"), (metric, "metric")):
        if key not in rows.columns:
            raise KeyError(f"{what} column {key!r} not in the zoo table; available: {sorted(map(str, rows.columns))}")
    df = _hashable(rows, [x, y])
    xs = sorted(df[x].dropna().unique().tolist())
    ys = sorted(df[y].dropna().unique().tolist())
    means = np.full((len(ys), len(xs)), np.nan)
    counts = np.zeros((len(ys), len(xs)), dtype=int)
    grouped = df.groupby([y, x])[metric]
    for (yv, xv), vals in grouped:
        i, j = ys.index(yv), xs.index(xv)
        vals = vals.dropna()
        counts[i, j] = len(vals)
        if len(vals):
            means[i, j] = float(vals.mean())
    return xs, ys, means, counts
