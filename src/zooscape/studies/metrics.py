"""Loss-landscape metrics as zoo analyses (``zooscape metrics run``).

For one checkpointed epoch, every model of a zoo (single-model metrics ``hessian``, ``fisher``, ``spectra``) or
every seed pair of each grid cell (pairwise metric ``cka``) is loaded, measured with :mod:`zooscape.landscape`
(pure functions of model and data) and stored as rows of the catalog's ``analyses`` table: ``model_id``,
``other_id`` (the second model of a pair, else NULL), ``epoch``, ``metric``, ``value`` and ``params`` (every
setting used, plus ``"analysis": <metric>``). All models of a zoo that share a data set are measured on the
same samples (a seeded subset of one split).

Tasks run on the same :class:`~zooscape.zoo.engines.Engine` interface as training (in-process or in worker
processes); workers only read the zoo and return rows, and the driver, holding the zoo's write lock, commits
each task's rows in one transaction (:mod:`zooscape.studies.jobs`, shared with ``zooscape curve pairs``). A task
whose rows are already in the catalog with the same ``params`` is skipped, so re-running an interrupted command
resumes it, and running with other settings adds new rows.

Grid cells (for the pairwise metrics) are defined once for every study in :mod:`zooscape.studies.cells`.

Hessian and Fisher tasks hold up to ``chunk_size`` models of one architecture, data set and epoch, computed as one
stacked population (:func:`compute_population_metric`); rows equal the per-model path's (``chunk_size=0``).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zooscape.studies._metrics_cka import _cka_features, _cka_value
from zooscape.studies._metrics_hessian import hessian_values
from zooscape.studies.cells import grid_cells, is_grid_member
from zooscape.studies.jobs import commit_task_results, stored_keys, zoo_store
from zooscape.zoo.engines import Engine, get_engine

__all__ = [
    "DEFAULTS",
    "MARKERS",
    "PAIRWISE",
    "MetricPlan",
    "MetricTask",
    "POPULATION",
    "compute_metric",
    "compute_population_metric",
    "metric_params",
    "plan_metric_tasks",
    "run_metric_task",
    "run_metrics",
]

#: Settings of each metric and their defaults (``zooscape metrics run --set KEY=VALUE`` overrides them).
DEFAULTS: dict[str, dict[str, Any]] = {
    "hessian": {"split": "train", "n_samples": 512, "data_seed": 0, "batch_size": None, "dtype": "float32",
                "method": "lanczos", "top_k": 1, "num_steps": 20, "max_iter": 100, "tol": 1e-3,
                "trace_method": "hutch++", "num_probes": 51, "block_size": 10, "seed": 0, "density_steps": 0,
                "density_probes": 1},
    "fisher": {"split": "train", "n_samples": 512, "data_seed": 0, "batch_size": 256, "kind": "sampled",
               "num_samples": 32, "seed": 0},
    "spectra": {"min_evals": 8, "min_tail": 10, "fit": "weightwatcher", "seed": 0},
    "cka": {"split": "test", "n_samples": 1024, "data_seed": 0, "layer": "", "output": "logits",
            "kernel": "linear", "debiased": False, "batch_size": None, "bandwidth": "all_pairs"},
}
#: Metrics computed on pairs of models (every seed pair of a grid cell).
PAIRWISE = frozenset({"cka"})
#: Metrics computed for a population of models per task (``chunk_size`` models at most).
POPULATION = frozenset({"hessian", "fisher"})
#: Default models per population task: ``"auto"``: ``hessian`` one task per group and worker (at most
#: :data:`AUTO_TASK_MODELS`) in populations fitting ``landscape.population.HESSIAN_MEMORY_BUDGET``; ``fisher`` 4.
DEFAULT_CHUNK_SIZE: int | str = "auto"
#: Most models per task with ``chunk_size="auto"``.
AUTO_TASK_MODELS = 64
#: Models per Fisher task with ``chunk_size="auto"`` (1.28x the loop's memory on CNN-s; 8 or 16 were no faster).
FISHER_CHUNK_SIZE = 4
#: The row whose presence marks a task as done (a task's rows are committed together).
MARKERS = {"hessian": "hessian_top_eigenvalue", "fisher": "fisher_trace", "spectra": "spectra_alpha", "cka": "cka"}

_CHOICES = {
    "split": ("train", "val", "test"),
    "dtype": ("float32", "float64"),
    "method": ("lanczos", "power"),
    "trace_method": ("hutchinson", "hutch++"),
    "kind": ("empirical", "sampled", "exact"),
    "output": ("logits", "softmax"),
    "kernel": ("linear", "rbf"),
    "fit": ("weightwatcher", "clauset"),
    "bandwidth": ("all_pairs", "distinct_pairs"),
}
_POSITIVE = ("top_k", "num_steps", "max_iter", "num_probes", "block_size", "num_samples", "min_evals", "density_probes")


def metric_params(metric: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The validated settings of a metric: its defaults updated with ``overrides``.

    Args:
        metric: ``"hessian"``, ``"fisher"``, ``"spectra"`` or ``"cka"``.
        overrides: settings to change.

    Returns:
        dict of settings.

    Raises:
        ValueError: unknown metric, unknown setting or invalid value (the message names it).
    """
    if metric not in DEFAULTS:
        raise ValueError(f"metric must be one of {sorted(DEFAULTS)}, got {metric!r}")
    params = dict(DEFAULTS[metric])
    for key, value in (overrides or {}).items():
        if key not in params:
            raise ValueError(f"unknown setting {key!r} for metric {metric!r} (settings: {', '.join(params)})")
        params[key] = value
    for key, value in params.items():
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ValueError(f"setting {key!r} must be one of {_CHOICES[key]}, got {value!r}")
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if key in _POSITIVE and (not is_int or value < 1):
            raise ValueError(f"setting {key!r} must be an integer >= 1, got {value!r}")
        if key == "min_tail" and (not is_int or value < 2):
            raise ValueError(f"setting 'min_tail' must be an integer >= 2, got {value!r}")
        if (key in ("seed", "data_seed") and not is_int) or (key == "density_steps" and (not is_int or value < 0)):
            raise ValueError(f"setting {key!r} must be an integer{' >= 0' * (key == 'density_steps')}, got {value!r}")
        if key in ("n_samples", "batch_size") and value is not None and (not is_int or value < 4):
            raise ValueError(f"setting {key!r} must be an integer >= 4 or null, got {value!r}")
        if key == "tol" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ValueError(f"setting 'tol' must be a positive number, got {value!r}")
        if key == "debiased" and not isinstance(value, bool):
            raise ValueError(f"setting 'debiased' must be true or false, got {value!r}")
        if key == "layer" and not isinstance(value, str):
            raise ValueError(f"setting 'layer' must be a module name (\"\" = the output), got {value!r}")
    if metric == "hessian" and params["trace_method"] == "hutch++" and params["num_probes"] < 6:
        raise ValueError(f"setting 'num_probes' must be >= 6 for trace_method='hutch++' (3 blocks of >= 2 "
                         f"products), got {params['num_probes']}")
    if metric == "cka" and params["output"] == "softmax" and params["layer"] != "":
        raise ValueError("setting output='softmax' applies to the model output only (layer must be \"\")")
    return params


