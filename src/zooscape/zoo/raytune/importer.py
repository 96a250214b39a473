"""``import_raytune``: a folder of Ray Tune trials -> a zoo of ours (hostile trials skipped with their reason).

Part of :mod:`zooscape.zoo.raytune` (see its docstring for the layout and the guarantees).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zooscape.zoo.raytune.layout import (
    CONFIG_KEY,
    PARAMS_FILE,
    RAY_FIELDS,
    SENTINEL,
    ImportLimits,
    RayTrial,
    TrialError,
    _Guard,
    _torch_load,
    find_trials,
    optimizer_from_torch,
    read_state_dict,
    read_trial,
)
from zooscape.zoo.raytune.mapping import map_params

log = logging.getLogger("zooscape.zoo")


# ----------------------------------------------------------------------------------------------- import


@dataclass
class ImportReport:
    """Outcome of :func:`import_raytune`.

    Args:
        out_dir: the zoo directory written.
        imported: ``(trial folder relative to the source, model_id)`` per imported trial.
        skipped: ``(trial folder, reason)`` per broken trial.
        warnings: non-fatal problems (e.g. an unreadable optimizer file, a data set that could not be loaded).
        n_checkpoints: weight checkpoints written.
    """

    out_dir: Path
    imported: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_checkpoints: int = 0

    def summary(self) -> str:
        """Human-readable summary (one line per skipped trial).

        Returns:
            str.
        """
        lines = [f"imported {len(self.imported)} trials ({self.n_checkpoints} checkpoints) into {self.out_dir}; "
                 f"skipped {len(self.skipped)}"]
        lines += [f"  skipped {t}: {r}" for t, r in self.skipped]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


@dataclass
class _Parsed:
    rel: str
    trial: RayTrial
    sections: dict[str, dict[str, Any]]
    metrics: list[tuple[int, str, float | None]]
    epochs: list[int]
    optim_epochs: list[int]
    status: tuple[str, str | None]
    param_names: list[str]
    model_id: str = ""
    derived: dict[str, Any] = field(default_factory=dict)


def _metrics(results: Sequence[Mapping[str, Any]]) -> list[tuple[int, str, float | None]]:
    rows = []
    for epoch, line in enumerate(results):
        for k, v in line.items():
            if k == "time_this_iter_s":
                k = "epoch_time_s"
            elif k in RAY_FIELDS:
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                continue
            v = float(v)
            rows.append((epoch, k, None if v == SENTINEL else v))
    return rows


def _status(results: Sequence[Mapping[str, Any]], epochs_planned: int | None) -> tuple[str, str | None]:
    for epoch, line in enumerate(results):
        loss = line.get("train_loss")
        if isinstance(loss, numbers.Real) and not isinstance(loss, bool) and not math.isfinite(float(loss)):
            return "failed", f"non-finite train_loss at epoch {epoch}"
    last = len(results) - 1
    if epochs_planned is not None and last < epochs_planned:
        return "stopped", f"result.json ends after epoch {last} of {epochs_planned}"
    return "done", None


class _Models:
    """Builds (on the ``meta`` device) and caches the reference model of each architecture (for strict shape
    checks)."""

    def __init__(self) -> None:
        self.cache: dict[str, tuple[dict[str, tuple[int, ...]], list[str], int]] = {}

    def spec(self, model: Mapping[str, Any], model_args: Mapping[str, Any]) -> tuple[dict[str, tuple[int, ...]],
                                                                                  list[str], int]:
        from zooscape.zoo.build import build_meta_model, count_parameters
        from zooscape.zoo.grid import canonical_json

        key = canonical_json([{k: v for k, v in model.items() if k != "init"}, dict(model_args)])
        if key not in self.cache:
            try:
                m = build_meta_model(model, model_args)  # shapes only: nothing allocated, whatever params.json says
            except Exception as exc:
                raise TrialError(f"cannot build model {canonical_json(dict(model))}: {exc}") from None
            self.cache[key] = ({k: tuple(v.shape) for k, v in m.state_dict().items()},
                               [n for n, _ in m.named_parameters()], count_parameters(m))
        return self.cache[key]


def _check_state(sd: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], where: str, model: str) -> None:
    missing = sorted(set(shapes) - set(sd))
    extra = sorted(set(sd) - set(shapes))
    if missing or extra:
        raise TrialError(f"{where}: does not fit model {model} (missing {missing[:5]}, unexpected {extra[:5]})")
    for k, shape in shapes.items():
        if tuple(sd[k].shape) != shape:
            raise TrialError(f"{where}: {k!r} has shape {tuple(sd[k].shape)}, model {model} needs {shape}")
    for k, t in sd.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TrialError(f"{where}: non-finite weights in {k!r}")


class _DataInfo:
    """Loads each distinct data set once: model arguments and n_train (or notes that it cannot be loaded)."""

    def __init__(self, report: ImportReport) -> None:
        self.report = report
        self.cache: dict[str, tuple[dict[str, Any], int | None]] = {}

    def get(self, dataset: Mapping[str, Any]) -> tuple[dict[str, Any], int | None]:
        from zooscape.zoo.build import data_model_args, load_data
        from zooscape.zoo.grid import canonical_json

        key = canonical_json(dict(dataset))
        if key not in self.cache:
            try:
                data = load_data(dataset)
                self.cache[key] = (data_model_args(data), int(len(data.train_y)))
            except Exception as exc:
                self.report.warnings.append(
                    f"data set {key} could not be loaded ({exc}); models use their default input size and "
                    "derived.n_train/load are unknown")
                self.cache[key] = ({}, None)
        return self.cache[key]


def _check_sections(sections: Mapping[str, Any], schema: Any) -> None:
    """Validate one trial's sections as a one-model spec (types, ranges, names), so that one bad trial cannot
    make the whole import's spec invalid."""
    from zooscape.zoo.spec import SpecError, parse_spec

    try:
        parse_spec({s: dict(sections[s]) for s in ("dataset", "model", "training")}, PARAMS_FILE, schema)
    except SpecError as exc:
        raise TrialError(f"{PARAMS_FILE} maps to an invalid config: {exc.key}: {exc.problem}") from None


