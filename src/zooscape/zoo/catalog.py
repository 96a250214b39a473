"""The zoo catalog: one SQLite database (WAL mode) indexing models, metrics, checkpoints and analyses.

Tables (see ``docs/zoo-format.md``)::

    meta(key PRIMARY KEY, value)                      schema_version, zooscape_version, created, spec_fingerprint
    models(model_id PK, group_id, config JSON, status, reason, n_params, temperature, load, updated)
    metrics(model_id, epoch, name, value)             PK (model_id, epoch, name), long format
    checkpoints(model_id, epoch, kind, file)          PK (model_id, epoch, kind); file relative to the zoo
    analyses(id PK, model_id, other_id NULL, epoch, metric, value, params JSON, created)
    shards(file PK, group_id, epoch, kind, size, sha256, crc32)   one row per shard file (integrity record)

Created complete (schema, meta, fingerprint) in a temporary file renamed into place; every write is one
transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), so a killed writer leaves the catalog as before or after a call.
One process (the driver) writes; readers (``readonly=True``) open it with ``mode=ro`` (``immutable=1`` where that is
refused: read-only media); a closing writer leaves rollback-journal mode (no ``-wal``/``-shm`` needed to read).
SQLite errors are raised as :class:`CatalogError` naming the file.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from zooscape._io import fsync_dir
from zooscape.zoo.shards import ShardError, ShardRecord, describe_shard

__all__ = ["STATUSES", "FINISHED", "SCHEMA_VERSION", "Catalog", "CatalogError", "catalog_uri"]

log = logging.getLogger("zooscape.zoo")

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
CREATE TABLE IF NOT EXISTS shards (
    file     TEXT PRIMARY KEY,
    group_id TEXT NOT NULL,
    epoch    INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    size     INTEGER NOT NULL,
    sha256   TEXT NOT NULL,
    crc32    INTEGER NOT NULL
) WITHOUT ROWID;
"""


class CatalogError(RuntimeError):
    """The catalog file is unreadable, corrupt, unfinished or locked (the message names the file)."""