# ------------------------------------------------------------------------------------------------ computing


def _subset(data: Any, params: Mapping[str, Any]) -> tuple[Any, Any]:
    import torch

    x, y = data.split(params["split"])
    n = params.get("n_samples")
    if n is not None and n < x.shape[0]:
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(params["data_seed"])))[:n]
        idx = torch.sort(idx).values
        x, y = x[idx], y[idx]
    return x, y


def _loss_fn(data: Any) -> Callable[..., Any]:
    import torch.nn.functional as F

    return F.cross_entropy if data.task == "classification" else F.mse_loss


def compute_metric(metric: str, models: Sequence[Any], data: Any, params: Mapping[str, Any],
                   device: str = "auto") -> dict[str, float]:
    """Compute one metric for one model (or one pair, for ``cka``) with :mod:`zooscape.landscape`.

    Args:
        metric: ``"hessian"``, ``"fisher"``, ``"spectra"`` or ``"cka"``.
        models: one model (two for ``cka``).
        data: the ``DataSplits`` the model(s) were trained on.
        params: settings from :func:`metric_params`.
        device: torch device.

    Returns:
        dict metric name -> value (the names stored in the catalog).
    """
    import torch

    from zooscape import landscape as ls

    expected = 2 if metric in PAIRWISE else 1
    if len(models) != expected:
        raise ValueError(f"metric {metric!r} takes {expected} model(s), got {len(models)}")
    if metric == "spectra":
        spectra = ls.weight_spectra(models[0], min_evals=params["min_evals"], min_tail=params["min_tail"],
                                    fit=params["fit"], seed=params["seed"])
        out = {f"spectra_{k}": v for k, v in ls.spectra_summary(spectra).items()}
        for s in spectra:
            for key in ("alpha", "sigma", "num_tail", "alpha_weighted", "log_norm", "log_spectral_norm",
                        "stable_rank", "matrix_rank", "entropy", "num_spikes", "mp_softrank", "rand_distance"):
                out[f"spectra_{key}/{s.name}"] = float(getattr(s, key))
            out[f"spectra_num_flags/{s.name}"] = float(len(s.flags))
        return out
    x, y = _subset(data, params)
    if metric == "hessian":
        dtype = torch.float64 if params["dtype"] == "float64" else None
        op = ls.hessian_operator(models[0], _loss_fn(data), x, y, batch_size=params["batch_size"], device=device,
                                 dtype=dtype)
        eig = ls.top_eigenvalues(op, k=params["top_k"], method=params["method"], num_steps=params["num_steps"],
                                 max_iter=params["max_iter"], tol=params["tol"], seed=params["seed"])
        tr = ls.trace(op, method=params["trace_method"], num_matvecs=params["num_probes"],
                      block_size=params["block_size"], seed=params["seed"] + 1)
        dens = ls.spectral_density(op, num_steps=params["density_steps"], num_probes=params["density_probes"],
                                   seed=params["seed"] + 2) if params["density_steps"] else None
        return hessian_values(eig, tr, float(op.loss()), params, dens)
    if metric == "fisher":
        est = ls.fisher_trace_estimate(models[0], x, y, kind=params["kind"], likelihood=_likelihood(data),
                                       num_samples=params["num_samples"], batch_size=params["batch_size"],
                                       device=device, seed=params["seed"])
        return {"fisher_trace": est.estimate, "fisher_trace_se": est.std_error}
    if metric == "cka":
        fa, fb = (_cka_features(m, x, params, device) for m in models)
        return {"cka": _cka_value(fa, fb, params)}
    raise ValueError(f"metric must be one of {sorted(DEFAULTS)}, got {metric!r}")


