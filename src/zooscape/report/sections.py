"""The sections of the zoo report: what each reads from the catalog, and its figures and tables.

Each ``_<section>(data)`` returns a :class:`Section` or None when the zoo has no data for it; everything is
aggregated per grid cell (the studies' cells: settings without the seeds of training) or per epoch before drawing.
:mod:`zooscape.report.build` assembles and renders them.

References:
    Schürholt et al. (2022), "Model Zoos: A Dataset of Diverse Populations of Neural Network Models" (boxplots of
    accuracy per cell and per epoch); Yang et al. (2023), "Taxonomizing local versus global structure in neural
    network loss landscapes" (temperature-load maps).
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zooscape.report import figures

__all__ = ["SECTION_IDS", "Section", "Table", "ZooData", "all_sections"]

#: Most grid cells drawn in one per-cell figure; the tables still list every cell.
MAX_CELLS_DRAWN = 40
#: Most cells whose training curves are drawn.
MAX_CURVE_CELLS = 8
#: Most rows of any table (the rest is summarised in a note).
MAX_TABLE_ROWS = 500
#: Most barrier matrices drawn.
MAX_MATRICES = 4
#: Most models of a cell in one barrier matrix (the first ones by id).
MAX_MATRIX_MODELS = 24
#: Most paths drawn in the path plot.
MAX_PATHS = 8
#: Every section id, in page order.
SECTION_IDS = ("overview", "spec", "counts", "final", "epochs", "curves", "phase", "lmc", "curve", "landscape",
               "predict", "sparsity", "missing")

LANDSCAPE_PREFIXES = ("hessian_", "fisher_", "spectra_", "cka")
PRUNE = '%"experiment": "prune"%'  # SQL LIKE pattern of the pruning rows' params


@dataclass
class Table:
    """A table of the page (rendered sortable and filterable).

    Args:
        columns: header.
        rows: cells, already formatted as text.
        note: shown under the table (e.g. how many rows were left out).
    """

    columns: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Section:
    """One section of the report.

    Args:
        id: HTML id (one of :data:`SECTION_IDS`).
        title: heading.
        text: paragraphs (plain text, escaped by the template).
        figures: (caption, PNG data URI) pairs.
        tables: (caption, Table) pairs.
    """

    id: str
    title: str
    text: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)
    tables: list[tuple[str, Table]] = field(default_factory=list)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float | np.floating):
        return "" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, tuple | list):
        return json.dumps(list(v))
    return str(v)


def _frame_table(df: pd.DataFrame, note: str = "") -> Table:
    rows = df.head(MAX_TABLE_ROWS)
    if len(df) > MAX_TABLE_ROWS:
        note = (note + " " if note else "") + f"first {MAX_TABLE_ROWS} of {len(df)} rows shown"
    return Table([str(c) for c in df.columns], [[_fmt(v) for v in r] for r in rows.itertuples(index=False)], note)


class ZooData:
    """What the report reads from a zoo, loaded once with aggregated queries."""

    def __init__(self, zoo: Any, progress: Callable[[str], None]) -> None:
        from zooscape.studies.cells import SEED_KEYS

        self.zoo = zoo
        self.spec = None
        self.spec_error = ""
        try:
            self.spec = zoo.spec
        except Exception as exc:  # a zoo whose spec.toml is unreadable still gets a report
            self.spec_error = str(exc)
        progress("reading configs")
        self.configs = zoo.configs()
        grid = list(self.spec.grid) if self.spec is not None else []
        seeds = {f"{section}.{key}" for section, key in SEED_KEYS}  # the studies' grid cells
        self.axes = [a for a in grid if a not in seeds and a in self.configs.columns]
        if self.configs.empty:
            self.cells = pd.Series(dtype=object)
        elif self.axes:
            parts = [self.configs[a].map(_fmt) for a in self.axes]
            labels = parts[0].str.cat(parts[1:], sep=", ") if len(parts) > 1 else parts[0]
            self.cells = pd.Series(labels.values, index=self.configs["model_id"].values)
        else:
            self.cells = pd.Series("all models", index=self.configs["model_id"].values)
        if "kind" in self.configs.columns and not self.configs.empty:  # twins, merges: apart from grid members
            kind = pd.Series(self.configs["kind"].fillna("model").values, index=self.cells.index)
            self.cells = self.cells.where(kind == "model", kind + ": " + self.cells)
        progress("reading metrics")
        rows = zoo.catalog.query("SELECT model_id, epoch, name, value FROM metrics")
        long = pd.DataFrame(rows, columns=["model_id", "epoch", "name", "value"]).astype({"value": "float64"})
        if long.empty:
            self.wide = pd.DataFrame(columns=["model_id", "epoch"])
        else:
            self.wide = long.set_index(["model_id", "epoch", "name"])["value"].unstack("name").reset_index()
            self.wide.columns.name = None
        self.wide["cell"] = self.wide["model_id"].map(self.cells)
        self.final = (self.wide.sort_values("epoch").groupby("model_id", sort=False).tail(1)
                      if not self.wide.empty else self.wide)
        progress("reading analyses")
        from zooscape.zoo.columns import read_analyses

        self.analyses = read_analyses(zoo.catalog)
        #: analyses rows of one-shot pruning (zooscape sparsify prune)
        self.prune_ids = {r[0] for r in zoo.catalog.query(f"SELECT id FROM analyses WHERE params LIKE '{PRUNE}'")}
        self.cell_order = sorted(self.cells.unique().tolist()) if len(self.cells) else []

    def metric(self, *names: str) -> str | None:
        """The first of ``names`` that is a recorded metric."""
        return next((n for n in names if n in self.wide.columns and self.wide[n].notna().any()), None)


def _overview(d: ZooData) -> Section:
    from zooscape import __version__

    spec = d.spec
    s = Section("overview", f"Zoo {spec.name!r}" if spec is not None else f"Zoo at {d.zoo.path}")
    if spec is not None and spec.description:
        s.text.append(spec.description)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    s.text.append(f"Directory {d.zoo.path}; report generated {now} by zooscape {__version__}.")
    return s


def _spec_section(d: ZooData) -> Section:
    s = Section("spec", "Spec and grid")
    if d.spec is None:
        s.text.append(f"The spec could not be read: {d.spec_error}")
        return s
    doc = d.spec.to_dict()
    rows = [[sec, k, _fmt(v)] for sec in ("dataset", "model", "training", "checkpoints", "population")
            for k, v in doc[sec].items()]
    s.tables.append(("fixed settings", Table(["section", "key", "value"], rows)))
    grid = [[k, str(len(v)), ", ".join(_fmt(x) for x in v)] for k, v in d.spec.grid.items()]
    n = int(np.prod([len(v) for v in d.spec.grid.values()])) if d.spec.grid else 1
    s.text.append(f"The grid has {len(grid)} axes and {n} grid points; cells are the grid points without the seed "
                  f"axes ({', '.join(d.axes) or 'one cell'}).")
    s.tables.append(("grid", Table(["key", "values", "list"], grid)))
    return s


def _counts(d: ZooData) -> Section:
    s = Section("counts", "Counts")
    counts = d.zoo.status_counts()
    n = sum(counts.values())
    epochs = int(d.wide["epoch"].max()) if not d.wide.empty else 0
    model_epochs = int(d.wide[d.wide["epoch"] > 0].shape[0]) if not d.wide.empty else 0
    try:  # sparsified twins name their source in derived.twin (zooscape.studies.cells.DERIVED_KINDS)
        twins = int(d.zoo.catalog.query(
            "SELECT COUNT(*) FROM models WHERE json_extract(config, '$.derived.twin') IS NOT NULL")[0][0])
    except Exception:  # noqa: BLE001 - an SQLite without JSON functions
        twins = 0
    rows = [["models", str(n)]] + [[f"status {k}", str(v)] for k, v in counts.items()]
    rows += [["grid cells", str(len(d.cell_order))], ["last recorded epoch", str(epochs)],
             ["trained model-epochs recorded", str(model_epochs)], ["twins", str(twins)],
             ["analysis results", str(len(d.analyses))]]
    s.tables.append(("", Table(["what", "count"], rows)))
    if counts.get("failed"):
        cfg = d.configs[d.configs["status"] == "failed"]
        reasons = cfg["reason"].fillna("").map(lambda r: r.split(":")[0][:80]).value_counts().head(10)
        s.tables.append(("failure reasons (most common)",
                         Table(["reason", "models"], [[k, str(v)] for k, v in reasons.items()])))
    return s


def _value_groups(df: pd.DataFrame, by: str, metric: str, order: Sequence[Any]) -> dict[str, np.ndarray]:
    grouped = {k: v[metric].to_numpy(dtype=float) for k, v in df.groupby(by, sort=False)}
    return {_fmt(k): grouped.get(k, np.array([])) for k in order}


def _final(d: ZooData) -> Section | None:
    acc, loss = d.metric("test_acc", "val_acc", "train_acc"), d.metric("test_loss", "val_loss", "train_loss")
    if acc is None and loss is None:
        return None
    s = Section("final", "Final-epoch accuracy and loss per grid cell")
    s.text.append("One box per grid cell (over seeds): median, quartiles, whiskers at the 5th and 95th percentiles; "
                  "each model at its last recorded epoch.")
    order = d.cell_order[:MAX_CELLS_DRAWN]
    if len(d.cell_order) > MAX_CELLS_DRAWN:
        s.text.append(f"The figures show the first {MAX_CELLS_DRAWN} of {len(d.cell_order)} cells; the table lists "
                      "all.")
    for m in (acc, loss):
        if m is not None:
            s.figures.append((f"{m} per cell", figures.boxplots(_value_groups(d.final, "cell", m, order), m,
                                                                xlabel=", ".join(d.axes))))
    metrics = [m for m in ("test_acc", "test_loss", "train_acc", "train_loss", "val_acc") if d.metric(m)]
    g = d.final.groupby("cell", sort=True)
    table = g.size().rename("n").to_frame()
    for m in metrics:
        table[f"{m} mean"] = g[m].mean()
        table[f"{m} std"] = g[m].std()
    s.tables.append(("per-cell summary (final epoch)", _frame_table(table.reset_index())))
    return s


def _epoch_sample(epochs: Sequence[int], most: int = 30) -> list[int]:
    epochs = sorted(epochs)
    if len(epochs) <= most:
        return list(epochs)
    idx = np.unique(np.linspace(0, len(epochs) - 1, most).round().astype(int))
    return [epochs[i] for i in idx]


def _epochs(d: ZooData) -> Section | None:
    metrics = [m for m in (d.metric("test_acc", "val_acc", "train_acc"), d.metric("test_loss", "val_loss",
                                                                                     "train_loss")) if m]
    if not metrics:
        return None
    s = Section("epochs", "Distributions per epoch")
    epochs = _epoch_sample(d.wide["epoch"].unique().tolist())
    s.text.append("One box per epoch over every model of the zoo (epoch 0: before training).")
    sub = d.wide[d.wide["epoch"].isin(epochs)]
    for m in metrics:
        s.figures.append((f"{m} per epoch", figures.boxplots(_value_groups(sub, "epoch", m, epochs), m,
                                                             xlabel="epoch")))
    return s


def _bands(df: pd.DataFrame, metric: str) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    g = df.groupby("epoch")[metric]
    q = g.quantile([0.1, 0.5, 0.9]).unstack()
    return q.index.to_numpy(), (q[0.5].to_numpy(), q[0.1].to_numpy(), q[0.9].to_numpy())


def _curves(d: ZooData) -> Section | None:
    metrics = [m for m in ("train_loss", "test_loss", "test_acc", "train_acc") if d.metric(m)]
    if not metrics or d.wide["epoch"].nunique() < 2:
        return None
    s = Section("curves", "Training curves")
    cells = d.cell_order[:MAX_CURVE_CELLS]
    s.text.append("Median over the models of each cell, band from the 10th to the 90th percentile."
                  + (f" First {MAX_CURVE_CELLS} of {len(d.cell_order)} cells." if len(d.cell_order) > len(cells)
                     else ""))
    sub = d.wide[d.wide["cell"].isin(cells)]
    for m in metrics:
        series = {}
        x = None
        for c in cells:
            part = sub[sub["cell"] == c]
            if part[m].notna().any():
                x, bands = _bands(part, m)
                series[c] = bands
        if series:
            s.figures.append((m, figures.line_bands(x, series, "epoch", m, title=m)))
    return s


def _phase(d: ZooData) -> Section | None:
    m = d.metric("test_acc", "test_loss", "val_acc", "train_loss")
    if m is None or d.final.empty:
        return None
    s = Section("phase", "Temperature-load maps and phase map")
    cfg = d.configs.set_index("model_id")
    final = d.final.join(cfg[["temperature", "load"]], on="model_id")
    if final["temperature"].nunique() > 1 or final["load"].nunique() > 1:
        ok = final[["temperature", "load", m]].notna().all(axis=1)
        f = final[ok]
        s.figures.append((f"{m} over temperature (lr / batch size) and load (samples per parameter)",
                          figures.scatter(f["temperature"].to_numpy(), f["load"].to_numpy(), f[m].to_numpy(),
                                          "temperature", "load", m)))
    axes = d.axes
    if len(axes) >= 2:
        from zooscape.zoo.summary import heatmap_matrix

        rows = final.join(cfg[axes], on="model_id")
        xs, ys, means, _ = heatmap_matrix(rows, axes[0], axes[1], m)
        s.figures.append((f"mean {m} over {axes[0]} x {axes[1]}",
                          figures.heatmap(means, xs, ys, axes[0], axes[1])))
    phase_cols = [c for c in d.wide.columns if str(c).startswith("phase")]
    phase_rows = d.analyses[d.analyses["metric"].str.startswith("phase")]
    if phase_cols or not phase_rows.empty:
        s.text.append("Phase labels are stored: "
                      + ", ".join(sorted(set(phase_cols) | set(phase_rows["metric"].unique()))) + ".")
    if not s.figures:
        return None
    return s


def _pair_cells(d: ZooData, pairs: pd.DataFrame) -> pd.DataFrame:
    return pairs.assign(cell=pairs["model_id"].map(d.cells))


def _summary_by_cell(pairs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    g = pairs.groupby(["cell", "epoch"], dropna=False)
    out = g.size().rename("pairs").to_frame()
    for m in metrics:
        out[f"{m} mean"] = g[m].mean()
        out[f"{m} std"] = g[m].std()
    return out.reset_index()


def _barrier_matrix(pairs: pd.DataFrame, metric: str) -> tuple[list[str], np.ndarray]:
    ids = sorted(set(pairs["model_id"]) | set(pairs["other_id"]))
    pos = {m: i for i, m in enumerate(ids)}
    mat = np.full((len(ids), len(ids)), np.nan)
    np.fill_diagonal(mat, 0.0)
    for a, b, v in zip(pairs["model_id"], pairs["other_id"], pairs[metric]):
        mat[pos[a], pos[b]] = mat[pos[b], pos[a]] = v
    return ids, mat


def _stored_paths(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Loss along the stored curves of ``zooscape curve pairs`` (``curves/*.json``), test split when present."""
    out = []
    for p in sorted((root / "curves").glob("*.json"))[:MAX_PATHS]:
        try:
            doc = json.loads(p.read_text())
            ev = doc["evaluation"]
            split = "test" if "test" in ev["loss"] else next(iter(ev["loss"]))
            t = np.asarray(ev["ts"], dtype=float)
            v = np.asarray([np.nan if x is None else x for x in ev["loss"][split]], dtype=float)
            out.append((f"{doc['model_id'][:6]}-{doc['other_id'][:6]} ({split})", t, v))
        except (OSError, ValueError, KeyError, TypeError, StopIteration):
            continue
    return out


