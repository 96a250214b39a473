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

Pair barriers (:func:`pair_barriers`): for every grid cell of an existing zoo (models that differ only in
``training.seed`` / ``training.data_seed``), every pair of models at one epoch, stored as ``analyses`` rows with
``experiment = "lmc_pairs"``.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from zooscape._io import atomic_write_bytes, json_ready, save_figure
from zooscape.studies.cells import zoo_cells
from zooscape.studies.jobs import PairTask
from zooscape.studies.lmc_train import LMC_DIR, pair_values
from zooscape.zoo.build import build_member, build_model, build_train_config, load_data
from zooscape.zoo.catalog import Catalog
from zooscape.zoo.grid import canonical_json
from zooscape.zoo.lmc_section import LMC_SPAWN_KEYS, LmcKeyError, check_lmc_section
from zooscape.zoo.runner import plan_zoo
from zooscape.zoo.spec import SpecError, ZooSpec, dump_spec, parse_spec
from zooscape.zoo.store import ZooStore, is_zoo

__all__ = [
    "ALIGNS",
    "DEFAULT_K1S",
    "LMC_KEYS",
    "RENORMS",
    "LmcPairPlan",
    "LmcPairTask",
    "SpawnSpec",
    "load_permutation",
    "load_spawn_spec",
    "pair_barriers",
    "pair_params",
    "pair_records",
    "pair_values",
    "permutation_bytes",
    "permutation_path",
    "plan_pairs",
    "run_pair_task",
    "parse_spawn_spec",
    "run_spawn",
    "spawn_records",
]

DEFAULT_K1S: tuple[int, ...] = (0, 1, 2, 3, 5, 7, 10)
LMC_KEYS: dict[str, str] = LMC_SPAWN_KEYS
SPAWN_EXPERIMENT = "lmc_spawn"
PAIRS_EXPERIMENT = "lmc_pairs"


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


# ---------------------------------------------------------------------------------------------------- zoo pairs

#: Alignment methods of ``lmc pairs`` (``--align``).
ALIGNS: tuple[str, ...] = ("none", "weight", "activation")
#: Renormalisations of ``lmc pairs`` (``--renorm``) and of LMC during training.
RENORMS: tuple[str, ...] = ("none", "reset_bn", "repair", "rescale", "reshift")
PERMS_DIR = "perms"


def pair_params(n_points: int = 25, splits: Sequence[str] = ("train", "test"), align: str = "none",
                renorm: str = "none", seed: int = 0) -> dict[str, Any]:
    """The ``params`` stored with every row of :func:`pair_barriers` (identifies a setting).

    Args:
        n_points: alphas per path.
        splits: evaluated splits.
        align: ``"none"``, ``"weight"`` or ``"activation"``.
        renorm: ``"none"``, ``"reset_bn"``, ``"repair"``, ``"rescale"`` or ``"reshift"``.
        seed: seed of weight matching's visiting order.

    Returns:
        JSON-ready dict with ``experiment = "lmc_pairs"``.

    Raises:
        ValueError: unknown align/renorm, ``n_points < 2`` or no split.
    """
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
    if renorm not in RENORMS:
        raise ValueError(f"renorm must be one of {RENORMS}, got {renorm!r}")
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}")
    splits = [splits] if isinstance(splits, str) else list(splits)
    if not splits:
        raise ValueError("splits must name at least one split")
    return {"experiment": PAIRS_EXPERIMENT, "n_points": int(n_points), "splits": splits, "align": align,
            "renorm": renorm, "seed": int(seed)}


class LmcPairTask(PairTask):
    """One seed pair of a grid cell at one epoch: align, renormalise, evaluate the linear paths (picklable).

    Fields as :class:`~zooscape.studies.jobs.PairTask`: ``model_id`` is the ``alpha = 0`` endpoint and the
    reference of the alignment, ``other_id`` the permuted one, ``params`` from :func:`pair_params`.
    """


