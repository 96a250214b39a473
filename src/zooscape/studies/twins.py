"""Sparsification studies on zoo stores: sparsified twins and one-shot pruning with re-normalisation.

The analyses live in :mod:`zooscape.sparsify` (pure functions of models and data); this module builds their inputs
from a zoo and writes their results to the zoo's catalog.

**Twins** (:func:`sparsify_twins`, ``zooscape sparsify twins``): every finished grid member of the zoo gets a
*sparsified twin* in the same catalog: a ``models`` row with id ``<source_id>-twin`` whose config is the source's
with ``training.epochs`` = the sparsification epochs (and any overridden optimiser settings) and a
``derived.twin`` section ``{"source": <source_id>, "from_epoch": E, "kl_scale", "kl_reduction", "estimator",
"log_sigma2_init", "threshold"}`` (twins stored before ``kl_reduction``/``estimator`` existed read as ``"elbo"`` /
``"local"``, what they were trained with).
:meth:`zooscape.zoo.Zoo.configs` / ``table()`` show it as the columns ``kind`` (``"twin"``; ``"model"`` for
grid members) and ``source_id``. The twins of one grid cell train as one population (variational dropout from
the source's weights at ``from_epoch``); every epoch stores ``metrics`` rows (``test_acc``, ``train_loss``, ...,
``sparsity``, ``kl``, ``kl_weight``) and a ``weights`` checkpoint holding the *deterministic sparse* weights with
the source architecture's keys (pruned weights are zeros), so ``Zoo.load_model`` and ``Zoo.dataset`` read twins
like any model. A group's resume file holds the full variational state (``log_sigma2`` and the optimiser state):
an interrupted run continues after its last finished epoch; finished twins are skipped.

**Pruning** (:func:`prune_zoo`, ``zooscape sparsify prune``): every finished model (grid members by default) is
pruned one-shot with each method and sparsity, optionally re-normalised, and evaluated on the test split;
``analyses`` rows ``metric`` in ``test_acc``, ``test_loss``, ``sparsity`` with ``params`` ``{"experiment":
"prune", "method", "sparsity", "renorm", "n_samples", "scope", "block_size", "damping", "seed"}``; the Fisher
pruners (``diagfisher``, ``woodfisherblock``) also store ``"fisher"`` (``"empirical"`` | ``"exact"``) and
``"split"`` (the split the Fisher is estimated on), so results of different Fisher estimates are never mixed (rows
stored before these keys existed count as ``fisher="empirical"``, ``split="train"``, what they were computed with).
With ``lmc=True``, every seed pair of a grid cell
is aligned (weight matching), both are pruned, and the barrier between them is stored before and after each
re-normalisation (``experiment = "prune_lmc"``, ``other_id`` = the second model). Stored results are skipped.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zooscape.studies.cells import zoo_cells
from zooscape.studies.jobs import commit_task_results, stored_keys, zoo_store
from zooscape.zoo.build import build_member, build_train_config
from zooscape.zoo.catalog import FINISHED, Catalog
from zooscape.zoo.engines import Engine, emit, get_engine
from zooscape.zoo.recorder import GroupRecorder
from zooscape.zoo.runner import _Driver
from zooscape.zoo.task import _EpochLines, _EpochWriter, _start_journal, _write_epoch, read_resume

__all__ = ["PruneTask", "TwinTask", "plan_twins", "prune_zoo", "run_prune_task", "run_twin_group",
           "sparsify_twins", "twin_id"]

TWIN_SUFFIX = "-twin"
#: Optimiser settings a twin run may override (the rest of a twin's training section is its source's).
TRAIN_OVERRIDES = ("optimizer", "lr", "batch_size", "weight_decay", "momentum")


def twin_id(source_id: str) -> str:
    """Model id of a source model's sparsified twin: ``"<source_id>-twin"``."""
    return f"{source_id}{TWIN_SUFFIX}"


@dataclass
class TwinTask:
    """One population of twins (the finished models of one grid cell); picklable.

    Args:
        root: zoo directory.
        group_id: the twins' group.
        model_ids: twin ids, in population order.
        source_ids: their sources, same order.
        from_epochs: the source checkpoint each twin starts from.
        configs: the twins' nested configs (``derived.twin`` included).
        device: torch device.
    """

    root: str
    group_id: str
    model_ids: list[str]
    source_ids: list[str]
    from_epochs: list[int]
    configs: list[dict[str, Any]]
    device: str = "auto"