def _likelihood(data: Any) -> str:
    return "categorical" if data.task == "classification" else "gaussian"


def compute_population_metric(metric: str, models: Sequence[Any], data: Any, params: Mapping[str, Any],
                              device: str = "cpu", memory_budget: int | None = None) -> list[dict[str, float]]:
    """Compute ``"hessian"`` or ``"fisher"`` for N models of one architecture (trained on ``data``; settings
    ``params``) as one population (:mod:`zooscape.landscape.population`); returns N dicts metric name -> value in
    model order, each equal to :func:`compute_metric`'s for that model up to float rounding. With ``memory_budget``
    (bytes; ``hessian``) they run in populations of ``population_chunk_size`` models, or for convolutional networks
    without a plain form (``population_plain.has_plain_form``) model by model (faster, see bench/RESULTS.md)."""
    import torch

    from zooscape import landscape as ls
    from zooscape.landscape import population as lp

    if metric not in POPULATION:
        raise ValueError(f"metric {metric!r} has no population path (population metrics: {sorted(POPULATION)})")
    x, y = _subset(data, params)
    if metric == "hessian" and memory_budget is not None and not ls.population_plain.has_plain_form(models[0]) and any(
            isinstance(m, torch.nn.modules.conv._ConvNd) for m in models[0].modules()):  # CNN-s: 0.58x as population
        return [compute_metric(metric, [m], data, params, device=device) for m in models]
    if metric == "hessian" and memory_budget is not None and len(models) > 1:
        bs = params["batch_size"] or x.shape[0]
        probe = models[0] if params["dtype"] != "float64" else copy.deepcopy(models[0]).double()
        size = lp.population_chunk_size(probe, x[:bs], budget=memory_budget, limit=len(models))
        if size < len(models):
            return [row for chunk in lp.population_chunks(models, size)
                    for row in compute_population_metric(metric, chunk, data, params, device=device)]
    if metric == "hessian":
        dtype = torch.float64 if params["dtype"] == "float64" else None
        op = lp.population_hessian_operator(models, _loss_fn(data), x, y, batch_size=params["batch_size"],
                                            device=device, dtype=dtype)
        eigs = lp.population_top_eigenvalues(op, k=params["top_k"], method=params["method"],
                                             num_steps=params["num_steps"], max_iter=params["max_iter"],
                                             tol=params["tol"], seed=params["seed"])
        traces = lp.population_trace(op, method=params["trace_method"], num_matvecs=params["num_probes"],
                                     block_size=params["block_size"], seed=params["seed"] + 1)
        dens = ls.population_spectral_density(op, num_steps=params["density_steps"], num_probes=params[
            "density_probes"], seed=params["seed"] + 2) if params["density_steps"] else [None] * len(models)
        return [hessian_values(e, t, float(v), params, d) for e, t, v, d in zip(eigs, traces, op.loss().tolist(), dens)]
    ests = ls.population_fisher_trace_estimate(models, x, y, kind=params["kind"], likelihood=_likelihood(data),
                                               num_samples=params["num_samples"], batch_size=params["batch_size"],
                                               device=device, seed=params["seed"])
    return [{"fisher_trace": e.estimate, "fisher_trace_se": e.std_error} for e in ests]