def catalog_uri(path: str | Path, **params: str) -> str:
    """SQLite URI of a file, with ``%``, ``#``, ``?`` and other special characters of the path escaped.

    Args:
        path: the database file.
        **params: URI parameters (``mode="ro"``, ``immutable="1"``).

    Returns:
        ``file:///...`` URI.
    """
    uri = Path(os.path.abspath(path)).as_uri()
    return uri + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")


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
        readonly: open read-only (for readers while a driver writes, or on read-only storage).
        create: create the file and schema if missing (ignored when ``readonly``); prefer :meth:`create`, which
            also records the initial meta rows in the same step.
        immutable: readers only: None tries ``mode=ro`` and falls back to ``immutable=1`` when SQLite cannot open
            the file that way (read-only media, a WAL catalog whose ``-shm`` cannot be created); True forces
            ``immutable=1`` (the file must not change while it is open).

    Raises:
        FileNotFoundError: the file is missing and ``create`` is False.
        CatalogError: the file is not a readable zoo catalog.
    """

    def __init__(self, path: str | Path, readonly: bool = False, create: bool = False,
                 immutable: bool | None = None) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if not self.path.exists() and (readonly or not create):
            raise FileNotFoundError(f"catalog {self.path} does not exist")
        try:
            if readonly:
                self._con = self._open_readonly(immutable)
            else:
                self._con = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
                self._con.execute("PRAGMA journal_mode=WAL")
                self._con.execute("PRAGMA synchronous=FULL")
                with self.transaction() as con:
                    _create_schema(con)
            has_meta = self._con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            version = self.meta().get("schema_version") if has_meta else None
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        if version is not None and int(version) != SCHEMA_VERSION:
            raise CatalogError(f"catalog {self.path} has schema_version {version}; this zooscape reads "
                               f"{SCHEMA_VERSION}")

    def _open_readonly(self, immutable: bool | None) -> sqlite3.Connection:
        if not immutable:
            con = sqlite3.connect(catalog_uri(self.path, mode="ro"), uri=True, isolation_level=None, timeout=30)
            try:
                con.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return con
            except sqlite3.OperationalError as exc:
                con.close()
                if immutable is False or "unable to open" not in str(exc) and "readonly" not in str(exc):
                    raise
                log.debug("catalog %s: read-only open refused (%s); opening it as immutable", self.path, exc)
        con = sqlite3.connect(catalog_uri(self.path, mode="ro", immutable="1"), uri=True, isolation_level=None)
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return con

    def _error(self, exc: BaseException) -> CatalogError:
        hint = " (an unfinished catalog: re-run the command that creates it)" if "no such table" in str(exc) else ""
        return CatalogError(f"catalog {self.path}: {exc}{hint}")

    @classmethod
    def create(cls, path: str | Path, meta: Mapping[str, Any]) -> Catalog:
        """Create a complete catalog in one step: schema and meta rows are written to a temporary file, which is
        renamed into place (a kill leaves either no catalog or a finished one).

        Args:
            path: the database file (must not exist).
            meta: initial meta rows (e.g. ``{"spec_fingerprint": ...}``); values as in :meth:`set_meta`.

        Returns:
            writable Catalog.
        """
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            con = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                con.execute("BEGIN IMMEDIATE")
                _create_schema(con)
                con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", _meta_rows(meta))
                con.execute("COMMIT")
            finally:
                con.close()
            with tmp.open("rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except sqlite3.Error as exc:
            raise CatalogError(f"catalog {path}: cannot create it ({exc})") from None
        finally:
            tmp.unlink(missing_ok=True)
            tmp.with_name(tmp.name + "-journal").unlink(missing_ok=True)
        fsync_dir(path.parent)
        return cls(path)

    # ------------------------------------------------------------------------------------------- plumbing

    def close(self) -> None:
        """Close the connection (a writer first returns the file to rollback-journal mode when no one else has it
        open, so that the finished catalog can be read from read-only storage)."""
        if not self.readonly:
            try:
                self._con.execute("PRAGMA journal_mode=DELETE")
            except sqlite3.Error:  # another connection is open: it stays in WAL mode; readers fall back
                pass
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
        try:
            self._con.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            yield self._con
        except sqlite3.Error as exc:
            self._con.execute("ROLLBACK")
            raise self._error(exc) from None
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        try:
            self._con.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query.

        Args:
            sql: SELECT statement.
            params: bound parameters.

        Returns:
            list of row tuples.

        Raises:
            CatalogError: SQLite failed (corrupt file, missing table, ...).
        """
        try:
            return self._con.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    # ------------------------------------------------------------------------------------------- meta

    def meta(self) -> dict[str, str]:
        """Return the ``meta`` table as a dict."""
        return dict(self.query("SELECT key, value FROM meta"))

    def is_finished(self) -> bool:
        """Whether the catalog was created completely (has its meta table and a spec fingerprint).

        Returns:
            bool; False for catalogs whose creation was interrupted (by zooscape versions that created them in
            several steps).
        """
        try:
            return "spec_fingerprint" in self.meta()
        except CatalogError:
            return False

    def set_meta(self, values: Mapping[str, Any]) -> None:
        """Insert or replace ``meta`` entries (values stored as text; non-strings JSON-encoded).

        Args:
            values: key -> value.
        """
        with self.transaction() as con:
            con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", _meta_rows(values))

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
        rows = self.query("SELECT model_id, status FROM models")
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

        Shard files named by ``checkpoints`` that have no :class:`ShardRecord` yet are measured (size, SHA-256,
        header) before the transaction and recorded in it; a header that contradicts the rows raises.

        Raises:
            ShardError: a checkpoint row names a file that is unreadable or holds another epoch/kind.
        """
        statuses = statuses or {}
        checkpoints = [(m, int(e), k, str(f)) for m, e, k, f in checkpoints]
        shard_rows = self._new_shard_records(checkpoints)
        for mid, (status, _) in statuses.items():
            if status not in STATUSES:
                raise ValueError(f"status of {mid!r} must be one of {STATUSES}, got {status!r}")
        now = _now()
        with self.transaction() as con:
            con.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?)",
                [(m, int(e), n, _real(v)) for m, e, n, v in metrics],
            )
            con.executemany("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)", checkpoints)
            con.executemany("INSERT OR IGNORE INTO shards VALUES (?, ?, ?, ?, ?, ?, ?)", shard_rows)
            con.executemany(
                "UPDATE models SET status = ?, reason = ?, updated = ? WHERE model_id = ?",
                [(s, r, now, m) for m, (s, r) in statuses.items()],
            )

    # ------------------------------------------------------------------------------------------- shards

    def _new_shard_records(self, checkpoints: Sequence[tuple[str, int, str, str]]) -> list[tuple[Any, ...]]:
        by_file: dict[str, tuple[int, str]] = {}
        for _, epoch, kind, file in checkpoints:
            by_file.setdefault(file, (epoch, kind))
        if not by_file:
            return []
        known = set(self.shard_records(list(by_file)))
        rows = []
        for file, (epoch, kind) in sorted(by_file.items()):
            if file in known or not (self.path.parent / file).is_file():
                continue  # a row for a file that is not there (yet) is recorded without a record: verify reports it
            rec = describe_shard(self.path.parent, file)
            if (rec.epoch, rec.kind) != (epoch, kind):
                raise ShardError(f"shard {self.path.parent / file}: its header says epoch {rec.epoch}, kind "
                                 f"{rec.kind}; the rows to record say epoch {epoch}, kind {kind}")
            rows.append((rec.file, rec.group_id, rec.epoch, rec.kind, rec.size, rec.sha256, rec.crc32))
        return rows

    def shard_records(self, files: Sequence[str] | None = None) -> dict[str, ShardRecord]:
        """Integrity records of shard files.

        Args:
            files: restrict to these paths (relative to the zoo); None = all.

        Returns:
            dict file -> :class:`~zooscape.zoo.shards.ShardRecord` (empty for catalogs written before records
            existed).
        """
        if not self.query("SELECT 1 FROM sqlite_master WHERE type='table' AND name='shards'"):
            return {}
        sql = "SELECT file, group_id, epoch, kind, size, sha256, crc32 FROM shards"
        if files is None:
            rows = self.query(sql)
        else:
            rows = []
            files = list(files)
            for i in range(0, len(files), 500):
                chunk = files[i:i + 500]
                rows += self.query(sql + f" WHERE file IN ({','.join('?' * len(chunk))})", chunk)
        return {r[0]: ShardRecord(r[0], r[1], int(r[2]), r[3], int(r[4]), r[5], int(r[6])) for r in rows}

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


def _create_schema(con: sqlite3.Connection) -> None:
    for stmt in _SCHEMA.split(";"):
        if stmt.strip():
            con.execute(stmt)
    if con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() is None:
        con.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        con.execute("INSERT INTO meta VALUES ('created', ?)", (_now(),))


def _meta_rows(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in values.items()]