def permutation_bytes(perm: Any, metadata: Mapping[str, Any]) -> bytes:
    """A permutation as a safetensors file (one int64 ``[n]`` tensor per group, JSON metadata).

    Args:
        perm: :class:`~zooscape.align.Permutation` (group -> ``[n]`` int64).
        metadata: JSON-ready description (pair, epoch, params).

    Returns:
        file bytes.
    """
    from safetensors.torch import save

    return save({g: perm[g].contiguous() for g in perm}, metadata={"format": "zooscape-permutation",
                                                                    "info": json.dumps(json_ready(dict(metadata)))})


def load_permutation(path: str | Path) -> dict[str, Any]:
    """Read a permutation file written by :func:`pair_barriers` (safetensors; never pickle).

    Args:
        path: ``ZOO/lmc/perms/<a>-<b>-e<epoch>-<tag>.safetensors``.

    Returns:
        group -> ``[n]`` int64 tensor (pass it with the spec to :class:`~zooscape.align.Permutation`).
    """
    from safetensors.torch import load_file

    return load_file(str(path))


def run_pair_task(task: LmcPairTask) -> dict[str, Any]:
    """Load the pair at the epoch (read-only), align, renormalise, evaluate; return its rows and files.

    Only the pair's two models are loaded (bounded memory per task). The result depends only on the task.

    Args:
        task: the task.

    Returns:
        dict with ``record`` (``model_id``, ``other_id``, ``epoch``, ``cell`` and every value of
        :func:`pair_values`), ``rows`` (for :meth:`Catalog.add_analyses`) and ``perm`` (permutation file bytes,
        None without alignment).

    References:
        Ainsworth et al. (2023), "Git Re-Basin"; Jordan et al. (2023), "REPAIR"; Qu & Horvath (2024).
    """
    from zooscape.align.lmc import pair_barriers_aligned
    from zooscape.train.trainer import resolve_device
    from zooscape.zoo.reader import open_zoo

    params = task.params
    device = str(resolve_device(task.device))
    with open_zoo(task.root) as zoo:
        a, b = zoo.load_model(task.model_id, task.epoch, device=device), zoo.load_model(task.other_id, task.epoch,
                                                                                       device=device)
        data = zoo.data(task.model_id)
    paths, alignment = pair_barriers_aligned(a, b, data, params["align"], params["renorm"], params["n_points"],
                                             splits=tuple(params["splits"]), seed=params["seed"], device=device)
    values = pair_values(paths, alignment)
    pair = {"model_id": task.model_id, "other_id": task.other_id, "epoch": task.epoch}
    perm = None
    if alignment.perm is not None:
        perm = permutation_bytes(alignment.perm, {**pair, "params": params, "objective": alignment.objective})
    return {
        "record": {**pair, "cell": task.cell, **values},
        "rows": [{**pair, "metric": k, "value": v, "params": params} for k, v in values.items()],
        "perm": perm,
    }


def permutation_path(root: str | Path, model_id: str, other_id: str, epoch: int, params: Mapping[str, Any]) -> Path:
    """Where :func:`pair_barriers` keeps the permutation of a pair (``ZOO/lmc/perms/``).

    Args:
        root: zoo directory.
        model_id: reference model of the alignment.
        other_id: permuted model.
        epoch: epoch.
        params: settings from :func:`pair_params`.

    Returns:
        path of the safetensors file (tag = hash of the settings).
    """
    tag = hashlib.sha256(canonical_json(dict(params)).encode()).hexdigest()[:10]
    return Path(root) / LMC_DIR / PERMS_DIR / f"{model_id}-{other_id}-e{int(epoch)}-{tag}.safetensors"


@dataclass
class LmcPairPlan:
    """Tasks of a :func:`pair_barriers` run.

    Attributes:
        tasks: pairs still to compute, by cell, then pair.
        done: pairs already stored with the same settings.
        skipped: messages about models left out (no checkpoint at the epoch).
        labels: cell index -> :attr:`Cell.label`.
    """

    tasks: list[LmcPairTask]
    done: list[LmcPairTask]
    skipped: list[str]
    labels: dict[int, str]