def _lmc(d: ZooData, pairs: pd.DataFrame) -> Section | None:
    barrier_cols = sorted(c for c in pairs.columns if str(c).startswith("barrier_"))
    if not barrier_cols:
        return None
    s = Section("lmc", "Linear mode connectivity")
    pairs = _pair_cells(d, pairs)
    main = next((c for c in ("barrier_loss_test_linear", "barrier_error_test_linear", "barrier_loss_train_linear")
                 if c in barrier_cols), barrier_cols[0])
    s.text.append(f"{len(pairs)} model pairs with barriers ({', '.join(barrier_cols)}). Barrier matrices show "
                  f"{main} between every pair of a cell (at most "
                  f"{MAX_MATRIX_MODELS} models per matrix).")
    cols = [c for c in ("distance", *barrier_cols) if c in pairs.columns]
    s.tables.append(("barriers per cell and epoch (mean and std over pairs)", _frame_table(
        _summary_by_cell(pairs, cols))))
    for (cell, epoch), part in list(pairs.groupby(["cell", "epoch"], dropna=False))[:MAX_MATRICES]:
        part = part[part[main].notna()]
        if part.empty:
            continue
        keep = sorted(set(part["model_id"]) | set(part["other_id"]))[:MAX_MATRIX_MODELS]
        part = part[part["model_id"].isin(keep) & part["other_id"].isin(keep)]
        ids, mat = _barrier_matrix(part, main)
        labels = [m[:8] for m in ids]
        s.figures.append((f"{main}: cell {cell}, epoch {epoch}",
                          figures.heatmap(mat, labels, labels, "model", "model", cmap="magma")))
    paths = _stored_paths(d.zoo.path)
    if paths:
        s.figures.append(("loss along stored paths between models (t = 0 and 1: the two models)",
                          figures.paths(paths, "t", "loss")))
    else:
        s.text.append("No stored paths to plot (zooscape curve pairs stores the loss along each curve).")
    return s


