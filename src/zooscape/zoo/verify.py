"""Integrity of a zoo directory: find missing or damaged shards, and re-train exactly those (``zoo verify``).

Every shard file has a record in the catalog (size, SHA-256, and the group/epoch/kind of its header), written when
the shard's rows were committed. :func:`verify_zoo` checks every shard against its record and against the
catalog's checkpoint rows (header epoch/group/kind, the models it must hold), and ``spec.toml`` against the
catalog's fingerprint. :func:`repair_zoo` re-trains each damaged group from its initialisation up to the last
damaged epoch (training is deterministic for a given device and library version) and rewrites exactly the damaged
shards, after checking that the new bytes have the recorded SHA-256. :func:`quick_check` only compares sizes (one
``stat`` per shard): what ``zoo info`` and ``zoo train`` report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zooscape.zoo.catalog import Catalog
from zooscape.zoo.shards import ShardError, ShardRecord, check_shard, read_header

__all__ = ["ShardProblem", "VerifyReport", "quick_check", "repair_zoo", "verify_zoo"]

log = logging.getLogger("zooscape.zoo")


@dataclass
class ShardProblem:
    """One missing or damaged shard.

    Args:
        file: path relative to the zoo.
        group_id: its group.
        epoch: its epoch.
        kind: ``"weights"`` or ``"optimizer"``.
        problem: what is wrong.
        model_ids: the models whose checkpoint rows point at it.
    """

    file: str
    group_id: str
    epoch: int
    kind: str
    problem: str
    model_ids: list[str]


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_zoo` / :func:`quick_check` (and :func:`repair_zoo`).

    Args:
        root: the zoo directory.
        n_shards: shard files the catalog refers to.
        problems: damaged or missing shards.
        spec_problem: why ``spec.toml`` does not match the catalog (None: it matches, or was not checked).
        unrecorded: shards without an integrity record (written by older versions: header checks only).
        repaired: files rewritten by :func:`repair_zoo`.
        unrepaired: file -> why it could not be repaired.
    """

    root: Path
    n_shards: int = 0
    problems: list[ShardProblem] = field(default_factory=list)
    spec_problem: str | None = None
    unrecorded: int = 0
    repaired: list[str] = field(default_factory=list)
    unrepaired: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.problems) or self.spec_problem is not None

    @property
    def ok(self) -> bool:
        """No problem found (or all repaired)."""
        return not self.unrepaired and (not self or len(self.repaired) == len(self.problems)) and \
            self.spec_problem is None

    def summary(self) -> str:
        """One line: ``"2 of 6 shards missing or damaged"`` or ``"6 shards fine"``."""
        if not self.problems:
            return f"{self.n_shards} shards fine"
        return f"{len(self.problems)} of {self.n_shards} shards missing or damaged"

    def lines(self) -> list[str]:
        """Human-readable report, one line per problem."""
        out = [f"{self.root}: {self.summary()}"]
        out += [f"  {p.file}: {p.problem}" for p in self.problems]
        if self.spec_problem:
            out.append(f"  spec.toml: {self.spec_problem}")
        if self.unrecorded:
            out.append(f"  note: {self.unrecorded} shards have no recorded checksum (written by an older "
                       "zooscape); only their headers and sizes were checked")
        if self.repaired:
            out.append(f"repaired {len(self.repaired)} shards (re-trained; each matches its recorded SHA-256)")
        out += [f"  not repaired {f}: {why}" for f, why in self.unrepaired.items()]
        return out


def _shards(catalog: Catalog) -> dict[str, tuple[int, str, list[str]]]:
    """file -> (epoch, kind, model ids) from the checkpoint rows."""
    out: dict[str, tuple[int, str, list[str]]] = {}
    for mid, epoch, kind, file in catalog.query(
            "SELECT model_id, epoch, kind, file FROM checkpoints ORDER BY file, model_id"):
        out.setdefault(file, (int(epoch), kind, []))[2].append(mid)
    return out


def _group_of(rel: str, record: ShardRecord | None) -> str:
    return record.group_id if record is not None else Path(rel).parent.name