@dataclass
class MetricTask:
    """One unit of work: a metric of one model (or pair) at one epoch (picklable).

    Args:
        root: zoo directory.
        metric: metric name.
        epoch: checkpointed epoch.
        model_ids: one id, or two for pairwise metrics.
        params: validated settings.
        device: torch device.
        pairs: for a pairwise metric, the seed pairs of one cell to compute (``model_ids`` then lists every model
            they need, and each model's representation is computed once).
        population: compute the models of ``model_ids`` (one architecture and data set) as one population
            (:func:`compute_population_metric`).
        memory_budget: with ``population``: bytes per population (``None``: all the task's models in one).
    """

    root: str
    metric: str
    epoch: int
    model_ids: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    pairs: tuple[tuple[str, str], ...] = ()
    population: bool = False
    memory_budget: int | None = None


def run_metric_task(task: MetricTask) -> dict[str, Any]:
    """Load the task's model(s) and data from the zoo (read-only), compute the metric, return catalog rows.

    Args:
        task: the task.

    Returns:
        dict with ``model_ids`` and ``rows`` (dicts for :meth:`Catalog.add_analyses`).
    """
    from zooscape.train.trainer import resolve_device
    from zooscape.zoo.reader import open_zoo

    with open_zoo(task.root) as zoo:
        device = str(resolve_device(task.device))
        models = [zoo.load_model(m, task.epoch, device=device) for m in task.model_ids]
        data = None if task.metric == "spectra" else zoo.data(task.model_ids[0])
    params = {"analysis": task.metric, **task.params}
    if task.pairs:  # every missing seed pair of one cell: each model's representation is computed once
        x, _ = _subset(data, task.params)
        feats = {m: _cka_features(model, x, task.params, device) for m, model in zip(task.model_ids, models)}
        rows = [{"model_id": a, "other_id": b, "epoch": task.epoch, "metric": "cka",
                 "value": _cka_value(feats[a], feats[b], task.params), "params": params} for a, b in task.pairs]
        return {"model_ids": list(task.model_ids), "pairs": [list(p) for p in task.pairs], "rows": rows}
    if task.population:  # the task's models (one architecture) as one stacked population
        per_model = compute_population_metric(task.metric, models, data, task.params, device=device,
                                              memory_budget=task.memory_budget)
        rows = [{"model_id": m, "other_id": None, "epoch": task.epoch, "metric": name, "value": value,
                 "params": params} for m, values in zip(task.model_ids, per_model) for name, value in values.items()]
        return {"model_ids": list(task.model_ids), "rows": rows, "population": True}
    values = compute_metric(task.metric, models, data, task.params, device=device)
    other = task.model_ids[1] if len(task.model_ids) > 1 else None
    rows = [{"model_id": task.model_ids[0], "other_id": other, "epoch": task.epoch, "metric": name,
             "value": value, "params": params} for name, value in values.items()]
    return {"model_ids": list(task.model_ids), "rows": rows}


# ------------------------------------------------------------------------------------------------ driver