def _twin_config(source_cfg: Mapping[str, Any], source_id: str, from_epoch: int, epochs: int,
                 settings: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    cfg = {k: copy.deepcopy(source_cfg[k]) for k in ("dataset", "model", "training")}
    cfg["training"].update({k: v for k, v in overrides.items() if v is not None})
    cfg["training"]["epochs"] = int(epochs)
    derived = {k: v for k, v in copy.deepcopy(source_cfg.get("derived", {})).items() if k != "lmc"}
    derived["twin"] = {"source": source_id, "from_epoch": int(from_epoch), **settings}
    cfg["derived"] = derived
    return cfg


#: What twins stored before these settings existed were trained with.
_LEGACY_TWIN = {"kl_reduction": "elbo", "estimator": "local"}


def _stored_twin_config(stored: Mapping[str, Any]) -> dict[str, Any]:
    cfg = json.loads(json.dumps(dict(stored)))
    twin = cfg.get("derived", {}).get("twin")
    if isinstance(twin, dict):
        for k, v in _LEGACY_TWIN.items():
            twin.setdefault(k, v)
    return cfg


def plan_twins(zoo: Any, *, epochs: int = 25, from_epoch: int | str = "last", kl_scale: float = 1e-2,
               kl_reduction: str = "model_zoos", estimator: str = "weight",
               log_sigma2_init: float = -10.0, threshold: float = 3.0, overrides: Mapping[str, Any] | None = None,
               model_ids: Sequence[str] | None = None, device: str = "auto") -> tuple[list[TwinTask], list[str]]:
    """Twin tasks of a zoo: one per grid cell with finished sources; twins recorded as finished are left out.

    Args:
        zoo: an open :class:`~zooscape.zoo.reader.Zoo`.
        epochs: sparsification epochs.
        from_epoch: ``"last"`` (each source's last weights checkpoint) or an epoch every source has.
        kl_scale, kl_reduction, estimator, log_sigma2_init, threshold: variational-dropout settings (see
            :func:`zooscape.sparsify.train_twins`).
        overrides: training settings replacing the source's (keys in :data:`TRAIN_OVERRIDES`).
        model_ids: only these sources.
        device: torch device of the tasks.

    Returns:
        ``(tasks, messages)`` (why sources were skipped).

    Raises:
        ValueError: bad settings, an unknown override, or twins stored with other settings.
    """
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(TRAIN_OVERRIDES))
    if unknown:
        raise ValueError(f"cannot override training settings {unknown}; allowed: {list(TRAIN_OVERRIDES)}")
    from zooscape.sparsify import ESTIMATORS, KL_REDUCTIONS

    if kl_reduction not in KL_REDUCTIONS or estimator not in ESTIMATORS:
        raise ValueError(f"kl_reduction must be one of {KL_REDUCTIONS} (got {kl_reduction!r}) and estimator one of "
                         f"{ESTIMATORS} (got {estimator!r})")
    settings = {"kl_scale": float(kl_scale), "kl_reduction": kl_reduction, "estimator": estimator,
                "log_sigma2_init": float(log_sigma2_init), "threshold": float(threshold)}
    statuses = zoo.catalog.statuses()
    messages: list[str] = []
    tasks = []
    for cell in zoo_cells(zoo, model_ids):
        sources, starts, twins, configs = [], [], [], []
        for sid in cell.model_ids:
            if statuses.get(sid) not in FINISHED:
                messages.append(f"{sid}: not finished ({statuses.get(sid)}), no twin")
                continue
            have = zoo.epochs(sid, "weights")
            start = (max(have) if have else None) if from_epoch == "last" else int(from_epoch)
            if start is None or start not in have:
                messages.append(f"{sid}: no weights checkpoint at epoch {from_epoch} (have {have}), no twin")
                continue
            cfg = _twin_config(zoo.config(sid), sid, start, epochs, settings, overrides)
            tid = twin_id(sid)
            if tid in statuses:
                stored = _stored_twin_config(zoo.config(tid))
                if {k: stored.get(k) for k in cfg} != json.loads(json.dumps(cfg)):
                    raise ValueError(f"twin {tid} is stored with other settings (derived.twin "
                                     f"{stored.get('derived', {}).get('twin')}, training {stored.get('training')});"
                                     " use the same settings to resume, or another zoo")
            sources.append(sid)
            starts.append(start)
            twins.append(tid)
            configs.append(cfg)
        if not twins or all(statuses.get(t) in FINISHED for t in twins):
            continue
        digest = hashlib.sha1(json.dumps([twins, configs], sort_keys=True).encode()).hexdigest()[:12]
        tasks.append(TwinTask(str(zoo.path), f"twin-{digest}", twins, sources, starts, configs, device))
    return tasks, messages