def quick_check(root: str | Path, catalog: Catalog) -> VerifyReport:
    """Cheap check (one ``stat`` per shard): missing shards and shards whose size differs from the record.

    Args:
        root: zoo directory.
        catalog: its catalog (read-only or not).

    Returns:
        VerifyReport (``spec_problem`` is not checked).
    """
    root = Path(root)
    shards = _shards(catalog)
    records = catalog.shard_records()
    report = VerifyReport(root=root, n_shards=len(shards))
    for rel, (epoch, kind, mids) in shards.items():
        rec = records.get(rel)
        try:
            size = (root / rel).stat().st_size
        except FileNotFoundError:
            problem = "missing"
        else:
            if rec is None or size == rec.size:
                continue
            problem = f"{size} bytes, the catalog recorded {rec.size} (truncated or replaced)"
        report.problems.append(ShardProblem(rel, _group_of(rel, rec), epoch, kind, problem, mids))
    return report


def _structure(path: Path) -> None:
    """Header parses, data offsets fit the file, the file is not longer than its tensors."""
    header = read_header(path)
    with path.open("rb") as fh:
        head_len = int.from_bytes(fh.read(8), "little")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    size = path.stat().st_size
    if size != 8 + head_len + end:
        raise ShardError(f"shard {path}: {size} bytes, its header describes {8 + head_len + end} (truncated?)")


def _problem_text(exc: ShardError, path: Path) -> str:
    text = str(exc)
    prefix = f"shard {path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def verify_zoo(root: str | Path, progress: Callable[[str], None] | None = None) -> VerifyReport:
    """Check every shard (size and SHA-256 against the catalog's record; header group/epoch/kind and model ids
    against the checkpoint rows) and ``spec.toml`` against the catalog's fingerprint.

    Args:
        root: zoo directory.
        progress: called with each shard file as it is checked.

    Returns:
        VerifyReport.
    """
    from zooscape.zoo.spec import SpecError, load_spec, load_stored_spec, spec_matches
    from zooscape.zoo.store import ZooStore

    root = Path(root)
    store = ZooStore(root)
    if not store.catalog_path.is_file():
        raise FileNotFoundError(f"{root} is not a zoo directory (no catalog.sqlite)")
    with Catalog(store.catalog_path, readonly=True) as catalog:
        shards = _shards(catalog)
        records = catalog.shard_records()
        fingerprint = catalog.meta().get("spec_fingerprint")
    report = VerifyReport(root=root, n_shards=len(shards))
    for rel, (epoch, kind, mids) in shards.items():
        if progress is not None:
            progress(rel)
        rec = records.get(rel)
        path = root / rel
        try:
            check_shard(path, rec, (_group_of(rel, rec), epoch, kind), strong=True)
            if rec is None:
                report.unrecorded += 1
                _structure(path)
            held = set(json.loads((read_header(path).get("__metadata__") or {}).get("model_ids", "[]")))
            lacking = sorted(set(mids) - held)
            if lacking:
                raise ShardError(f"shard {path}: lacks models {lacking} that the catalog says it holds")
        except ShardError as exc:
            report.problems.append(ShardProblem(rel, _group_of(rel, rec), epoch, kind, _problem_text(exc, path),
                                                mids))
    if load_stored_spec(store.spec_path, fingerprint) is not None:  # the spec it was created from
        return report
    try:
        spec = load_spec(store.spec_path)
        if fingerprint is not None and not spec_matches(spec, fingerprint):
            report.spec_problem = "does not match the catalog's fingerprint (edited or replaced)"
    except SpecError as exc:
        report.spec_problem = f"{exc.key}: {exc.problem}"
    return report


class _Stop(Exception):
    """Ends a repair's training after the last damaged epoch."""