def _curve(d: ZooData, pairs: pd.DataFrame) -> Section | None:
    cols = sorted(c for c in pairs.columns if str(c).startswith("curve_"))
    if not cols:
        return None
    s = Section("curve", "Curve mode connectivity")
    pairs = _pair_cells(d, pairs)
    s.text.append(f"{pairs[cols].notna().any(axis=1).sum()} pairs joined by a trained curve; mc = mode "
                  "connectivity along the curve (Garipov et al., 2018).")
    s.tables.append(("curve results per cell and epoch", _frame_table(_summary_by_cell(pairs, cols))))
    paths = _stored_paths(d.zoo.path)
    if paths:
        s.figures.append(("loss along the curves", figures.paths(paths, "t", "loss")))
    return s


def _landscape(d: ZooData) -> Section | None:
    a = d.analyses
    rows = a[a["metric"].str.startswith(LANDSCAPE_PREFIXES)]
    if rows.empty:
        return None
    s = Section("landscape", "Loss landscape: Hessian, Fisher, spectra, CKA")
    rows = rows.assign(cell=rows["model_id"].map(d.cells))
    g = rows.groupby(["metric", "cell", "epoch"], dropna=False)["value"]
    table = pd.DataFrame({"n": g.size(), "mean": g.mean(), "std": g.std(), "min": g.min(), "max": g.max()})
    s.text.append("Per-cell statistics of every stored landscape metric (CKA: over seed pairs). Every metric is a "
                  "column of zoo.table() (zoo plot --metric, zoo info --metrics, predict --properties).")
    s.tables.append(("landscape metrics per cell", _frame_table(table.reset_index())))
    single = rows[rows["other_id"].isna()].drop_duplicates(["model_id", "epoch", "metric"], keep="last")
    if not single.empty:
        wide = single.pivot_table(index=["model_id", "epoch"], columns="metric", values="value", aggfunc="last")
        wide.columns.name = None
        wide = wide.reset_index()
        wide.insert(1, "cell", wide["model_id"].map(d.cells))
        s.tables.append(("per model", _frame_table(wide)))
    return s


