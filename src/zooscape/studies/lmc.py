"""Linear-mode-connectivity jobs on zoo stores: the spawn (instability) experiment and zoo-wide pair barriers.

The analyses themselves live in :mod:`zooscape.connect` (pure functions of models and data); this module only
builds models and data from specs and catalogs, and writes the results to a catalog.

Spawn spec: a zoo spec (see ``docs/zoo-format.md``) plus an ``[lmc]`` section::

    [lmc]
    k1s = [0, 1, 2, 3, 5, 7, 10]   # spawn epochs (default; values >= training.epochs are dropped from the default)
    k2s = "all"                    # comparison epochs: "all" (every epoch after the smallest k1), "end", or a list
    replicates = 1                 # children per k1
    n_points = 25                  # alphas per linear path
    bn_mode = "interpolate"        # or "reset" (re-estimate BatchNorm statistics on the training split)
    splits = ["train", "test"]
    child_data_seeds = [...]       # optional, len(k1s) * replicates

Every grid cell of the spec is one main branch with its own children. The output directory is a zoo store:
main branches and children are ``models`` rows (children: ``<main_id>-k<k1>-r<replicate>``, their config has
their ``training.data_seed`` and ``derived.lmc``), per-epoch metrics are ``metrics`` rows, the main branch is
checkpointed (weights and optimizer state) at every ``k1`` and (weights) at every ``k2``, children at the end,
and every (k1, replicate, k2) gives ``analyses`` rows (``model_id`` = child, ``other_id`` = main, ``epoch`` =
k2, ``metric`` = ``distance`` or ``barrier_<loss|error>_<split>_<linear|mean|midpoint>``, ``params`` with
``experiment = "lmc_spawn"``, ``k1``, ``replicate``). ``lmc/<main_id>.json`` holds the records with the full
loss/error curves and ``lmc/<main_id>_instability.png`` the plot.

Pair barriers (:func:`pair_barriers`, ``zooscape lmc pairs``, with alignment and renormalisation) live in
:mod:`zooscape.studies.lmc_pairs` and are re-exported here; LMC measured during training in
:mod:`zooscape.studies.lmc_train`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from zooscape._io import atomic_write_bytes, json_ready, save_figure
from zooscape.studies.lmc_pairs import (  # noqa: F401  (the pair study, re-exported: one import for lmc jobs)
    PAIRS_EXPERIMENT,
    load_permutation,
    pair_barriers,
    pair_params,
    pair_records,
)
from zooscape.studies.lmc_train import LMC_DIR
from zooscape.zoo.build import build_member, build_model, build_train_config, load_data
from zooscape.zoo.catalog import Catalog
from zooscape.zoo.grid import canonical_json
from zooscape.zoo.lmc_section import LMC_SPAWN_KEYS, LmcKeyError, check_lmc_section
from zooscape.zoo.runner import plan_zoo
from zooscape.zoo.spec import SpecError, ZooSpec, dump_spec, parse_spec
from zooscape.zoo.store import ZooStore, is_zoo

__all__ = [
    "DEFAULT_K1S",
    "LMC_KEYS",
    "SpawnSpec",
    "load_permutation",
    "load_spawn_spec",
    "pair_barriers",
    "pair_params",
    "pair_records",
    "parse_spawn_spec",
    "run_spawn",
    "spawn_records",
]

DEFAULT_K1S: tuple[int, ...] = (0, 1, 2, 3, 5, 7, 10)
LMC_KEYS: dict[str, str] = LMC_SPAWN_KEYS
SPAWN_EXPERIMENT = "lmc_spawn"


@dataclass(frozen=True)
class SpawnSpec:
    """A parsed spawn spec.

    Attributes:
        zoo: the zoo part (dataset, model, training, grid, ...).
        lmc: validated ``[lmc]`` settings (``k1s`` is None when defaulted).
        path: the spec file.
    """

    zoo: ZooSpec
    lmc: dict[str, Any]
    path: str

    def fingerprint(self) -> str:
        """Hash of the zoo fingerprint and the ``[lmc]`` settings (a store holds one spawn spec).

        Returns:
            hex string.
        """
        text = self.zoo.fingerprint() + canonical_json(self.lmc)
        return "lmc-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def parse_spawn_spec(doc: Mapping[str, Any], file: str | Path = "<memory>") -> SpawnSpec:
    """Validate a spawn spec document (a zoo spec plus ``[lmc]``).

    The ``[lmc]`` section is checked by :func:`zooscape.zoo.lmc_section.check_lmc_section` (the same check as
    ``zooscape zoo validate``); keys of LMC during training (``every``, ``align``, ...) are accepted and ignored
    here.

    Args:
        doc: parsed TOML.
        file: file name for error messages.

    Returns:
        :class:`SpawnSpec`.

    Raises:
        SpecError: unknown or ill-typed ``[lmc]`` key, or any zoo-spec problem.
    """
    file = str(file)
    doc = dict(doc)
    try:
        raw = check_lmc_section(doc.pop("lmc", {}))
    except LmcKeyError as exc:
        raise SpecError(file, exc.key, exc.problem) from None
    lmc: dict[str, Any] = {"k1s": None, "k2s": "all", "replicates": 1, "n_points": 25, "bn_mode": "interpolate",
                           "splits": ["train", "test"], "child_data_seeds": None}
    lmc.update({k: v for k, v in raw.items() if k in LMC_KEYS})
    zoo = parse_spec(doc, file=file)
    return SpawnSpec(zoo=zoo, lmc=lmc, path=file)


def load_spawn_spec(path: str | Path) -> SpawnSpec:
    """Read and validate a spawn spec file.

    Args:
        path: TOML file.

    Returns:
        :class:`SpawnSpec`.

    Raises:
        FileNotFoundError: no such file.
        SpecError: invalid TOML or spec.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"spec file {path} does not exist")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, "<toml>", f"invalid TOML: {exc}") from exc
    return parse_spawn_spec(doc, file=path)