def _parse(path: Path, root: Path, dataset: Mapping[str, Any] | None, model_types: Any, models: _Models,
           datainfo: _DataInfo, with_optimizer: bool, report: ImportReport, guard: _Guard,
           schema: Any) -> _Parsed:
    trial = read_trial(path, guard)
    sections = map_params(trial.params, dataset, model_types, n_epochs=len(trial.results) - 1)
    epochs = sections["training"].get("epochs")
    if isinstance(epochs, int) and epochs > guard.limits.max_epoch:
        raise TrialError(f"{PARAMS_FILE}: {epochs} training epochs, over the limit of {guard.limits.max_epoch} "
                         "(max_epoch)")
    _check_sections(sections, schema)
    model_args_all, n_train = datainfo.get(sections["dataset"])
    model_args = {k: v for k, v in model_args_all.items() if k not in sections["model"]}
    shapes, param_names, n_params = models.spec(sections["model"], model_args)
    for _epoch, file in sorted(trial.checkpoints.items()):
        sd = read_state_dict(file, guard)
        _check_state(sd, shapes, f"{file.parent.name}/{file.name}", sections["model"]["name"])
        del sd
    optim_epochs = []
    if with_optimizer:
        for epoch, file in sorted(trial.optimizers.items()):
            try:
                optimizer_from_torch(_torch_load(file, guard), param_names)
                optim_epochs.append(epoch)
            except (TrialError, ValueError, TypeError, AttributeError) as exc:
                report.warnings.append(f"{path.relative_to(root)}: optimizer at epoch {epoch} skipped ({exc})")
    tr = sections["training"]
    status = _status(trial.results, tr.get("epochs"))
    lr, bs = tr.get("lr"), tr.get("batch_size")
    derived = {
        "temperature": float(lr) / float(bs) if lr is not None and bs else None,
        "load": n_train / n_params if n_train and n_params else None,
        "n_params": n_params,
        "n_train": n_train,
        "model_args": model_args,
        "width": sections["model"].get("width"),
        "train_fraction": float(sections["dataset"].get("train_fraction", 1.0)),
        "source": {"format": "ray_tune", "trial": str(path.relative_to(root)),
                   "params": {k: v for k, v in trial.params.items() if k != CONFIG_KEY}},
    }
    rel = str(path.relative_to(root)) or "."
    return _Parsed(rel, trial, sections, _metrics(trial.results), sorted(trial.checkpoints), optim_epochs, status,
                   param_names, derived=derived)


