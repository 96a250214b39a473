"""Grow a zoo (train only the models a larger grid adds) and merge zoos of compatible specs.

**Growing.** ``zooscape zoo train SPEC --out ZOO`` with a SPEC whose grid adds values (more seeds, another
learning rate) to the spec ZOO was made from trains only the new models into ZOO. A spec is a growth of the stored
one when every model already in the catalog is in its expansion with the same config, and ``[checkpoints]`` and
``[population]`` are unchanged; anything else (another epoch count, a removed grid value, a changed base setting)
would alter existing models and is refused with the differing keys named. Existing models keep their training
groups; the new models are grouped among themselves (``[population] max_size``), so their shards are new files.
The zoo's ``spec.toml`` and fingerprint become the grown spec. A population's result does not depend on which
other models it holds (``tests/train``), so a grown zoo equals, bitwise, the zoo trained with the larger grid at
once (``tests/report/test_grow.py``).

**Merging.** :func:`merge_zoos` writes a new zoo holding the models of two zoos whose specs differ only in grid
values; its spec's grid is the union. Grid points of the union that neither zoo trained are left for
``zooscape zoo train C/spec.toml --out C``.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zooscape.zoo.grid import Group, canonical_json, group_configs, group_key
from zooscape.zoo.store import ZooExistsError, ZooStore, is_zoo

__all__ = ["check_growth", "merge_zoos", "regroup", "spec_differences"]

#: Sections of a spec document that must be equal for a growth or a merge (the grid may differ).
FIXED_SECTIONS = ("dataset", "model", "training", "checkpoints", "population")
CONFIG_SECTIONS = ("dataset", "model", "training")


def _show(v: Any) -> str:
    return "(unset)" if v is None else json.dumps(v)


def spec_differences(old: Mapping[str, Any], new: Mapping[str, Any], growth: bool = True) -> list[str]:
    """Keys in which two spec documents (``ZooSpec.to_dict()`` or a parsed fingerprint) differ.

    Args:
        old: the stored spec document.
        new: the new spec document.
        growth: allow grid values and grid keys to be added (else: any grid difference but new values is listed
            for removed values only, as for a merge).

    Returns:
        human-readable differences, e.g. ``"training.epochs: 5 -> 10"``, ``"[grid] 'training.lr': values
        removed: [0.1]"``; empty when the new spec only adds grid values.
    """
    out = []
    for section in FIXED_SECTIONS:
        a, b = dict(old.get(section, {})), dict(new.get(section, {}))
        for key in sorted(set(a) | set(b)):
            if canonical_json(a.get(key)) != canonical_json(b.get(key)):
                out.append(f"{section}.{key}: {_show(a.get(key))} -> {_show(b.get(key))}")
    ga, gb = old.get("grid", {}), new.get("grid", {})
    for key in sorted(set(ga) | set(gb)):
        if key not in gb:
            out.append(f"[grid] '{key}': removed")
        elif key not in ga:
            if not growth:
                out.append(f"[grid] '{key}': only in the second spec")
        elif growth:
            gone = [v for v in ga[key] if canonical_json(v) not in {canonical_json(x) for x in gb[key]}]
            if gone:
                out.append(f"[grid] '{key}': values removed: {gone}")
    return out


def check_growth(stored_fingerprint: str, spec: Any, stored_configs: Mapping[str, Mapping[str, Any]],
                 new_configs: Sequence[Mapping[str, Any]], where: str | Path) -> list[str]:
    """Check that ``spec`` grows the zoo stored with ``stored_fingerprint`` (only adds models).

    Args:
        stored_fingerprint: the catalog's ``spec_fingerprint`` (JSON of the stored spec).
        spec: the new :class:`~zooscape.zoo.spec.ZooSpec`.
        stored_configs: model_id -> stored config (dataset, model, training sections) of the catalog.
        new_configs: the expanded configs of ``spec``.
        where: the zoo directory (for messages).

    Returns:
        the ids of the models the new spec adds.

    Raises:
        ZooExistsError: the new spec would change or drop existing models (message names the differing keys).
    """
    try:
        old = json.loads(stored_fingerprint)
    except (TypeError, ValueError):
        old = {}
    new = json.loads(spec.fingerprint())
    diffs = spec_differences(old, new) if old else ["the stored spec fingerprint is unreadable"]
    new_by_id = {c["model_id"]: c for c in new_configs}
    lost = [m for m, cfg in stored_configs.items()
            if m not in new_by_id or any(canonical_json(cfg[s]) != canonical_json(new_by_id[m][s])
                                         for s in CONFIG_SECTIONS)]
    if diffs or lost:
        if not diffs:
            added = sorted(set(new.get("grid", {})) - set(old.get("grid", {})))
            diffs = [f"[grid] '{k}': added, but the existing models have no such setting" for k in added] or [
                "the expansion of the new spec does not contain the existing models"]
        raise ZooExistsError(
            f"{where} holds a zoo created from a different spec (see {Path(where) / 'spec.toml'}): "
            + "; ".join(diffs) + f" ({len(lost)} of its {len(stored_configs)} models would change). A zoo can only "
            "grow: add grid values (e.g. seeds) and keep everything else; or use another --out directory")
    return [m for m in new_by_id if m not in stored_configs]


def regroup(configs: Sequence[dict[str, Any]], stored_groups: Mapping[str, str], max_population: int) -> list[Group]:
    """Training groups for a zoo some of whose models are already stored.

    Stored models keep their stored group; the others are grouped among themselves (:func:`group_configs`),
    and their configs' ``group_id`` is set accordingly.

    Args:
        configs: expanded configs of the (grown) spec; modified in place for new models.
        stored_groups: model_id -> group_id of the catalog.
        max_population: largest population.

    Returns:
        groups sorted by group id.
    """
    new = [c for c in configs if c["model_id"] not in stored_groups]
    groups = {g.group_id: g for g in group_configs(new, max_population)} if new else {}
    for g in groups.values():
        for c in new:
            if c["model_id"] in g.model_ids:
                c["group_id"] = g.group_id
    old: dict[str, list[dict[str, Any]]] = {}
    for c in configs:
        if c["model_id"] in stored_groups:
            c["group_id"] = stored_groups[c["model_id"]]
            old.setdefault(c["group_id"], []).append(c)
    for gid, members in old.items():
        groups[gid] = Group(group_id=gid, model_ids=tuple(sorted(c["model_id"] for c in members)),
                            key=group_key(members[0]))
    return [groups[k] for k in sorted(groups)]


def prepare_grown_zoo(store: ZooStore, spec: Any, spec_text: str, plan: Any) -> None:
    """Before training into an existing zoo: accept a grown spec (rewrite ``spec.toml`` and the fingerprint) and
    give ``plan`` the stored groups of existing models (called by the driver while it holds the zoo's lock).

    Args:
        store: the zoo's store.
        spec: the spec being trained.
        spec_text: its file's text.
        plan: the :class:`~zooscape.zoo.runner.ZooPlan` (its configs' group ids and its groups are updated).

    Raises:
        ZooExistsError: the spec would change existing models.
    """
    from zooscape._io import atomic_write_bytes
    from zooscape.zoo.catalog import Catalog

    if not is_zoo(store.root):
        return
    with Catalog(store.catalog_path) as catalog:
        rows = catalog.query("SELECT model_id, group_id, config FROM models")
        fingerprint = catalog.meta().get("spec_fingerprint")
        if not rows:
            return
        if fingerprint != spec.fingerprint():
            stored = {m: json.loads(c) for m, _, c in rows}
            check_growth(fingerprint or "", spec, stored, plan.configs, store.root)
            atomic_write_bytes(store.spec_path, spec_text.encode("utf-8"))
            catalog.set_meta({"spec_fingerprint": spec.fingerprint()})
    plan.groups = regroup(plan.configs, {m: g for m, g, _ in rows}, spec.max_population)


# ------------------------------------------------------------------------------------------------ merge


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def merge_zoos(a: str | Path, b: str | Path, out: str | Path, name: str | None = None) -> Path:
    """Write a zoo holding the models of zoos ``a`` and ``b`` (specs equal except for grid values).

    Shards are hard-linked where the file system allows (else copied); the catalog rows (models, metrics,
    checkpoints, analyses) of both are copied; a model present in both must be in the same training group and is
    taken from ``a``. Models still ``running`` become ``pending`` (resume files are not copied). The output is
    assembled in a temporary folder next to ``out`` and renamed into place.

    Args:
        a: first zoo.
        b: second zoo.
        out: new zoo directory (must not exist).
        name: zoo name of the merged spec (default: ``a``'s).

    Returns:
        ``out``.

    Raises:
        ValueError: the specs differ in more than grid values (message names the keys), or a model is in both
            zoos in different groups.
        FileExistsError: ``out`` exists.
    """
    import tomli_w

    from zooscape._io import atomic_write_bytes
    from zooscape.zoo.catalog import Catalog
    from zooscape.zoo.spec import load_spec, parse_spec

    a, b, out = Path(a), Path(b), Path(out)
    for z in (a, b):
        if not is_zoo(z):
            raise FileNotFoundError(f"{z} is not a zoo directory (no catalog.sqlite)")
    if out.exists():
        raise FileExistsError(f"{out} exists; merge writes a new zoo directory")
    sa, sb = load_spec(a / "spec.toml"), load_spec(b / "spec.toml")
    da, db = sa.to_dict(), sb.to_dict()
    diffs = spec_differences(da, db, growth=False)
    diffs = [d for d in diffs if "values removed" not in d]
    if diffs:
        raise ValueError(f"cannot merge {a} and {b}: their specs differ in " + "; ".join(diffs)
                         + " (only grid values may differ)")
    doc = json.loads(json.dumps(da))
    for key, values in db["grid"].items():
        seen = {canonical_json(v) for v in doc["grid"][key]}
        doc["grid"][key] += [v for v in values if canonical_json(v) not in seen]
    doc["zoo"]["name"] = name or sa.name
    doc["zoo"]["description"] = f"merge of {sa.name} ({a}) and {sb.name} ({b})"
    text = tomli_w.dumps(doc)
    merged = parse_spec(doc, out / "spec.toml")

    con_a = sqlite3.connect(f"file:{a / 'catalog.sqlite'}?mode=ro", uri=True)
    con_b = sqlite3.connect(f"file:{b / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        groups_a = dict(con_a.execute("SELECT model_id, group_id FROM models"))
        groups_b = dict(con_b.execute("SELECT model_id, group_id FROM models"))
        clash = sorted(m for m in set(groups_a) & set(groups_b) if groups_a[m] != groups_b[m])
        if clash:
            raise ValueError(f"cannot merge {a} and {b}: models {clash[:5]} are in both zoos in different training "
                             "groups")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            atomic_write_bytes(tmp / "spec.toml", text.encode("utf-8"))
            (tmp / "checkpoints").mkdir()
            with Catalog(tmp / "catalog.sqlite", create=True) as catalog, catalog.transaction() as con:
                con.execute("INSERT OR REPLACE INTO meta VALUES ('spec_fingerprint', ?)", (merged.fingerprint(),))
                for src, con_src, skip in ((a, con_a, set()), (b, con_b, set(groups_a))):
                    keep = lambda rows, skip=skip: [r for r in rows if r[0] not in skip]  # noqa: E731
                    con.executemany(
                        "INSERT INTO models VALUES (?, ?, ?, CASE WHEN ? = 'running' THEN 'pending' ELSE ? END, ?,"
                        " ?, ?, ?, ?)",
                        [(m, g, c, s, s, r, n, t, lo, u) for m, g, c, s, r, n, t, lo, u in keep(con_src.execute(
                            "SELECT model_id, group_id, config, status, reason, n_params, temperature, load, updated"
                            " FROM models"))])
                    con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?)",
                                    keep(con_src.execute("SELECT model_id, epoch, name, value FROM metrics")))
                    ckpts = keep(con_src.execute("SELECT model_id, epoch, kind, file FROM checkpoints"))
                    con.executemany("INSERT INTO checkpoints VALUES (?, ?, ?, ?)", ckpts)
                    for f in sorted({row[3] for row in ckpts}):
                        if not (tmp / f).exists():
                            _link_or_copy(src / f, tmp / f)
                    con.executemany(
                        "INSERT INTO analyses (model_id, other_id, epoch, metric, value, params, created)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [r for r in con_src.execute("SELECT model_id, other_id, epoch, metric, value, params, created"
                                                    " FROM analyses")
                         if not (r[0] in skip and (r[1] is None or r[1] in skip))])
                    for extra in ("curves", "lmc"):
                        for f in sorted((src / extra).glob("*")) if (src / extra).is_dir() else []:
                            if f.is_file() and not (tmp / extra / f.name).exists():
                                _link_or_copy(f, tmp / extra / f.name)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        con_a.close()
        con_b.close()
    return out