def _epochs_for(lmc: Mapping[str, Any], epochs: int, file: str) -> tuple[list[int], list[int]]:
    if lmc["k1s"] is None:
        k1s = [k for k in DEFAULT_K1S if k < epochs]
    else:
        k1s = sorted(set(lmc["k1s"]))
        bad = [k for k in k1s if not 0 <= k < epochs]
        if bad:
            raise SpecError(file, "[lmc] 'k1s'", f"spawn epochs must lie in [0, {epochs - 1}], got {bad}")
    k2 = lmc["k2s"]
    if k2 == "all":
        k2s = list(range(min(k1s) + 1, epochs + 1))
    elif k2 == "end":
        k2s = [epochs]
    else:
        k2s = sorted(set(k2))
        bad = [k for k in k2s if not 1 <= k <= epochs]
        if bad:
            raise SpecError(file, "[lmc] 'k2s'", f"comparison epochs must lie in [1, {epochs}], got {bad}")
    return k1s, k2s


def _numeric(row: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def child_id(main_id: str, k1: int, replicate: int) -> str:
    """Catalog id of a spawned child.

    Args:
        main_id: the main branch's model id.
        k1: spawn epoch.
        replicate: index among the children spawned at ``k1``.

    Returns:
        ``"<main_id>-k<k1>-r<replicate>"``.
    """
    return f"{main_id}-k{k1}-r{replicate}"


def run_spawn(
    spec_path: str | Path,
    out_dir: str | Path,
    device: str = "auto",
    plot: tuple[str, str, str] = ("error", "test", "linear"),
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the instability (spawn) experiment of a spec for every grid cell and store it in ``out_dir``.

    Main branches already recorded as done in ``out_dir`` are skipped (re-running finishes an interrupted run).

    Args:
        spec_path: spawn spec (zoo spec plus ``[lmc]``).
        out_dir: output zoo directory (created).
        device: torch device for training and evaluation.
        plot: ``(metric, split, definition)`` of the saved instability plot.
        progress: optional ``fn(message)``.

    Returns:
        The records of the main branches run now (one flat dict per (k1, replicate, k2) with ``main_id``).

    Raises:
        SpecError: invalid spec (nothing written).
        ZooExistsError: ``out_dir`` holds another zoo or other files.
        RuntimeError: another process writes to ``out_dir``.

    References:
        Frankle, Dziugaite, Roy, Carbin (2020), "Linear Mode Connectivity and the Lottery Ticket Hypothesis".
    """
    from zooscape.connect.plot import plot_instability
    from zooscape.connect.spawn import instability_analysis

    spec = load_spawn_spec(spec_path)
    plan = plan_zoo(spec.zoo)
    say = progress or (lambda message: None)
    windows = {c["model_id"]: _epochs_for(spec.lmc, int(c["training"]["epochs"]), spec.path) for c in plan.configs}
    if spec.lmc["child_data_seeds"] is not None:
        for k1s, _ in windows.values():
            if len(spec.lmc["child_data_seeds"]) != len(k1s) * spec.lmc["replicates"]:
                raise SpecError(spec.path, "[lmc] 'child_data_seeds'",
                                f"needs len(k1s) * replicates = {len(k1s) * spec.lmc['replicates']} seeds")
    store = ZooStore(out_dir)
    all_records: list[dict[str, Any]] = []
    with store.lock():
        catalog = store.create_or_check(dump_spec(spec.zoo), spec.fingerprint())
        try:
            catalog.set_meta({SPAWN_EXPERIMENT: spec.lmc})
            statuses = catalog.statuses()
            for cfg in plan.configs:
                main_id = cfg["model_id"]
                if statuses.get(main_id) == "done":
                    say(f"{main_id}: already done, skipped")
                    continue
                k1s, k2s = windows[main_id]
                records = _spawn_one(cfg, k1s, k2s, spec.lmc, store, catalog, device, say,
                                     instability_analysis, plot_instability, plot)
                all_records.extend(records)
        finally:
            catalog.close()
    return all_records


def _spawn_one(
    cfg: dict[str, Any], k1s: list[int], k2s: list[int], lmc: Mapping[str, Any], store: ZooStore,
    catalog: Catalog, device: str, say: Callable[[str], None], analysis: Callable[..., Any],
    plotter: Callable[..., Any], plot: tuple[str, str, str],
) -> list[dict[str, Any]]:
    main_id = cfg["model_id"]
    group_id = f"lmc-{main_id}"
    data = load_data(cfg["dataset"])
    member = build_member(cfg["training"])
    model = build_model(cfg["model"], seed=member.seed, model_args=cfg["derived"].get("model_args"))
    train_config = build_train_config(cfg["training"])
    main_seed = member.seed if member.data_seed is None else int(member.data_seed)
    say(f"{main_id}: main branch + children at k1={k1s}, compared at k2={k2s}")
    result = analysis(
        model, data, train_config, k1s, k2s, seed=main_seed, replicates=lmc["replicates"],
        child_data_seeds=lmc["child_data_seeds"], n_points=lmc["n_points"], splits=tuple(lmc["splits"]),
        bn_mode=lmc["bn_mode"], device=device, progress=lambda m: say(f"{main_id}: {m}"),
    )  # fmt: skip
    seeds = result.config["child_data_seeds"]
    labels = [(k1, r) for k1 in result.config["k1s"] for r in range(lmc["replicates"])]

    main_cfg = copy.deepcopy(cfg)
    main_cfg["group_id"] = group_id
    main_cfg["derived"]["lmc"] = {"role": "main", "k1s": k1s, "k2s": k2s}
    configs = [main_cfg]
    for (k1, r), seed in zip(labels, seeds):
        child = copy.deepcopy(main_cfg)
        child["model_id"] = child_id(main_id, k1, r)
        child["training"]["data_seed"] = int(seed)
        child["derived"]["lmc"] = {"role": "child", "parent": main_id, "k1": k1, "replicate": r}
        configs.append(child)
    catalog.add_models(configs)

    # checkpoints: main at every k1 (weights + optimizer) and k2 (weights); children at the end (weights)
    epochs = int(cfg["training"]["epochs"])
    weights: dict[int, dict[str, Any]] = {}
    for k1, state in result.main_checkpoints.items():
        weights.setdefault(k1, {})[main_id] = state.model_states[0]
    for k2, state in result.main_weights.items():
        weights.setdefault(k2, {})[main_id] = state
    for (k1, r), state in result.child_final_states.items():
        weights.setdefault(epochs, {})[child_id(main_id, k1, r)] = state
    ckpt_rows = []
    for epoch, by_model in sorted(weights.items()):
        rel = store.write_shard(group_id, epoch, "weights", by_model)
        ckpt_rows += [(mid, epoch, "weights", rel) for mid in by_model]
    for k1, state in result.main_checkpoints.items():
        rel = store.write_shard(group_id, k1, "optimizer", {main_id: state.optimizer_states[0]})
        ckpt_rows.append((main_id, k1, "optimizer", rel))

    metric_rows = [
        (main_id, e, name, v) for e, row in enumerate(result.main_history) for name, v in _numeric(row).items()
    ]
    for (k1, r), history in result.child_history.items():
        cid = child_id(main_id, k1, r)
        for row in history:
            metric_rows += [(cid, int(row["epoch"]), n, v) for n, v in _numeric(row).items() if n != "epoch"]

    analyses = []
    records = []
    for rec in result.records:
        cid = child_id(main_id, rec["k1"], rec["replicate"])
        params = {"experiment": SPAWN_EXPERIMENT, "k1": rec["k1"], "replicate": rec["replicate"],
                  "n_points": lmc["n_points"], "bn_mode": lmc["bn_mode"]}
        for key, value in rec.items():
            if key == "distance" or key.startswith("barrier_"):
                analyses.append({"model_id": cid, "other_id": main_id, "epoch": rec["k2"], "metric": key,
                                 "value": value, "params": params})
        records.append({"main_id": main_id, "child_id": cid, **rec})
    statuses = {c["model_id"]: ("done", None) for c in configs}
    # files first, then one catalog transaction per kind; the main branch is marked done last
    lmc_dir = store.root / LMC_DIR
    lmc_dir.mkdir(exist_ok=True)
    payload = {"main_id": main_id, "settings": result.config, "records": records,
               "paths": [p.to_dict() for p in result.paths]}
    atomic_write_bytes(lmc_dir / f"{main_id}.json", json.dumps(json_ready(payload), indent=1).encode())
    metric, split, definition = plot
    if any(f"barrier_{metric}_{split}_{definition}" in r for r in records):
        fig = plotter(records, metric, split, definition, title=f"{main_id}: {definition} {split} {metric} barrier")
        save_figure(fig, lmc_dir / f"{main_id}_instability.png")
    catalog.add_analyses(analyses)
    catalog.record(metrics=metric_rows, checkpoints=ckpt_rows,
                   statuses={m: s for m, s in statuses.items() if m != main_id})
    catalog.record(statuses={main_id: statuses[main_id]})
    return records


def spawn_records(zoo_dir: str | Path, main_id: str | None = None) -> list[dict[str, Any]]:
    """Read spawn results back from a catalog as flat records (one per child and k2).

    Args:
        zoo_dir: output directory of :func:`run_spawn`.
        main_id: only this main branch (default: all).

    Returns:
        Dicts with ``main_id``, ``child_id``, ``k1``, ``k2``, ``replicate``, ``distance`` and every stored
        ``barrier_*`` metric.

    Raises:
        FileNotFoundError: ``zoo_dir`` is not a zoo.
    """
    store = ZooStore(zoo_dir)
    if not is_zoo(store.root):
        raise FileNotFoundError(f"{zoo_dir} is not a zoo directory (no catalog)")
    with Catalog(store.catalog_path, readonly=True) as catalog:
        rows = catalog.query("SELECT model_id, other_id, epoch, metric, value, params FROM analyses ORDER BY id")
    records: dict[tuple[str, str, int], dict[str, Any]] = {}
    for child, main, epoch, metric, value, params_text in rows:
        params = json.loads(params_text)
        if params.get("experiment") != SPAWN_EXPERIMENT or (main_id is not None and main != main_id):
            continue
        rec = records.setdefault((main, child, int(epoch)), {
            "main_id": main, "child_id": child, "k1": int(params["k1"]), "k2": int(epoch),
            "replicate": int(params["replicate"]),
        })  # fmt: skip
        rec[metric] = math.nan if value is None else float(value)
    return sorted(records.values(), key=lambda r: (r["main_id"], r["k1"], r["replicate"], r["k2"]))