def _spec_doc(parsed: Sequence[_Parsed], name: str, description: str, max_population: int) -> dict[str, Any]:
    """A spec whose base sections hold the values shared by all models and whose grid holds the varying ones."""
    from zooscape.zoo.grid import canonical_json

    doc: dict[str, Any] = {"zoo": {"name": name, "description": description}, "grid": {}}
    for section in ("dataset", "model", "training"):
        keys = set().union(*(p.sections[section].keys() for p in parsed))
        base = {}
        for key in sorted(keys):
            if not all(key in p.sections[section] for p in parsed):
                continue  # not expressible in a grid; the catalog's configs hold it
            values: dict[str, Any] = {}
            for p in parsed:
                values.setdefault(canonical_json(p.sections[section][key]), p.sections[section][key])
            if len(values) == 1:
                base[key] = next(iter(values.values()))
            else:
                doc["grid"][f"{section}.{key}"] = [values[k] for k in sorted(values)]
        doc[section] = base
    max_epochs = max(int(p.sections["training"]["epochs"]) for p in parsed)
    every = all(p.epochs == list(range(int(p.sections["training"]["epochs"]) + 1)) for p in parsed)
    union = sorted({e for p in parsed for e in p.epochs if e <= max_epochs})
    doc["checkpoints"] = {"epochs": "all" if every else union, "optimizer": any(p.optim_epochs for p in parsed)}
    doc["population"] = {"max_size": max_population}
    return doc