def plan_pairs(zoo: Any, params: Mapping[str, Any], epoch: int | None = None, force: bool = False,
               device: str = "auto") -> LmcPairPlan:
    """Every seed pair of each grid cell not yet stored with ``params``.

    Args:
        zoo: an open :class:`~zooscape.zoo.reader.Zoo`.
        params: settings from :func:`pair_params`.
        epoch: checkpointed epoch (default: each cell's ``training.epochs``).
        force: plan stored pairs again.
        device: torch device of the tasks.

    Returns:
        :class:`LmcPairPlan`.
    """
    from zooscape.studies.jobs import stored_keys

    marker = f"barrier_loss_{params['splits'][0]}_linear"
    done_keys = set() if force else stored_keys(zoo.catalog, marker, params)
    plan = LmcPairPlan([], [], [], {})
    for cell in zoo_cells(zoo):
        ids = list(cell.model_ids)
        plan.labels[cell.index] = cell.label
        e = int(zoo.config(ids[0])["training"]["epochs"]) if epoch is None else int(epoch)
        usable = [m for m in ids if e in zoo.epochs(m, "weights")]
        if len(ids) > len(usable):
            plan.skipped.append(f"{cell.label}: {len(ids) - len(usable)} model(s) have no checkpoint at epoch {e}, "
                                "skipped")
        for a, b in itertools.combinations(usable, 2):
            task = LmcPairTask(str(zoo.path), a, b, e, cell.index, dict(params), device)
            (plan.done if (a, b, e) in done_keys else plan.tasks).append(task)
    return plan