def run_twin_group(task: TwinTask) -> dict[str, Any]:
    """Train (or resume) the twins of one task; writes shards and the resume file, emits catalog rows.

    Returns:
        ``{"type": "done", "group_id", "statuses": {twin_id: (status, reason)}}``.
    """
    from zooscape.sparsify import sparse_state_dict, train_twins
    from zooscape.zoo.reader import open_zoo
    from zooscape.zoo.store import ZooStore

    store = ZooStore(task.root)
    with open_zoo(task.root) as zoo:
        sources = [zoo.load_model(s, e) for s, e in zip(task.source_ids, task.from_epochs)]
        data = zoo.data(task.source_ids[0])
    first = task.configs[0]
    twin = first["derived"]["twin"]
    train_cfg = build_train_config(first["training"])
    members = [build_member(c["training"]) for c in task.configs]
    resumed = read_resume(store, task.group_id)
    if resumed is None:
        state, recorder = None, GroupRecorder(task.group_id, task.model_ids, range(train_cfg.epochs + 1))
        emit({"type": "start", "group_id": task.group_id, "model_ids": list(task.model_ids)})
    else:
        state, recorder = resumed
        if recorder.model_ids != list(task.model_ids):
            raise ValueError(f"resume file of group {task.group_id} lists models {recorder.model_ids}, "
                             f"expected {task.model_ids}")
        emit(recorder.rows())  # replay (idempotent upserts)
    _start_journal(store, task, recorder)

    writer = _EpochWriter()  # as zoo train: an epoch's files are written in the background, rows sent once on disk

    def callback(report: Any) -> None:
        writer.flush()
        epoch = report.epoch
        _, stopped = recorder.observe(epoch, report.metrics, report.status, report.reasons)
        ckpt = recorder.checkpoint_members(epoch, stopped)
        shards: list[tuple[str, dict[str, Any]]] = []
        sds = report.state_dicts() if ckpt else None  # copies: training goes on while they are written
        if ckpt:
            sparse = {task.model_ids[i]: sparse_state_dict(sds[i], twin["threshold"]) for i in ckpt}
            shards.append(("weights", sparse))
            recorder.add_shard(epoch, "weights", store.shard_relpath(task.group_id, epoch, "weights"), ckpt)
        rows = recorder.rows([epoch])
        lines = _EpochLines(recorder.journal(), recorder.last_epoch)
        state = report.state(sds)
        writer.submit(lambda: _write_epoch(store, task, epoch, shards, state, lines), rows)

    finished = all(s != "running" for s in recorder.status)
    try:
        if resumed is None or (recorder.last_epoch < train_cfg.epochs and not finished):
            train_twins(sources, data, train_cfg, members, kl_scale=twin["kl_scale"],
                        kl_reduction=twin.get("kl_reduction", _LEGACY_TWIN["kl_reduction"]),
                        estimator=twin.get("estimator", _LEGACY_TWIN["estimator"]),
                        log_sigma2_init=twin["log_sigma2_init"], threshold=twin["threshold"], device=task.device,
                        resume=state, callback=callback)
        writer.flush()
    finally:
        writer.close()
    return {"type": "done", "group_id": task.group_id, "statuses": recorder.final_status()}