def import_raytune(
    source: str | Path,
    out_dir: str | Path,
    dataset: Mapping[str, Any] | None = None,
    model_types: Mapping[str, str | tuple[str, Mapping[str, Any]]] | None = None,
    name: str | None = None,
    optimizer: bool = True,
    max_population: int = 64,
    progress: bool = False,
    limits: ImportLimits | None = None,
    follow_symlinks: bool = False,
) -> ImportReport:
    """Import a Ray Tune zoo directory (Model Zoos / phase-transition layout) as a zoo of ours.

    Two passes: the first reads and checks every trial (JSON files; every checkpoint loaded with
    ``weights_only=True``, ``module.`` prefixes stripped, strictly matched against the re-instantiated model,
    finite), the second writes, per group of at most ``max_population`` models, one shard per epoch and the
    group's catalog rows in one transaction. Re-running the same import into the same directory gives the same
    zoo (rows are upserted).

    Args:
        source: folder holding the trial folders (searched recursively).
        out_dir: zoo directory to create (must be empty or hold the same import).
        dataset: our ``[dataset]`` section for every trial (e.g. ``{"name": "mnist", "data_root": "data"}``);
            default: from ``dataset::name`` or guessed from ``dataset::dump``.
        model_types: extra ``model::type`` values -> registered model name (or (name, keywords)).
        name: zoo name (default: the source folder's name).
        optimizer: import optimizer files too.
        max_population: models per shard group.
        progress: tqdm bar over trials (stderr).
        limits: size, depth and epoch limits (default :class:`ImportLimits`); a trial over a limit is skipped.
        follow_symlinks: follow symbolic links that stay inside ``source`` (default: no link is followed; a trial
            with a linked file is skipped, a linked directory is not searched).

    Returns:
        :class:`ImportReport` (imported and skipped trials with reasons).

    Raises:
        FileNotFoundError: ``source`` is not a directory. ValueError: no trial could be imported.
        ZooExistsError: ``out_dir`` holds something else.

    References:
        Schürholt et al. (2022), Model Zoos; Liaw et al. (2018), Ray Tune.
    """
    from tqdm.auto import tqdm

    from zooscape.zoo.grid import group_configs, model_id
    from zooscape.zoo.spec import default_schema, dump_spec, parse_spec
    from zooscape.zoo.store import ZooStore

    source, out_dir = Path(source), Path(out_dir)
    report = ImportReport(out_dir=out_dir)
    guard = _Guard(root=source, limits=limits or ImportLimits(), follow_symlinks=follow_symlinks)
    trials = find_trials(source, follow_symlinks=follow_symlinks, notes=report.warnings)
    models, datainfo, schema = _Models(), _DataInfo(report), default_schema()
    parsed: dict[str, _Parsed] = {}
    for path in tqdm(trials, desc="checking trials", unit="trial", disable=not progress):
        rel = str(path.relative_to(source)) or "."
        try:
            p = _parse(path, source, dataset, model_types, models, datainfo, optimizer, report, guard, schema)
        except TrialError as exc:
            report.skipped.append((rel, str(exc)))
            log.info("skipped trial %s: %s", rel, exc)
            continue
        mid = model_id(p.sections)
        if mid in parsed:
            report.skipped.append((rel, f"same configuration as trial {parsed[mid].rel} (model {mid})"))
            continue
        p.model_id = mid
        parsed[mid] = p
    if not parsed:
        raise ValueError(f"no trial of {source} could be imported ({len(report.skipped)} broken):\n"
                         + report.summary())

    configs = [{"model_id": m, "group_id": None, **p.sections, "derived": p.derived} for m, p in parsed.items()]
    groups = group_configs(configs, max_population)
    by_id = {c["model_id"]: c for c in configs}
    for g in groups:
        for m in g.model_ids:
            by_id[m]["group_id"] = g.group_id
    zoo_name = name or source.resolve().name
    description = f"imported from the Ray Tune layout at {source.resolve()} ({len(parsed)} trials)"
    doc = _spec_doc(list(parsed.values()), zoo_name, description, max_population)
    spec_file = out_dir / "spec.toml"
    try:
        spec = parse_spec(doc, spec_file)
    except ValueError as exc:
        raise ValueError(f"the imported configs do not form a valid spec: {exc}") from exc
    store = ZooStore(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    with store.lock():
        catalog = store.create_or_check(dump_spec(spec), spec.fingerprint())
        try:
            catalog.set_meta({"imported_from": str(source.resolve()), "import_format": "ray_tune"})
            catalog.add_models(configs)
            for g in tqdm(groups, desc="writing shards", unit="group", disable=not progress):
                members = [parsed[m] for m in g.model_ids]
                ck_rows, mt_rows = [], []
                for epoch in sorted({e for p in members for e in p.epochs}):
                    have = [p for p in members if epoch in p.epochs]
                    tensors = {p.model_id: read_state_dict(p.trial.checkpoints[epoch], guard) for p in have}
                    rel = store.write_shard(g.group_id, epoch, "weights", tensors, {"source": "ray_tune"})
                    ck_rows += [(p.model_id, epoch, "weights", rel) for p in have]
                    report.n_checkpoints += len(have)
                    opt = [p for p in members if epoch in p.optim_epochs]
                    if opt:
                        states = {p.model_id: optimizer_from_torch(_torch_load(p.trial.optimizers[epoch], guard),
                                                                   p.param_names) for p in opt}
                        rel = store.write_shard(g.group_id, epoch, "optimizer", states, {"source": "ray_tune"})
                        ck_rows += [(p.model_id, epoch, "optimizer", rel) for p in opt]
                for p in members:
                    mt_rows += [(p.model_id, e, k, v) for e, k, v in p.metrics]
                catalog.record(metrics=mt_rows, checkpoints=ck_rows,
                               statuses={p.model_id: p.status for p in members})
                report.imported += [(p.rel, p.model_id) for p in members]
        finally:
            catalog.close()
    report.imported.sort()
    log.info("%s", report.summary())
    return report
