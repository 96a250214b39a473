"""Per-cell tables of a phase study: long per-model / per-pair records -> one row per grid cell.

A *record* is one value of one metric for one model (``other_id`` empty), one seed pair (``other_id`` the second
model) or one cell (cell-level results such as the seed average; ``model_id`` its first model). Records of a
cell are aggregated over its seeds / seed pairs into ``<metric>_mean``, ``<metric>_std`` (sample standard
deviation, NaN for a single value) and ``<metric>_n`` columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["LOG_METRICS", "RECORD_COLUMNS", "add_log_metrics", "cell_table", "metric_names"]

#: Columns every record frame has (plus the cell-attribute columns passed as ``by``).
RECORD_COLUMNS: tuple[str, ...] = ("cell", "model_id", "other_id", "metric", "value")

#: Metrics whose log10 is added by :func:`add_log_metrics`: name -> (log name, name of its uncertainty): the
#: Hutchinson trace's standard error; the Lanczos residual ``||H v - theta v||``, which bounds the error of the
#: Ritz value ``theta`` of a symmetric operator.
LOG_METRICS: dict[str, tuple[str, str | None]] = {
    "hessian_top_eigenvalue": ("hessian_log_top_eigenvalue", "hessian_top_eigenvalue_residual"),
    "hessian_trace": ("hessian_log_trace", "hessian_trace_se"),
}


def add_log_metrics(records: pd.DataFrame, log_metrics: Mapping[str, tuple[str, str | None]] | None = None
                    ) -> pd.DataFrame:
    """Append log10-scaled copies of (Hessian) metrics, with their propagated standard error.

    For each record of a metric in ``log_metrics`` a record ``log_name`` with value ``log10(value)`` is added
    (NaN when ``value <= 0``: the Hutchinson trace of a non-convex point can be negative; the top eigenvalue is the
    largest-magnitude one and is logged as ``log10|value|``). When the metric has a standard-error record
    ``se_name`` for the same model, a record ``<log_name>_se = se / (value * ln 10)`` is added too (delta method).

    Args:
        records: long records (:data:`RECORD_COLUMNS` + cell attributes).
        log_metrics: name -> (log name, standard-error name or None); default :data:`LOG_METRICS`.

    Returns:
        A new frame with the added records.
    """
    log_metrics = LOG_METRICS if log_metrics is None else log_metrics
    extra = []
    key_cols = ["cell", "model_id", "other_id"]
    for name, (log_name, se_name) in log_metrics.items():
        rows = records[records["metric"] == name]
        if rows.empty:
            continue
        values = rows["value"].astype(float).to_numpy()
        if name == "hessian_top_eigenvalue":
            values = np.abs(values)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), np.nan)
        extra.append(rows.assign(metric=log_name, value=logs))
        if se_name is not None:
            se = records[records["metric"] == se_name][key_cols + ["value"]].rename(columns={"value": "_se"})
            merged = rows.merge(se, on=key_cols, how="inner")
            if not merged.empty:
                v = merged["value"].astype(float).to_numpy()
                if name == "hessian_top_eigenvalue":
                    v = np.abs(v)
                with np.errstate(divide="ignore", invalid="ignore"):
                    log_se = np.where(v > 0, merged["_se"].astype(float).to_numpy() / (v * math.log(10)), np.nan)
                extra.append(merged.drop(columns=["_se"]).assign(metric=f"{log_name}_se", value=log_se))
    if not extra:
        return records.copy()
    return pd.concat([records, *extra], ignore_index=True)


def metric_names(table: pd.DataFrame) -> list[str]:
    """Metric names of a cell table (the ``X`` of every ``X_mean`` column), in column order.

    Args:
        table: a frame from :func:`cell_table`.

    Returns:
        list of names.
    """
    return [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]


def cell_table(records: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Aggregate long records into one row per cell: mean, standard deviation and count of every metric.

    Args:
        records: frame with :data:`RECORD_COLUMNS` and the ``by`` columns (constant within a cell, e.g. the
            temperature and load grid values).
        by: cell-attribute columns to keep (one value per cell).

    Returns:
        Frame with ``cell``, the ``by`` columns, ``n_models`` (distinct model ids of single-model records) and
        ``<metric>_mean``, ``<metric>_std`` (over the cell's seeds / seed pairs; ``ddof = 1``, NaN for one
        value), ``<metric>_n`` per metric, sorted by ``by`` then ``cell``.

    Raises:
        KeyError: a required column is missing (the message names it).
        ValueError: a ``by`` column is not constant within a cell.
    """
    missing = [c for c in (*RECORD_COLUMNS, *by) if c not in records.columns]
    if missing:
        raise KeyError(f"cell_table: records lack column(s) {missing}; columns: {sorted(records.columns)}")
    by = list(by)
    if records.empty:
        return pd.DataFrame(columns=["cell", *by, "n_models"])
    attrs = records[["cell", *by]].drop_duplicates()
    if attrs["cell"].duplicated().any():
        bad = attrs[attrs["cell"].duplicated(keep=False)].head(4).to_dict("records")
        raise ValueError(f"cell_table: columns {by} are not constant within a cell: {bad}")
    values = records.assign(value=pd.to_numeric(records["value"], errors="coerce").astype(float))
    grouped = values.groupby(["cell", "metric"])["value"]
    stats = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1) if v.notna().sum() > 1 else math.nan,
                        n="count").reset_index()
    wide = stats.pivot(index="cell", columns="metric")
    order = list(dict.fromkeys(values["metric"]))
    columns = {}
    for metric in order:
        for stat in ("mean", "std", "n"):
            columns[f"{metric}_{stat}"] = wide[(stat, metric)]
    table = pd.DataFrame(columns, index=wide.index).reset_index()
    singles = values[values["other_id"].isna()]
    n_models = singles.groupby("cell")["model_id"].nunique().rename("n_models").reset_index()
    table = attrs.merge(n_models, on="cell", how="left").merge(table, on="cell", how="left")
    table["n_models"] = table["n_models"].fillna(0).astype(int)
    for metric in order:
        table[f"{metric}_n"] = table[f"{metric}_n"].fillna(0).astype(int)
    return table.sort_values([*by, "cell"]).reset_index(drop=True)