def repair_zoo(root: str | Path, report: VerifyReport | None = None, device: str = "auto",
               progress: bool = False) -> VerifyReport:
    """Re-train the groups of damaged shards and rewrite exactly those shards.

    Each damaged group is trained again from its initialisation (same configs, seeds and data order) up to its
    last damaged epoch; at each damaged epoch the shard is encoded again and written only if its SHA-256 equals
    the catalog's record (so a repaired zoo is bitwise the original). Training is deterministic for a given
    device and library version: repair on the kind of device the zoo was trained on.

    Args:
        root: zoo directory.
        report: from :func:`verify_zoo` (default: run it).
        device: torch device of the re-training (``"auto"``: CUDA, else MPS, else CPU; use the kind of device the
            zoo was trained on).
        progress: tqdm bar over the damaged groups (stderr).

    Returns:
        the report with ``repaired`` / ``unrepaired`` filled.

    Raises:
        ValueError: the zoo was imported (there is no training recipe to re-run).
        RuntimeError: another process is writing the zoo.
    """
    from tqdm.auto import tqdm

    from zooscape._io import atomic_write_bytes
    from zooscape.train import train_population
    from zooscape.zoo.build import build_member, build_model, build_train_config, load_data
    from zooscape.zoo.store import ZooStore

    root = Path(root)
    report = report if report is not None else verify_zoo(root)
    if not report.problems:
        return report
    store = ZooStore(root)
    with store.lock(), Catalog(store.catalog_path, readonly=True) as catalog:
        meta = catalog.meta()
        if meta.get("import_format"):
            raise ValueError(f"{root} was imported ({meta['import_format']} layout from "
                             f"{meta.get('imported_from')}): it cannot be re-trained; import it again")
        records = catalog.shard_records()
        by_group: dict[str, list[ShardProblem]] = {}
        for p in report.problems:
            by_group.setdefault(p.group_id, []).append(p)
        for gid, problems in tqdm(sorted(by_group.items()), desc="repairing", unit="group", disable=not progress):
            rows = catalog.query("SELECT model_id, config FROM models WHERE group_id = ? ORDER BY model_id", (gid,))
            if not rows:
                for p in problems:
                    report.unrepaired[p.file] = f"no models of group {gid} in the catalog"
                continue
            ids = [r[0] for r in rows]
            configs = [json.loads(r[1]) for r in rows]
            wanted = {(p.epoch, p.kind): p for p in problems}
            last = max(p.epoch for p in problems)
            first = configs[0]
            data = load_data(first["dataset"])
            train_cfg = build_train_config(first["training"])
            members = [build_member(c["training"]) for c in configs]
            models = [build_model(c["model"], seed=m.seed, model_args=c.get("derived", {}).get("model_args"))
                      for c, m in zip(configs, members)]

            def callback(ep: Any, wanted: dict = wanted, ids: list = ids, last: int = last,
                         gid: str = gid) -> None:
                for kind in ("weights", "optimizer"):
                    p = wanted.get((ep.epoch, kind))
                    if p is None:
                        continue
                    states = ep.state_dicts() if kind == "weights" else ep.optimizer_states()
                    chosen = {m: states[ids.index(m)] for m in p.model_ids if m in ids}
                    rel, blob = store.encode_shard(gid, ep.epoch, kind, chosen)
                    rec = records.get(p.file)
                    if rel != p.file:
                        report.unrepaired[p.file] = f"re-training names it {rel}"
                    elif rec is not None and (len(blob) != rec.size or _sha256(blob) != rec.sha256):
                        report.unrepaired[p.file] = ("re-training gave other bytes than recorded (another device "
                                                     "or library version than the original run?); left as is")
                    else:
                        (root / rel).parent.mkdir(parents=True, exist_ok=True)
                        atomic_write_bytes(root / rel, blob)
                        report.repaired.append(rel)
                if ep.epoch >= last:
                    raise _Stop

            try:
                train_population(models, data, train_cfg, members, device=device, callback=callback,
                                 progress=False)
            except _Stop:
                pass
            for p in problems:
                if p.file not in report.repaired and p.file not in report.unrepaired:
                    report.unrepaired[p.file] = f"epoch {p.epoch} was not reached by re-training"
    return report


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
