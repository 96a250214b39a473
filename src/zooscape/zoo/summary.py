"""Summaries of a zoo table: final-epoch rows, per-grid-cell statistics (mean over seeds), heatmap matrices."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy and pandas are imported by the functions on DataFrames; the record functions need neither
    import numpy as np
    import pandas as pd

__all__ = ["SEED_KEYS", "at_epoch", "cell_axes", "cell_records", "cell_summary", "format_table", "heatmap_matrix",
           "records_at_epoch"]

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
    import numpy as np

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
    import numpy as np

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


# ------------------------------------------------------------------------------------------ without pandas
# ``zooscape zoo info`` answers from the catalog with these (no pandas, no torch: well under a second); they give
# the numbers of ``cell_summary(at_epoch(zoo.table(), epoch), axes, metrics)`` (tests/zoo/test_zoo_summary.py).


def records_at_epoch(zoo: Any, epoch: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """:func:`at_epoch` of ``zoo.table(analyses=False)`` as plain dicts, read from the catalog without pandas.

    Args:
        zoo: an open :class:`zooscape.zoo.Zoo`.
        epoch: the epoch, or None for each model's last epoch with metrics.

    Returns:
        (records, metric names): one dict per model with metrics at that epoch (its :meth:`Zoo.config_records` row,
        ``epoch`` and one float per metric recorded then; NaN for a NULL value), sorted by model_id; and every
        metric name of the zoo's ``metrics`` table (the metric columns of ``zoo.table()``).
    """
    sql = "SELECT m.model_id, m.epoch, m.name, m.value FROM metrics m"
    if epoch is None:
        sql += (" JOIN (SELECT model_id, MAX(epoch) AS last FROM metrics GROUP BY model_id) l"
                " ON m.model_id = l.model_id AND m.epoch = l.last")
        args: tuple[Any, ...] = ()
    else:
        sql, args = sql + " WHERE m.epoch = ?", (int(epoch),)
    values: dict[str, dict[str, Any]] = {}
    for mid, ep, name, value in zoo.catalog.query(sql, args):
        values.setdefault(mid, {"epoch": int(ep)})[name] = math.nan if value is None else float(value)
    names = sorted(r[0] for r in zoo.catalog.query("SELECT DISTINCT name FROM metrics"))
    records = [{**rec, **values[rec["model_id"]]} for rec in zoo.config_records() if rec["model_id"] in values]
    return records, names


def _sort_key(value: Any) -> tuple[int, Any]:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return (1, 0) if missing else (0, value)


def cell_records(records: Sequence[Mapping[str, Any]], axes: Sequence[str], metrics: Sequence[str],
                 columns: Sequence[str]) -> tuple[list[str], list[list[Any]]]:
    """:func:`cell_summary` on plain dicts: mean and standard deviation (ddof 1) of metrics per grid cell.

    Args:
        records: one dict per model (:func:`records_at_epoch`); a missing or NaN metric is skipped, as pandas does.
        axes: keys defining the cells (may be empty: one cell).
        metrics: metric names to summarise (those not in ``columns`` are skipped).
        columns: the names a record may hold (the table's columns).

    Returns:
        (header, rows): the axes, ``n`` and ``<metric>_mean``, ``<metric>_std``; one row per cell, sorted by the axes.

    Raises:
        KeyError: an axis is not a column.
    """
    known = set(columns)
    for a in axes:
        if a not in known:
            raise KeyError(f"axis {a!r} is not a column of the zoo table")
    metrics = [m for m in metrics if m in known]
    cells: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for rec in records:
        key = tuple(str(v) if isinstance(v, list | dict) else v for v in (rec.get(a) for a in axes))
        cells.setdefault(key, []).append(rec)
    try:
        order = sorted(cells, key=lambda k: tuple(_sort_key(v) for v in k))
    except TypeError:  # mixed types on one axis
        order = sorted(cells, key=lambda k: tuple(str(v) for v in k))
    header = [*axes, "n"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    rows = []
    for key in order:
        members = cells[key]
        row: list[Any] = [*key, len(members)]
        for m in metrics:
            vals = [float(v) for v in (r.get(m) for r in members) if v is not None and not math.isnan(v)]
            row.append(sum(vals) / len(vals) if vals else math.nan)
            row.append(statistics.stdev(vals) if len(vals) > 1 and len(records) > 1 else math.nan)
        rows.append(row)
    return header, rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], float_format: str = ".4g") -> str:
    """Right-aligned text table (floats with ``float_format``, NaN as ``NaN``), as ``DataFrame.to_string``.

    Args:
        header: column names.
        rows: rows of values.
        float_format: format spec of floats.

    Returns:
        str, one line per row after the header line.
    """
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "NaN" if math.isnan(v) else format(v, float_format)
        return str(v)

    text = [[str(h) for h in header]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(header))]
    return "\n".join(" " + "  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in text)
