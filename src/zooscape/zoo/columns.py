"""Stored analysis results as table columns: the ``analyses`` rows of a catalog joined to ``Zoo.table()``.

The ``analyses`` table is long format (``model_id``, ``other_id``, ``epoch``, ``metric``, ``value``, ``params``).
Two wide views are built from it:

- **per-model columns** (:func:`model_analysis_columns`): one row per (model, epoch), one column per metric.
  Single-model results (``other_id`` NULL: ``hessian_top_eigenvalue``, ``hessian_trace``, ``fisher_trace``,
  ``spectra_alpha``, ...) are taken as stored; pairwise results (``other_id`` set: ``cka``, ``distance``,
  ``barrier_loss_test_linear``, ``curve_mc_error_test``, ...) become the **mean over every pair the model belongs
  to** (on either side) at that epoch. A result stored without an epoch is attached to the model's last epoch
  with metrics. When the same (model, epoch, metric) was stored with several settings (``params``), the most
  recent row wins. :meth:`zooscape.zoo.Zoo.table` merges these columns into its rows.
- **the pair table** (:func:`pair_table`): one row per (model_id, other_id, epoch), one column per pairwise
  metric: barrier matrices and CKA matrices come from here (:meth:`zooscape.zoo.Zoo.pairs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported by the functions that build DataFrames (check_metric_names needs no pandas)
    import pandas as pd

__all__ = ["TRAINING_METRICS", "check_metric_names", "model_analysis_columns", "pair_table", "read_analyses"]

#: Metric names the trainer records per epoch (``metrics`` table).
TRAINING_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "epoch_time_s")


def read_analyses(catalog: Any) -> pd.DataFrame:
    """The ``analyses`` rows of a catalog, most recent last.

    Args:
        catalog: a :class:`zooscape.zoo.catalog.Catalog`.

    Returns:
        DataFrame with columns id, model_id, other_id, epoch (float; NaN where none), metric, value.
    """
    import pandas as pd

    rows = catalog.query("SELECT id, model_id, other_id, epoch, metric, value FROM analyses ORDER BY id")
    df = pd.DataFrame(rows, columns=["id", "model_id", "other_id", "epoch", "metric", "value"])
    return df.astype({"epoch": "float64", "value": "float64"})


def _last_epochs(catalog: Any) -> dict[str, int]:
    return dict(catalog.query("SELECT model_id, MAX(epoch) FROM metrics GROUP BY model_id"))


def _fill_epochs(df: pd.DataFrame, catalog: Any) -> pd.DataFrame:
    """Rows stored without an epoch get the model's last epoch with metrics (dropped if it has none)."""
    missing = df["epoch"].isna()
    if missing.any():
        last = _last_epochs(catalog)
        df = df.copy()
        df.loc[missing, "epoch"] = df.loc[missing, "model_id"].map(last).astype("float64")
        df = df[df["epoch"].notna()]
    return df.astype({"epoch": "int64"})


def model_analysis_columns(catalog: Any, analyses: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-model analysis columns: one row per (model_id, epoch) with a stored result, one column per metric.

    Args:
        catalog: a :class:`zooscape.zoo.catalog.Catalog`.
        analyses: :func:`read_analyses` of it (read if None).

    Returns:
        DataFrame with columns model_id, epoch and one float column per metric (single-model metrics as stored,
        pairwise metrics as the mean over the model's pairs); empty (model_id, epoch only) without analyses.
    """
    import pandas as pd

    df = read_analyses(catalog) if analyses is None else analyses
    if df.empty:
        return pd.DataFrame({"model_id": pd.Series(dtype=object), "epoch": pd.Series(dtype="int64")})
    df = _fill_epochs(df, catalog)
    single = df[df["other_id"].isna()]
    single = single.drop_duplicates(["model_id", "epoch", "metric"], keep="last")
    pairs = df[df["other_id"].notna()].drop_duplicates(["model_id", "other_id", "epoch", "metric"], keep="last")
    both_sides = pd.concat([pairs[["model_id", "epoch", "metric", "value"]],
                            pairs[["other_id", "epoch", "metric", "value"]].rename(columns={"other_id": "model_id"})])
    pair_means = both_sides.groupby(["model_id", "epoch", "metric"], sort=False)["value"].mean().reset_index()
    long = pd.concat([single[["model_id", "epoch", "metric", "value"]], pair_means], ignore_index=True)
    # a name stored both per model and per pair: the single-model value wins
    long = long.drop_duplicates(["model_id", "epoch", "metric"], keep="first")
    wide = long.set_index(["model_id", "epoch", "metric"])["value"].unstack("metric")
    wide.columns.name = None
    return wide.reset_index()


def pair_table(catalog: Any, analyses: pd.DataFrame | None = None) -> pd.DataFrame:
    """Pairwise results, one row per (model_id, other_id, epoch), one column per metric.

    Args:
        catalog: a :class:`zooscape.zoo.catalog.Catalog`.
        analyses: :func:`read_analyses` of it (read if None).

    Returns:
        DataFrame with columns model_id, other_id, epoch and one float column per pairwise metric.
    """
    import pandas as pd

    df = read_analyses(catalog) if analyses is None else analyses
    df = df[df["other_id"].notna()]
    if df.empty:
        return pd.DataFrame(columns=["model_id", "other_id", "epoch"])
    df = _fill_epochs(df, catalog).drop_duplicates(["model_id", "other_id", "epoch", "metric"], keep="last")
    wide = df.set_index(["model_id", "other_id", "epoch", "metric"])["value"].unstack("metric")
    wide.columns.name = None
    return wide.reset_index()


def check_metric_names(names: Iterable[str], available: Sequence[str], what: str = "metric") -> list[str]:
    """Check that every name is a metric column; raise naming the valid ones otherwise.

    Args:
        names: requested names.
        available: valid names (e.g. :meth:`zooscape.zoo.Zoo.metric_names`).
        what: word used in the message.

    Returns:
        the names, as a list.

    Raises:
        KeyError: some name is unknown (the message lists the valid names).
    """
    names = list(names)
    unknown = [n for n in names if n not in set(available)]
    if unknown:
        valid = ", ".join(sorted(available)) or "none (no metrics recorded yet)"
        plural = "s" if len(unknown) > 1 else ""
        raise KeyError(f"unknown {what}{plural} {', '.join(map(repr, unknown))}; valid names: {valid}")
    return names


def numeric_metric_columns(table: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """Float columns of a zoo table that are metrics (not config/derived columns).

    Args:
        table: ``Zoo.table()``.
        exclude: further columns to leave out.

    Returns:
        column names.
    """
    import pandas as pd

    skip = {"model_id", "epoch", "status", "reason", "group_id", "n_params", "temperature", "load", "width",
            "train_fraction", "n_train", *exclude}
    return [c for c in table.columns
            if c not in skip and "." not in str(c) and pd.api.types.is_numeric_dtype(table[c].dtype)
            and not pd.api.types.is_bool_dtype(table[c].dtype)]