def sparsify_twins(zoo_dir: str | Path, *, epochs: int = 25, from_epoch: int | str = "last", kl_scale: float = 1e-2,
                   kl_reduction: str = "model_zoos", estimator: str = "weight",
                   log_sigma2_init: float = -10.0, threshold: float = 3.0,
                   overrides: Mapping[str, Any] | None = None, model_ids: Sequence[str] | None = None,
                   engine: str | Engine = "local", workers: int = 1, device: str = "auto",
                   progress: bool | Callable[[str], None] = False,
                   engine_options: Mapping[str, Any] | None = None) -> list[str]:
    """Create (or finish) the sparsified twins of a zoo's finished grid members in the same catalog.

    Args:
        zoo_dir: a trained zoo directory.
        epochs: sparsification epochs (Model Zoos: 25).
        from_epoch: ``"last"`` or a checkpointed epoch of the sources.
        kl_scale: KL weight ramp ``min(1, kl_scale * epoch / epochs)`` (Model Zoos: 1e-2).
        kl_reduction: ``"model_zoos"`` (default: the KL undivided, as the Model Zoos code) or ``"elbo"``
            (``KL / n_train``); see :func:`zooscape.sparsify.train_twins`.
        estimator: ``"weight"`` (default: one weight sample per twin and step, about a zoo model's cost) or
            ``"local"`` (local reparameterisation, as the papers: ~3.5x the time for CNN-s, sparser at the same
            accuracy); see :func:`zooscape.sparsify.train_twins`.
        log_sigma2_init: initial ``log sigma^2`` (-10). threshold: ``log alpha`` pruning threshold (3).
        overrides: training settings replacing the sources' (``optimizer``, ``lr``, ``batch_size``, ...).
        model_ids: only the twins of these sources.
        engine, workers, engine_options: where the per-cell populations train (``"local"``/``"ray"``).
        device: torch device (``"auto"``: CUDA, else MPS, else CPU).
        progress: ``True`` for a progress bar over twin-epochs, or ``fn(message)`` for messages (bar too).

    Returns:
        the ids of the twins trained (or finished) by this call.

    Raises:
        FileNotFoundError: not a zoo. ValueError: bad settings or twins stored with other settings.
        RuntimeError: another process writes the zoo.

    References:
        Molchanov et al. (2017); Schürholt et al. (2022), "Model Zoos" (sparsified twins).
    """
    from tqdm.auto import tqdm

    from zooscape.zoo.reader import open_zoo

    store = zoo_store(zoo_dir)
    say = progress if callable(progress) else (lambda message: None)
    eng = get_engine(engine, workers, **dict(engine_options or {}))
    with open_zoo(store.root) as zoo:
        tasks, messages = plan_twins(zoo, epochs=epochs, from_epoch=from_epoch, kl_scale=kl_scale,
                                     kl_reduction=kl_reduction, estimator=estimator,
                                     log_sigma2_init=log_sigma2_init, threshold=threshold, overrides=overrides,
                                     model_ids=model_ids, device=device)
    for m in messages:
        say(m)
    if not tasks:
        say("no twins to train (all finished)")
        return []
    with store.lock(), Catalog(store.catalog_path) as catalog:
        catalog.add_models([{**cfg, "model_id": tid, "group_id": t.group_id}
                            for t in tasks for tid, cfg in zip(t.model_ids, t.configs)])
        store.remove_temp_files()
        total = sum(len(t.model_ids) * epochs for t in tasks)
        epochs_of = {t.group_id: int(epochs) for t in tasks}
        sizes = {t.group_id: len(t.model_ids) for t in tasks}
        with tqdm(total=total, unit="twin-epoch", disable=not progress, desc="twins") as bar:
            driver = _Driver(store, catalog, bar, epochs_of)
            for result in eng.map(run_twin_group, tasks, on_event=driver.on_event, ordered=False):
                driver.on_result(result, sizes[result["group_id"]])
                say(f"group {result['group_id']}: {len(result['statuses'])} twins finished")
        store.remove_temp_files()
    return [tid for t in tasks for tid in t.model_ids]


# ----------------------------------------------------------------------------------------------- pruning
@dataclass
class PruneTask:
    """Prune one model (or, with ``other``, a seed pair for the LMC barrier) with one method and sparsity."""

    root: str
    model_id: str
    epoch: int
    method: str
    sparsity: float
    renorms: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    other: str | None = None
    device: str = "auto"


def _prune_params(task: PruneTask, renorm: str) -> dict[str, Any]:
    return {"experiment": "prune_lmc" if task.other else "prune", "method": task.method,
            "sparsity": float(task.sparsity), "renorm": renorm, **task.params}


def _method_params(method: str, params: Mapping[str, Any], fisher: str, split: str) -> dict[str, Any]:
    """The stored settings of one pruner: ``params`` plus, for the Fisher pruners, ``fisher`` and ``split``
    (magnitude pruning uses no data, so its rows do not depend on them)."""
    if method in ("diagfisher", "woodfisherblock"):
        return {**params, "fisher": fisher, "split": split}
    return dict(params)


