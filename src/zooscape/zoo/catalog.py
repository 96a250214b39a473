"""The zoo catalog: one SQLite database (WAL mode) indexing models, metrics, checkpoints and analyses.

Tables (see ``docs/zoo-format.md``)::

    meta(key PRIMARY KEY, value)                      schema_version, zooscape_version, created, spec_fingerprint
    models(model_id PK, group_id, config JSON, status, reason, n_params, temperature, load, updated)
    metrics(model_id, epoch, name, value)             PK (model_id, epoch, name), long format
    checkpoints(model_id, epoch, kind, file)          PK (model_id, epoch, kind); file relative to the zoo
    analyses(id PK, model_id, other_id NULL, epoch, metric, value, params JSON, created)

Every write method runs in one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on error), so a
killed writer leaves the catalog as it was before or after the call, never in between. One process (the driver)
writes; any number of processes may read (``Catalog(path, readonly=True)``).
"""

from __future__ import annotations

import datetime
import json
import math
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["STATUSES", "FINISHED", "SCHEMA_VERSION", "Catalog"]

SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "failed", "stopped")
#: Statuses that end a model's training (``stopped`` = early stopping).
FINISHED = ("done", "failed", "stopped")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    model_id    TEXT PRIMARY KEY,
    group_id    TEXT NOT NULL,
    config      TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN {STATUSES!r}),
    reason      TEXT,
    n_params    INTEGER,
    temperature REAL,
    load        REAL,
    updated     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS models_group ON models(group_id);