def _predict(d: ZooData) -> Section | None:
    files = sorted((d.zoo.path / "predict").glob("*.csv"))
    if not files:
        return None
    s = Section("predict", "Property prediction from weights")
    s.text.append("Scores of zooscape predict (files under predict/ in the zoo directory): R² for numeric "
                  "properties, accuracy for categorical ones.")
    for p in files:
        try:
            s.tables.append((p.name, _frame_table(pd.read_csv(p))))
        except (OSError, ValueError) as exc:
            s.text.append(f"{p.name}: unreadable ({exc})")
    return s


def _pruning_curves(d: ZooData) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Mean test accuracy per (method, sparsity) of the one-shot pruning rows (``zooscape sparsify prune``)."""
    rows = d.zoo.catalog.query("SELECT id, value, params FROM analyses WHERE other_id IS NULL AND metric = 'test_acc'"
                               f" AND params LIKE '{PRUNE}'") if d.prune_ids else []
    recs = []
    for _, value, params in rows:
        p = json.loads(params)
        label = p.get("method", "?") + (" + renorm" if p.get("renorm") not in (None, False, "none") else "")
        recs.append((label, float(p.get("sparsity", np.nan)), value))
    df = pd.DataFrame(recs, columns=["method", "sparsity", "value"]).astype({"value": "float64"})
    out = []
    for method, part in df.groupby("method"):
        m = part.groupby("sparsity")["value"].mean()
        out.append((str(method), m.index.to_numpy(), m.to_numpy()))
    return out[:MAX_PATHS]


def _sparsity(d: ZooData) -> Section | None:
    cols = [c for c in d.wide.columns if "sparsity" in str(c)]
    rows = d.analyses[d.analyses["metric"].str.contains("sparsity")]
    if not cols and rows.empty and not d.prune_ids:
        return None
    s = Section("sparsity", "Sparsity trajectories")
    for c in cols:
        x, bands = _bands(d.wide[d.wide[c].notna()], c)
        s.figures.append((c, figures.line_bands(x, {"all models": bands}, "epoch", c)))
    pruned = _pruning_curves(d)
    if pruned:
        s.figures.append(("one-shot pruning: test accuracy vs sparsity (mean over models)",
                          figures.paths(pruned, "sparsity", "test_acc")))
    rows = rows[~rows["id"].isin(d.prune_ids)]
    for metric, part in rows.groupby("metric"):
        part = part[part["epoch"].notna()]
        if part["epoch"].nunique() > 1:
            x, bands = _bands(part.rename(columns={"value": metric}), metric)
            s.figures.append((metric, figures.line_bands(x, {"all models": bands}, "epoch", metric)))
        else:
            s.text.append(f"{metric}: mean {part['value'].mean():.4g} over {len(part)} models.")
    return s


def all_sections(d: ZooData) -> dict[str, Section | None]:
    """Every section of :data:`SECTION_IDS` but ``missing``, in page order (None where the zoo has no data).

    Args:
        d: the zoo's data.

    Returns:
        dict section id -> Section or None.
    """
    from zooscape.zoo.columns import pair_table

    pairs = pair_table(d.zoo.catalog, d.analyses)
    return {"overview": _overview(d), "spec": _spec_section(d), "counts": _counts(d), "final": _final(d),
            "epochs": _epochs(d), "curves": _curves(d), "phase": _phase(d), "lmc": _lmc(d, pairs),
            "curve": _curve(d, pairs), "landscape": _landscape(d), "predict": _predict(d), "sparsity": _sparsity(d)}