def run_prune_task(task: PruneTask) -> dict[str, Any]:
    """Prune, re-normalise and evaluate (or measure the pair barrier); returns ``{"rows": [...]}``."""
    from zooscape.align import weight_matching
    from zooscape.connect.metrics import evaluate_model
    from zooscape.sparsify import prune, pruned_barrier, renormalize, sparsity_ratio
    from zooscape.train import resolve_device
    from zooscape.zoo.reader import open_zoo

    device = resolve_device(task.device)
    with open_zoo(task.root) as zoo:
        model = zoo.load_model(task.model_id, task.epoch, device=device)
        other = zoo.load_model(task.other, task.epoch, device=device) if task.other else None
        data = zoo.data(task.model_id)
    p = task.params
    kw = {"n_samples": p["n_samples"], "block_size": p["block_size"], "damping": p["damping"],
          "scope": p["scope"], "seed": p["seed"], "fisher": p.get("fisher", "empirical"),
          "split": p.get("split", "train")}
    rows = []
    pruned = prune(model, task.sparsity, task.method, data, **kw)
    if other is None:
        for renorm in task.renorms:
            m = pruned if renorm == "none" else renormalize(pruned, model, data, renorm,
                                                            n_samples=p["n_samples"], seed=p["seed"])
            loss, err = evaluate_model(m, data.test_x, data.test_y, data.task)
            base = {"model_id": task.model_id, "epoch": task.epoch, "params": _prune_params(task, renorm)}
            rows.append({**base, "metric": "test_loss", "value": loss})
            if err is not None:
                rows.append({**base, "metric": "test_acc", "value": 1.0 - err})
            rows.append({**base, "metric": "sparsity", "value": sparsity_ratio(m)})
        return {"rows": rows, "model_ids": [task.model_id]}
    aligned = weight_matching(model, other).model
    pruned_b = prune(aligned, task.sparsity, task.method, data, **kw)
    for renorm in task.renorms:
        a = pruned if renorm == "none" else renormalize(pruned, model, data, renorm, n_samples=p["n_samples"],
                                                        seed=p["seed"])
        b = pruned_b if renorm == "none" else renormalize(pruned_b, aligned, data, renorm,
                                                          n_samples=p["n_samples"], seed=p["seed"])
        bar = pruned_barrier(a, b, data, n_points=p["n_points"], splits=("test",), bn_mode=p["bn_mode"])
        for metric, value in bar.items():
            rows.append({"model_id": task.model_id, "other_id": task.other, "epoch": task.epoch, "metric": metric,
                         "value": value, "params": _prune_params(task, renorm)})
    return {"rows": rows, "model_ids": [task.model_id, task.other]}