def _cell_line(label: str, records: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> str:
    split = params["splits"][-1]
    key = f"barrier_error_{split}_linear"
    if not records or key not in records[0]:
        key = f"barrier_loss_{split}_linear"
    mean = lambda k: sum(r[k] for r in records) / len(records)  # noqa: E731
    parts = [f"naive {mean('naive_' + key):.4f}"]
    if f"aligned_{key}" in records[0]:
        parts.append(f"{params['align']} {mean('aligned_' + key):.4f}")
    if params["renorm"] != "none":
        parts.append(f"+{params['renorm']} {mean(key):.4f}")
    return f"{label}: {len(records)} pair(s), {key[8:]}: " + " -> ".join(parts)


def pair_barriers(
    zoo_dir: str | Path,
    epoch: int | None = None,
    n_points: int = 25,
    *,
    align: str = "none",
    renorm: str = "none",
    splits: Sequence[str] = ("train", "test"),
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    bar: bool = False,
    engine: Any = "local",
    workers: int = 1,
    engine_options: Mapping[str, Any] | None = None,
    bn_mode: str | None = None,
) -> list[dict[str, Any]]:
    """Barriers between all seed pairs of every grid cell of a zoo, before and after alignment and renormalisation.

    Grid cells are those of :mod:`zooscape.studies.cells`. Every pair is one :class:`LmcPairTask` run by
    :func:`run_pair_task` on the engine (in-process, ``workers`` local processes or Ray; each task loads only its
    two models); the driver commits each pair's rows (and writes its permutation file) as it finishes, so an
    interrupted run keeps the finished pairs and re-running skips them. Rows: ``analyses`` with
    ``model_id`` < ``other_id``, the metrics of :func:`pair_values` and ``params`` from :func:`pair_params`.
    The permutation that aligns ``other_id`` to ``model_id`` is kept bit for bit in
    :func:`permutation_path` (``apply_permutation(other, Permutation(spec, load_permutation(path)))`` gives the
    aligned model).

    Args:
        zoo_dir: a trained zoo directory.
        epoch: checkpointed epoch to compare (default: each cell's ``training.epochs``).
        n_points: alphas per path.
        align: ``"none"``, ``"weight"`` (Git Re-Basin weight matching) or ``"activation"``.
        renorm: ``"none"``, ``"reset_bn"``, ``"repair"``, ``"rescale"`` or ``"reshift"`` at every alpha.
        splits: splits to evaluate.
        seed: seed of weight matching.
        device: torch device.
        force: recompute pairs already stored with these settings.
        progress: optional ``fn(message)``: one line per finished cell with its settings.
        bar: show a tqdm bar over pairs (stderr).
        engine: ``"local"``, ``"ray"`` or an :class:`~zooscape.zoo.engines.Engine`.
        workers: worker processes of the local engine (1 = in this process).
        engine_options: keyword arguments of the engine.
        bn_mode: deprecated: ``"reset"`` means ``renorm="reset_bn"``.

    Returns:
        One dict per pair of the zoo stored with these settings (computed now or before), in cell and pair
        order: ``model_id``, ``other_id``, ``epoch``, ``cell``, ``cell_label`` and every value of
        :func:`pair_values`.

    Raises:
        FileNotFoundError: not a zoo directory.
        ValueError: bad settings.
        RuntimeError: another process is writing the zoo.

    References:
        Frankle et al. (2020); Entezari et al. (2022); Ainsworth et al. (2023); Jordan et al. (2023);
        Qu & Horvath (2024).
    """
    from tqdm.auto import tqdm

    from zooscape.studies.jobs import commit_task_results, zoo_store
    from zooscape.zoo.engines import get_engine
    from zooscape.zoo.reader import open_zoo

    if bn_mode is not None:
        renorm = {"reset": "reset_bn", "interpolate": renorm}.get(bn_mode, bn_mode)
    params = pair_params(n_points, splits, align, renorm, seed)
    store = zoo_store(zoo_dir)
    say = progress or (lambda message: None)
    eng = get_engine(engine, workers, **dict(engine_options or {}))
    with open_zoo(store.root) as zoo:
        plan = plan_pairs(zoo, params, epoch=epoch, force=force, device=device)
    for message in plan.skipped:
        say(message)
    if plan.done:
        say(f"{len(plan.done)} pair(s) already stored with these settings, skipped")
    left = {c: sum(t.cell == c for t in plan.tasks) for c in plan.labels}
    finished: dict[int, list[dict[str, Any]]] = {}
    with tqdm(total=len(plan.tasks), unit="pair", desc="lmc pairs", disable=not bar or not plan.tasks) as pbar:
        write = (lambda m: pbar.write(m, file=sys.stderr)) if bar and plan.tasks else say

        def store_perm(result: dict[str, Any]) -> None:
            if result["perm"] is not None:
                rec = result["record"]
                path = permutation_path(store.root, rec["model_id"], rec["other_id"], rec["epoch"], params)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, result["perm"])

        def report(_: int, result: dict[str, Any]) -> None:
            rec = result["record"]
            pbar.update(1)
            finished.setdefault(rec["cell"], []).append(rec)
            left[rec["cell"]] -= 1
            if left[rec["cell"]] == 0 and progress is not None:
                write(_cell_line(plan.labels[rec["cell"]], finished[rec["cell"]], params))

        commit_task_results(store, eng, run_pair_task, plan.tasks, before_commit=store_perm, on_result=report)
    wanted = {(t.model_id, t.other_id, t.epoch) for t in plan.tasks + plan.done}
    records = [r for r in pair_records(store.root, params) if (r["model_id"], r["other_id"], r["epoch"]) in wanted]
    for r in records:
        r["cell_label"] = plan.labels.get(r["cell"], f"cell {r['cell']}")
    return records


def pair_records(zoo_dir: str | Path, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Read stored ``lmc pairs`` results back, one flat record per (pair, epoch, settings).

    Args:
        zoo_dir: a zoo directory.
        params: only rows stored with these settings (:func:`pair_params`); default all.

    Returns:
        Dicts with ``model_id``, ``other_id``, ``epoch``, ``cell`` (index), ``params`` and every stored value,
        sorted by cell, pair and epoch.

    Raises:
        FileNotFoundError: not a zoo directory.
    """
    from zooscape.studies.jobs import experiment_records, zoo_store
    from zooscape.zoo.reader import open_zoo

    store = zoo_store(zoo_dir)
    with open_zoo(store.root) as zoo:
        records = experiment_records(zoo.catalog, PAIRS_EXPERIMENT)
        cell_of = {m: c.index for c in zoo_cells(zoo) for m in c.model_ids}
    wanted = None if params is None else canonical_json(dict(params))
    records = [r for r in records if wanted is None or canonical_json(r["params"]) == wanted]
    for r in records:
        r["cell"] = cell_of.get(r["model_id"], -1)
    return sorted(records, key=lambda r: (r["cell"], r["model_id"], r["other_id"], r["epoch"]))