@dataclass
class MetricPlan:
    """Tasks of a metrics run.

    Attributes:
        tasks: tasks still to compute (for pairwise metrics: one per cell and epoch, holding its missing pairs).
        done: tasks skipped because their rows are already stored.
        missing: ``(model_id, reason)`` of models left out (failed, no checkpoint at the epoch, ...).
        cells: cell index -> model ids (for pairwise metrics and summaries).
    """

    tasks: list[MetricTask]
    done: list[MetricTask]
    missing: list[tuple[str, str]]
    cells: dict[int, list[str]]


def plan_metric_tasks(zoo: Any, metric: str, params: Mapping[str, Any], epoch: int | None = None,
                      model_ids: Sequence[str] | None = None, device: str = "auto",
                      chunk_size: int | str | None = DEFAULT_CHUNK_SIZE, workers: int = 1) -> MetricPlan:
    """Decide which models (or seed pairs) to measure and which are already done.

    Args:
        zoo: an open :class:`~zooscape.zoo.reader.Zoo`.
        metric: metric name.
        params: validated settings.
        epoch: checkpointed epoch (default: each model's ``training.epochs``).
        model_ids: restrict to these models (default: all).
        device: torch device for the tasks.
        chunk_size: for the :data:`POPULATION` metrics: most models per task, computed as one population (the
            models of a task share architecture, data set and epoch); ``0`` or ``None``: one model per task through
            the per-model path (the slow reference); ``"auto"`` (default): see :data:`DEFAULT_CHUNK_SIZE`.
        workers: worker processes the tasks will run on (``"auto"`` splits a group into at least this many tasks).

    Returns:
        :class:`MetricPlan` (``done`` lists one task per stored model or pair).
    """
    if chunk_size != "auto" and chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0):
        raise ValueError(f"chunk_size must be an integer >= 0, 'auto' or None, got {chunk_size!r}")
    statuses = zoo.catalog.statuses()
    ids = zoo.model_ids if model_ids is None else list(model_ids)
    unknown = [m for m in ids if m not in statuses]
    if unknown:
        raise KeyError(f"unknown model ids {unknown[:5]} in zoo {zoo.path}")
    missing: list[tuple[str, str]] = []
    usable: dict[str, int] = {}
    configs = {mid: zoo.config(mid) for mid in ids}
    for mid, cfg in configs.items():
        if not is_grid_member(cfg):
            continue  # spawned children, twins and merges are not grid members
        e = int(cfg["training"]["epochs"]) if epoch is None else int(epoch)
        if statuses.get(mid) == "failed":
            missing.append((mid, "failed"))
            continue
        if e not in zoo.epochs(mid, "weights"):
            missing.append((mid, f"no weights checkpoint at epoch {e}"))
            continue
        usable[mid] = e
    cells = {c.index: [m for m in c.model_ids if m in usable] for c in grid_cells(configs, statuses)}
    root = str(zoo.path)
    done_keys = stored_keys(zoo.catalog, MARKERS[metric], {"analysis": metric, **params})
    tasks, done = [], []
    candidates: list[tuple[tuple[str, ...], int]] = []
    if metric in PAIRWISE:
        for members in cells.values():
            for a, b in itertools.combinations(members, 2):
                if usable[a] == usable[b]:
                    candidates.append(((a, b), usable[a]))
    else:
        candidates = [((m,), e) for m, e in usable.items()]
    if metric in PAIRWISE:  # one task per cell and epoch: its missing pairs (done pairs are listed one by one)
        todo: dict[tuple[int, int], list[tuple[str, str]]] = {}
        cell_of = {m: c for c, members in cells.items() for m in members}
        for pair, e in candidates:
            if (pair[0], pair[1], e) in done_keys:
                done.append(MetricTask(root, metric, e, pair, dict(params), device))
            else:
                todo.setdefault((cell_of[pair[0]], e), []).append((pair[0], pair[1]))
        for (_, e), pairs in sorted(todo.items()):
            needed = tuple(sorted({m for p in pairs for m in p}))
            tasks.append(MetricTask(root, metric, e, needed, dict(params), device, pairs=tuple(pairs)))
        return MetricPlan(tasks, done, missing, cells)
    groups: dict[tuple[int, str], list[str]] = {}  # (epoch, architecture and data) -> models still to compute
    for pair, e in candidates:
        task = MetricTask(root, metric, e, pair, dict(params), device)
        if (pair[0], None, e) in done_keys:
            done.append(task)
        elif metric in POPULATION and chunk_size:
            cfg = configs[pair[0]]
            key = json.dumps({"model": cfg.get("model"), "dataset": cfg.get("dataset")}, sort_keys=True)
            groups.setdefault((e, key), []).append(pair[0])
        else:
            tasks.append(task)
    budget = None
    if chunk_size == "auto" and metric == "hessian":
        from zooscape.landscape.population import HESSIAN_MEMORY_BUDGET as budget
    for (e, _), members in groups.items():
        size = chunk_size if chunk_size != "auto" else \
            min(AUTO_TASK_MODELS, -(-len(members) // max(1, workers))) if budget else FISHER_CHUNK_SIZE
        for i in range(0, len(members), size):
            tasks.append(MetricTask(root, metric, e, tuple(members[i:i + size]), dict(params), device,
                                    population=True, memory_budget=budget))
    return MetricPlan(tasks, done, missing, cells)


def run_metrics(zoo_dir: str | Path, metric: str, *, epoch: int | None = None,
                params: Mapping[str, Any] | None = None, model_ids: Sequence[str] | None = None,
                engine: str | Engine = "local", workers: int = 1, device: str = "auto",
                progress: Callable[[str], None] | None = None,
                engine_options: Mapping[str, Any] | None = None,
                chunk_size: int | str | None = DEFAULT_CHUNK_SIZE) -> list[dict[str, Any]]:
    """Compute a landscape metric for every model (or seed pair) of a zoo and store it in the catalog.

    Args:
        zoo_dir: a trained zoo directory.
        metric: ``"hessian"``, ``"fisher"``, ``"spectra"`` or ``"cka"``.
        epoch: checkpointed epoch (default: each model's ``training.epochs``).
        params: settings overriding :data:`DEFAULTS` (see :func:`metric_params`).
        model_ids: restrict to these models.
        engine: ``"local"``, ``"ray"`` or an :class:`~zooscape.zoo.engines.Engine`.
        workers: worker processes of the local engine.
        device: torch device.
        progress: optional ``fn(message)``.
        engine_options: keyword arguments of the engine (Ray: ``address``, ``num_cpus``, ``num_gpus``,
            ``max_retries``).
        chunk_size: ``hessian``, ``fisher``: most models per task, as one population (``0``/``None``: one model per
            task, the per-model path; ``"auto"``, the default: see :data:`DEFAULT_CHUNK_SIZE`). Not a setting:
            both paths store the same rows and resume each other.

    Returns:
        The rows stored by this call (dicts with model_id, other_id, epoch, metric, value, params).

    Raises:
        FileNotFoundError: not a zoo directory.
        ValueError: unknown metric or setting, or no model has a checkpoint at ``epoch``.
        RuntimeError: another process is writing the zoo.
    """
    from zooscape.zoo.reader import open_zoo

    settings = metric_params(metric, params)
    store = zoo_store(zoo_dir)
    say = progress or (lambda message: None)
    eng = get_engine(engine, workers, **dict(engine_options or {}))
    with open_zoo(store.root) as zoo:
        plan = plan_metric_tasks(zoo, metric, settings, epoch=epoch, model_ids=model_ids, device=device,
                                 chunk_size=chunk_size, workers=workers)
    for mid, reason in plan.missing:
        say(f"{mid}: skipped ({reason})")
    if not plan.tasks and not plan.done:
        raise ValueError(f"nothing to measure in {zoo_dir}: no model (pair) has a weights checkpoint at "
                         f"epoch {epoch if epoch is not None else 'training.epochs'}")
    if plan.done:
        say(f"{len(plan.done)} task(s) already stored with these settings, skipped")

    def report(i: int, result: dict[str, Any]) -> None:
        head = next((r for r in result["rows"] if r["metric"] == MARKERS[metric]), None)
        value = "nan" if head is None or head["value"] is None or not math.isfinite(head["value"]) \
            else f"{head['value']:.6g}"
        ids = result["model_ids"]
        what = f"{len(result['pairs'])} pair(s) of {len(ids)} models" if result.get("pairs") else \
            f"population of {len(ids)} models (first {ids[0]})" if result.get("population") else " vs ".join(ids)
        say(f"[{i}/{len(plan.tasks)}] {metric} {what}: {MARKERS[metric]} = {value}")

    results = commit_task_results(store, eng, run_metric_task, plan.tasks, on_result=report)
    return [row for result in results for row in result["rows"]]