def prune_zoo(zoo_dir: str | Path, *, methods: Sequence[str] = ("globalmagni",),
              sparsities: Sequence[float] = (0.5, 0.7, 0.9), renorms: Sequence[str] = ("none",),
              epoch: int | str = "last", n_samples: int | None = 1000, scope: str | None = None,
              block_size: int = 128, damping: float = 1e-5, fisher: str = "empirical", split: str = "train",
              seed: int = 0, lmc: bool = False, n_points: int = 11,
              bn_mode: str = "reset", kinds: Sequence[str] = ("model",), model_ids: Sequence[str] | None = None,
              engine: str | Engine = "local", workers: int = 1, device: str = "auto",
              progress: Callable[[str], None] | None = None,
              engine_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One-shot pruning of every finished model of a zoo; results stored as ``analyses`` rows (see module doc).

    Args:
        zoo_dir: a trained zoo directory.
        methods: pruners (:data:`zooscape.sparsify.PRUNERS`). sparsities: fractions in [0, 1].
        renorms: ``"none"``, ``"reset_bn"``, ``"repair"``, ``"rescale"`` (each stored separately).
        epoch: ``"last"`` (each model's last weights checkpoint) or a checkpointed epoch.
        n_samples: training samples for the Fisher pruners and re-normalisation.
        scope, block_size, damping: see :func:`zooscape.sparsify.prune`. seed: which samples.
        fisher: the Fisher of ``diagfisher``: ``"empirical"`` (default) or ``"exact"`` (``woodfisherblock`` uses
            the empirical Fisher: asking for ``"exact"`` with it raises).
        split: the split the Fisher pruners estimate their Fisher on: ``"train"`` (default) or ``"val"``.
        lmc: instead of single models, every seed pair of each grid cell (aligned by weight matching): barriers.
        n_points, bn_mode: the linear path of the barrier (``bn_mode="reset"`` re-estimates BN per point).
        kinds: which models: ``"model"`` (grid members) and/or ``"twin"``.
        model_ids: only these models.
        engine, workers, engine_options, device: where the tasks run.
        progress: optional ``fn(message)``.

    Returns:
        the rows stored by this call.

    References:
        Singh & Alistarh (2020); Qu & Horvath (2024), "Rethink Model Re-Basin and the Linear Mode Connectivity".
    """
    from zooscape.sparsify import PRUNERS
    from zooscape.sparsify.prune import FISHERS
    from zooscape.zoo.reader import open_zoo

    bad = [m for m in methods if m not in PRUNERS]
    if bad or not methods:
        raise ValueError(f"methods must be among {PRUNERS}, got {list(methods)}")
    if fisher not in FISHERS:
        raise ValueError(f"fisher must be one of {FISHERS}, got {fisher!r}")
    if split not in ("train", "val"):
        raise ValueError(f"split (the Fisher's data) must be 'train' or 'val', got {split!r}")
    if fisher == "exact" and "woodfisherblock" in methods:
        raise ValueError("woodfisherblock uses the empirical Fisher; fisher='exact' applies to diagfisher only")
    bad_r = [r for r in renorms if r not in ("none", "reset_bn", "repair", "rescale")]
    if bad_r or not renorms:
        raise ValueError(f"renorms must be among none, reset_bn, repair, rescale; got {list(renorms)}")
    for s in sparsities:
        if not 0.0 <= float(s) <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1], got {s}")
    store = zoo_store(zoo_dir)
    say = progress or (lambda message: None)
    params = {"n_samples": n_samples, "scope": scope, "block_size": int(block_size), "damping": float(damping),
              "seed": int(seed)}
    if lmc:
        params.update({"n_points": int(n_points), "bn_mode": bn_mode})
    tasks: list[PruneTask] = []
    with open_zoo(store.root) as zoo:
        table = zoo.configs()
        statuses = dict(zip(table["model_id"], table["status"]))
        kind_of = dict(zip(table["model_id"], table["kind"]))
        wanted = [m for m in (model_ids or list(table["model_id"])) if kind_of.get(m) in kinds]

        def start(mid: str) -> int | None:
            have = zoo.epochs(mid, "weights")
            e = (max(have) if have else None) if epoch == "last" else int(epoch)
            return e if e in have else None

        units: list[tuple[str, str | None, int]] = []
        if lmc:
            for cell in zoo_cells(zoo, wanted):
                ok = [m for m in cell.model_ids if statuses[m] in FINISHED and start(m) is not None]
                units += [(a, b, start(a)) for a, b in itertools.combinations(ok, 2) if start(a) == start(b)]
        else:
            for m in wanted:
                if statuses.get(m) in FINISHED and start(m) is not None:
                    units.append((m, None, start(m)))
                else:
                    say(f"{m}: not finished or no weights checkpoint at epoch {epoch}, skipped")
        marker = "barrier_error_test_linear" if lmc else "test_loss"
        for method in methods:
            mparams = _method_params(method, params, fisher, split)
            for s in sparsities:
                probe = PruneTask(str(store.root), "", 0, method, float(s), list(renorms), mparams, "x" if lmc
                                  else None)
                done = stored_keys(zoo.catalog, marker, _prune_params(probe, renorms[-1]))
                if mparams != params and (fisher, split) == ("empirical", "train"):  # rows stored before the keys
                    legacy = PruneTask(str(store.root), "", 0, method, float(s), list(renorms), dict(params),
                                       probe.other)
                    done |= stored_keys(zoo.catalog, marker, _prune_params(legacy, renorms[-1]))
                for a, b, e in units:
                    if (a, b, e) in done:
                        continue
                    tasks.append(PruneTask(str(store.root), a, e, method, float(s), list(renorms), dict(mparams),
                                           b, device))
    if not tasks:
        say("nothing to do (all results stored)")
        return []
    eng = get_engine(engine, workers, **dict(engine_options or {}))

    def report(i: int, result: dict[str, Any]) -> None:
        say(f"[{i}/{len(tasks)}] {' vs '.join(result['model_ids'])}: {len(result['rows'])} rows")

    results = commit_task_results(store, eng, run_prune_task, tasks, on_result=report)
    return [row for r in results for row in r["rows"]]