CREATE TABLE IF NOT EXISTS metrics (
    model_id TEXT NOT NULL,
    epoch    INTEGER NOT NULL,
    name     TEXT NOT NULL,
    value    REAL,
    PRIMARY KEY (model_id, epoch, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    model_id TEXT NOT NULL,
    epoch    INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    file     TEXT NOT NULL,
    PRIMARY KEY (model_id, epoch, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS analyses (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    model_id TEXT NOT NULL,
    other_id TEXT,
    epoch    INTEGER,
    metric   TEXT NOT NULL,
    value    REAL,
    params   TEXT NOT NULL DEFAULT '{{}}',
    created  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS analyses_key ON analyses(metric, model_id, other_id, epoch);
"""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _real(value: Any) -> float | None:
    """Float for SQLite; NaN/inf/None -> NULL."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class Catalog:
    """Handle on ``catalog.sqlite``.

    Args:
        path: database file.
        readonly: open read-only (for readers while a driver writes).
        create: create the file and schema if missing (ignored when ``readonly``).

    Raises:
        FileNotFoundError: the file is missing and ``create`` is False.
    """

    def __init__(self, path: str | Path, readonly: bool = False, create: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if not self.path.exists() and (readonly or not create):
            raise FileNotFoundError(f"catalog {self.path} does not exist")
        if readonly:
            self._con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None, timeout=30)
        else:
            self._con = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")
            with self.transaction() as con:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        con.execute(stmt)
                if con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() is None:
                    con.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                    con.execute("INSERT INTO meta VALUES ('created', ?)", (_now(),))
        version = self.meta().get("schema_version")
        if version is not None and int(version) != SCHEMA_VERSION:
            raise ValueError(f"catalog {self.path} has schema_version {version}; this zooscape reads {SCHEMA_VERSION}")

    # ------------------------------------------------------------------------------------------- plumbing

    def close(self) -> None:
        """Close the connection."""
        self._con.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the body in one write transaction (``BEGIN IMMEDIATE``; rollback on any exception).

        Returns:
            context manager yielding the connection.
        """
        if self.readonly:
            raise PermissionError(f"catalog {self.path} was opened read-only")
        self._con.execute("BEGIN IMMEDIATE")
        try:
            yield self._con
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query.

        Args:
            sql: SELECT statement.
            params: bound parameters.

        Returns:
            list of row tuples.
        """
        return self._con.execute(sql, tuple(params)).fetchall()

    # ------------------------------------------------------------------------------------------- meta

    def meta(self) -> dict[str, str]:
        """Return the ``meta`` table as a dict."""
        return dict(self._con.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, values: Mapping[str, Any]) -> None:
        """Insert or replace ``meta`` entries (values stored as text; non-strings JSON-encoded).

        Args:
            values: key -> value.
        """
        rows = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in values.items()]
        with self.transaction() as con:
            con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", rows)

    # ------------------------------------------------------------------------------------------- models

    def add_models(self, configs: Iterable[Mapping[str, Any]]) -> int:
        """Register model configs as ``pending`` (models already present are left unchanged).

        Args:
            configs: model configs from :func:`zooscape.zoo.grid.expand_spec` (with ``derived``).

        Returns:
            number of models inserted.
        """
        rows = []
        for cfg in configs:
            d = cfg.get("derived", {})
            rows.append(
                (
                    cfg["model_id"],
                    cfg["group_id"],
                    json.dumps({k: cfg[k] for k in ("dataset", "model", "training", "derived")}, sort_keys=True),
                    d.get("n_params"),
                    _real(d.get("temperature")),
                    _real(d.get("load")),
                    _now(),
                )
            )
        with self.transaction() as con:
            before = con.total_changes
            con.executemany(
                "INSERT OR IGNORE INTO models (model_id, group_id, config, n_params, temperature, load, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return con.total_changes - before

    def statuses(self, model_ids: Iterable[str] | None = None) -> dict[str, str]:
        """Status of each model.

        Args:
            model_ids: restrict to these ids; None = all.

        Returns:
            dict model_id -> status.
        """
        rows = self._con.execute("SELECT model_id, status FROM models").fetchall()
        if model_ids is None:
            return dict(rows)
        wanted = set(model_ids)
        return {m: s for m, s in rows if m in wanted}

    def set_status(self, model_ids: Sequence[str], status: str, reasons: Sequence[str | None] | None = None) -> None:
        """Set the status (and reason) of models in one transaction.

        Args:
            model_ids: models.
            status: one of :data:`STATUSES`.
            reasons: one per model (None = clear), or None for all None.
        """
        self.record(statuses={m: (status, None if reasons is None else reasons[i]) for i, m in enumerate(model_ids)})

    def record(
        self,
        metrics: Iterable[tuple[str, int, str, float | None]] = (),
        checkpoints: Iterable[tuple[str, int, str, str]] = (),
        statuses: Mapping[str, tuple[str, str | None]] | None = None,
    ) -> None:
        """Write metrics, checkpoint rows and statuses in ONE transaction (idempotent: rows are upserted).

        Args:
            metrics: rows ``(model_id, epoch, name, value)``; NaN/inf stored as NULL.
            checkpoints: rows ``(model_id, epoch, kind, file)``; ``file`` relative to the zoo directory and
                already on disk.
            statuses: model_id -> (status, reason).
        """
        statuses = statuses or {}
        for mid, (status, _) in statuses.items():
            if status not in STATUSES:
                raise ValueError(f"status of {mid!r} must be one of {STATUSES}, got {status!r}")
        now = _now()
        with self.transaction() as con:
            con.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?)",
                [(m, int(e), n, _real(v)) for m, e, n, v in metrics],
            )
            con.executemany(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)",
                [(m, int(e), k, str(f)) for m, e, k, f in checkpoints],
            )
            con.executemany(
                "UPDATE models SET status = ?, reason = ?, updated = ? WHERE model_id = ?",
                [(s, r, now, m) for m, (s, r) in statuses.items()],
            )

    # ------------------------------------------------------------------------------------------- analyses

    def add_analyses(self, rows: Iterable[Mapping[str, Any]], replace: bool = True) -> int:
        """Store analysis results (e.g. barriers, Hessian traces) in one transaction.

        Args:
            rows: dicts with ``model_id``, ``metric``, ``value`` and optionally ``other_id`` (second model of a
                pair), ``epoch``, ``params`` (JSON-compatible dict of the analysis settings).
            replace: delete earlier rows with the same (model_id, other_id, epoch, metric, params) first.

        Returns:
            number of rows inserted.
        """
        prepared = []
        for r in rows:
            for key in ("model_id", "metric", "value"):
                if key not in r:
                    raise KeyError(f"analysis row {dict(r)!r} lacks {key!r}")
            params = json.dumps(r.get("params") or {}, sort_keys=True)
            epoch = None if r.get("epoch") is None else int(r["epoch"])
            prepared.append((r["model_id"], r.get("other_id"), epoch, r["metric"], _real(r["value"]), params))
        now = _now()
        with self.transaction() as con:
            if replace:
                con.executemany(
                    "DELETE FROM analyses WHERE model_id = ? AND other_id IS ? AND epoch IS ? AND metric = ?"
                    " AND params = ?",
                    [p[:4] + (p[5],) for p in prepared],
                )
            con.executemany(
                "INSERT INTO analyses (model_id, other_id, epoch, metric, value, params, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [p + (now,) for p in prepared],
            )
        return len(prepared)
