"""The phase-transition study: a temperature x load grid, every metric per cell, phases, averaging and soups.

``zooscape phase run SPEC --out DIR`` / :func:`run_study` trains the grid of a *study spec* (a zoo spec, see
``docs/zoo-format.md``, plus a ``[phase]`` section) into a zoo directory, or finishes/reuses the zoo already there
(:func:`zooscape.zoo.train_zoo` resumes), and then computes at one epoch ``E``:

=====================  ==============================================  =========================================
part                   rows (``analyses`` table)                      computed by
=====================  ==============================================  =========================================
performance            train/test loss and error                       the trainer (``metrics`` table, epoch E)
``hessian``            top eigenvalue, trace (+ std error), per model  ``metrics run`` tasks (landscape)
``cka``                linear CKA of the outputs, every seed pair      ``metrics run`` tasks (landscape)
``curves``             Bezier (3 bends) ``mc`` etc. of every seed pair ``curve pairs`` tasks (connect)
``lmc``                L2 distance and linear barriers, every pair     ``lmc pairs`` tasks (connect)
``averaging``          epoch average per model; naive / aligned seed   :class:`EpochAverageTask`,
                       average and uniform / greedy soup per cell      :class:`CellAverageTask` (phase, align)
=====================  ==============================================  =========================================

Every part is a list of picklable tasks run on the zoo's engine (in-process, ``workers`` local processes or Ray)
whose rows the driver commits one task at a time (:mod:`zooscape.studies.jobs`); tasks whose rows are stored with
the same settings are skipped, so a re-run after any interruption recomputes nothing that is stored. Grid cells
are those of :mod:`zooscape.studies.cells`. The study's settings are stored in the catalog's ``meta`` table
(``phase_study``), so :func:`phase_table` (one row per cell, mean/std over seeds, classified) and
``zooscape phase plot DIR`` read them back from the zoo alone.

The ``[phase]`` section (every key optional)::

    [phase]
    temperature = "training.batch_size"  # grid key of the temperature axis (default: the first of batch_size,
                                         # lr, weight_decay that the grid varies)
    load = "model.width"                 # grid key of the load axis (width, train_fraction, label_noise)
    epoch = 20                           # study epoch E (default: training.epochs)
    average_last = 5                     # epoch averaging over the checkpoints at E-4..E
    bn_samples = 1024                    # training samples for BatchNorm re-estimation (0 = all)
    seed = 0                             # seed of that subset and of MergeMany's order
    parts = ["hessian", "cka", "curves", "lmc", "averaging"]
    [phase.hessian]                      # settings of `zooscape metrics run` (n_samples, num_probes, ...)
    [phase.cka]
    [phase.curves]                       # epochs, batch_size, lr, momentum, weight_decay, optimizer, seed,
                                         # num_bends, n_points, mc_points, bn_mode
    [phase.lmc]                          # n_points, bn_mode
    [phase.thresholds]                   # zooscape.phase.DEFAULT_THRESHOLDS

References:
    Schürholt, Mahoney, et al. (2024/2025), "A Model Zoo on Phase Transitions in Neural Networks"; Yang et al.
    (2021), "Taxonomizing local versus global structure in neural network loss landscapes".
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from zooscape.studies.cells import cell_settings, zoo_cells
from zooscape.studies.curves import curve_pairs, pair_params
from zooscape.studies.jobs import commit_task_results, zoo_store
from zooscape.studies.lmc import pair_barrier_params, pair_barriers
from zooscape.studies.metrics import metric_params, run_metrics
from zooscape.zoo.catalog import Catalog
from zooscape.zoo.engines import Engine, get_engine
from zooscape.zoo.spec import SpecError, ZooSpec, dump_spec, load_spec, parse_spec
from zooscape.zoo.store import is_zoo

__all__ = [
    "LOAD_KEYS",
    "PARTS",
    "STUDY_METRICS",
    "TEMPERATURE_KEYS",
    "CellAverageTask",
    "EpochAverageTask",
    "StudySpec",
    "load_study_spec",
    "parse_study_spec",
    "phase_table",
    "plot_study",
    "run_cell_average_task",
    "run_epoch_average_task",
    "run_study",
    "study_records",
    "study_settings",
]

#: Parts of the study after training (``[phase] parts``), in the order they run.
PARTS: tuple[str, ...] = ("hessian", "cka", "curves", "lmc", "averaging")
#: Grid keys recognised as the temperature axis (default: the first the grid varies).
TEMPERATURE_KEYS: tuple[str, ...] = ("training.batch_size", "training.lr", "training.weight_decay")
#: Grid keys recognised as the load axis.
LOAD_KEYS: tuple[str, ...] = ("model.width", "dataset.train_fraction", "dataset.label_noise")
#: The metrics drawn by ``zooscape phase plot`` by default (one PNG each), in this order.
STUDY_METRICS: tuple[str, ...] = (
    "train_loss", "train_error", "test_loss", "test_error",
    "hessian_log_top_eigenvalue", "hessian_log_trace", "hessian_log_trace_se",
    "cka",
    "curve_mc_loss_train", "curve_mc_error_train", "curve_mc_loss_test", "curve_mc_error_test",
    "barrier_loss_train_linear", "barrier_error_train_linear", "barrier_loss_test_linear",
    "barrier_error_test_linear", "distance",
    "epoch_avg_acc_test", "epoch_avg_acc_test_delta",
    "seed_avg_naive_acc_test", "seed_avg_naive_acc_test_delta",
    "seed_avg_aligned_acc_test", "seed_avg_aligned_acc_test_delta",
    "soup_uniform_acc_test_delta", "soup_greedy_acc_test", "soup_greedy_acc_test_delta", "soup_greedy_size",
)  # fmt: skip

META_KEY = "phase_study"
EPOCH_AVERAGE = "phase_epoch_average"
SEED_AVERAGE = "phase_seed_average"
_CURVE_KEYS = ("kind", "num_bends", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "seed",
               "n_points", "mc_points", "bn_mode")
_DEFAULTS: dict[str, Any] = {
    "temperature": None, "load": None, "epoch": None, "average_last": 5, "bn_samples": 1024, "seed": 0,
    "parts": list(PARTS), "hessian": {}, "cka": {},
    "curves": {"kind": "bezier", "num_bends": 1, "epochs": 10, "batch_size": 128, "optimizer": "sgd", "lr": 0.1,
               "momentum": 0.9, "weight_decay": 1e-4, "seed": 0, "n_points": 5, "mc_points": 5, "bn_mode": "reset"},
    "lmc": {"n_points": 11, "bn_mode": "reset"},
    "thresholds": {},
}  # fmt: skip


# ------------------------------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class StudySpec:
    """A parsed study spec.

    Attributes:
        zoo: the zoo part (dataset, model, training, checkpoints, grid, population).
        settings: the validated ``[phase]`` settings with defaults filled in (see :func:`study_settings`).
        path: the file.
    """

    zoo: ZooSpec
    settings: dict[str, Any]
    path: str


def _int(file: str, key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(file, f"[phase] '{key}'", f"must be an int >= {low}, got {value!r}")
    return int(value)


def _axis(file: str, role: str, value: Any, grid: Mapping[str, Any], known: Sequence[str]) -> str:
    if value is None:
        found = [k for k in known if k in grid]
        if not found:
            raise SpecError(file, f"[phase] '{role}'", f"the grid varies none of {list(known)}; name the grid key "
                                                        f"of the {role} axis (grid keys: {sorted(grid)})")
        return found[0]
    if not isinstance(value, str) or value not in grid:
        raise SpecError(file, f"[phase] '{role}'", f"must be a key of [grid] ({sorted(grid)}), got {value!r}")
    if value in ("training.seed", "training.data_seed"):
        raise SpecError(file, f"[phase] '{role}'", f"{value!r} varies within a cell; pick a setting")
    return value


def study_settings(raw: Mapping[str, Any] | None, zoo: ZooSpec, file: str = "<memory>") -> dict[str, Any]:
    """Validate a ``[phase]`` table against its zoo spec and fill in the defaults.

    Args:
        raw: the ``[phase]`` table (None or empty: all defaults).
        zoo: the zoo spec (its grid decides the axes).
        file: file name for error messages.

    Returns:
        dict with every key of the ``[phase]`` section (see the module docstring); ``hessian`` and ``cka`` are the
        full settings of :func:`zooscape.studies.metrics.metric_params`, ``thresholds`` the full classification
        settings.

    Raises:
        SpecError: unknown key, invalid value, axes that are not grid keys, or a grid that varies anything but
            the two axes and the seeds (the message names the key).
    """
    from zooscape.phase.classify import threshold_settings

    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(_DEFAULTS))
    if unknown:
        raise SpecError(file, f"[phase] '{unknown[0]}'", f"unknown key (allowed: {', '.join(_DEFAULTS)})")
    s = copy.deepcopy(_DEFAULTS)
    for key in ("hessian", "cka", "curves", "lmc", "thresholds"):
        if key in raw and not isinstance(raw[key], dict):
            raise SpecError(file, f"[phase.{key}]", "must be a table")
    s.update({k: v for k, v in raw.items() if k not in ("curves", "lmc")})
    for key in ("curves", "lmc"):
        extra = sorted(set(raw.get(key, {})) - set(_DEFAULTS[key]))
        if extra:
            raise SpecError(file, f"[phase.{key}] '{extra[0]}'", f"unknown key (allowed: {', '.join(_DEFAULTS[key])})")
        s[key].update(raw.get(key, {}))
    grid = dict(zoo.grid)
    s["temperature"] = _axis(file, "temperature", s["temperature"], grid, TEMPERATURE_KEYS)
    s["load"] = _axis(file, "load", s["load"], grid, LOAD_KEYS)
    if s["temperature"] == s["load"]:
        raise SpecError(file, "[phase] 'load'", f"must differ from the temperature axis {s['temperature']!r}")
    others = sorted(set(grid) - {s["temperature"], s["load"], "training.seed", "training.data_seed"})
    if others:
        raise SpecError(file, f"[grid] '{others[0]}'", "a phase study's grid varies only the temperature and load "
                                                      f"axes ({s['temperature']}, {s['load']}) and the seeds")
    epochs = int(zoo.training["epochs"])
    if s["epoch"] is not None:
        s["epoch"] = _int(file, "epoch", s["epoch"], 1)
        if s["epoch"] > epochs:
            raise SpecError(file, "[phase] 'epoch'", f"must be <= training.epochs = {epochs}, got {s['epoch']}")
    s["average_last"] = _int(file, "average_last", s["average_last"], 1)
    s["bn_samples"] = _int(file, "bn_samples", s["bn_samples"], 0)
    s["seed"] = _int(file, "seed", s["seed"], 0)
    parts = s["parts"]
    if not isinstance(parts, list) or any(p not in PARTS for p in parts):
        raise SpecError(file, "[phase] 'parts'", f"must be a list of {list(PARTS)}, got {parts!r}")
    s["parts"] = [p for p in PARTS if p in parts]
    try:
        s["hessian"] = metric_params("hessian", s["hessian"])
        s["cka"] = metric_params("cka", s["cka"])
        s["thresholds"] = threshold_settings(s["thresholds"])
        _curve_config(s["curves"])
        pair_barrier_params(s["lmc"]["n_points"], s["lmc"]["bn_mode"])
    except (ValueError, TypeError) as exc:
        raise SpecError(file, "[phase]", str(exc)) from exc
    for key in ("n_points", "mc_points", "num_bends"):
        _int(file, f"curves.{key}", s["curves"][key], 0 if key == "num_bends" else 2)
    _int(file, "lmc.n_points", s["lmc"]["n_points"], 2)
    return s


def parse_study_spec(doc: Mapping[str, Any], file: str | Path = "<memory>") -> StudySpec:
    """Validate a study spec document (a zoo spec plus ``[phase]``).

    Args:
        doc: parsed TOML.
        file: file name for error messages.

    Returns:
        :class:`StudySpec`.

    Raises:
        SpecError: any problem of the zoo spec or of ``[phase]``.
    """
    file = str(file)
    doc = dict(doc)
    raw = doc.pop("phase", {})
    if not isinstance(raw, dict):
        raise SpecError(file, "[phase]", "must be a table")
    zoo = parse_spec(doc, file=file)
    return StudySpec(zoo=zoo, settings=study_settings(raw, zoo, file), path=file)


def load_study_spec(path: str | Path) -> StudySpec:
    """Read a study spec file, or the spec of an existing zoo directory (with the study settings stored there).

    Args:
        path: TOML file, or a zoo directory (its ``spec.toml``; ``[phase]`` settings from its catalog if a study
            ran there, else the defaults).

    Returns:
        :class:`StudySpec`.

    Raises:
        FileNotFoundError: neither a file nor a zoo directory.
        SpecError: invalid TOML or spec.
    """
    path = Path(path)
    if path.is_dir():
        if not is_zoo(path):
            raise FileNotFoundError(f"{path} is not a zoo directory (no catalog.sqlite)")
        zoo = load_spec(path / "spec.toml")
        return StudySpec(zoo=zoo, settings=_stored_settings(path) or study_settings(None, zoo, str(path)),
                         path=str(path))
    if not path.is_file():
        raise FileNotFoundError(f"spec file {path} does not exist")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, "<toml>", f"invalid TOML: {exc}") from exc
    return parse_study_spec(doc, file=path)


def _stored_settings(zoo_dir: str | Path) -> dict[str, Any] | None:
    with Catalog(Path(zoo_dir) / "catalog.sqlite", readonly=True) as catalog:
        text = catalog.meta().get(META_KEY)
    return None if text is None else json.loads(text)


def _curve_config(curves: Mapping[str, Any]) -> Any:
    from zooscape.connect.curve_train import CurveTrainConfig

    keys = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "seed")
    cfg = CurveTrainConfig(**{k: curves[k] for k in keys})
    cfg.validate()
    return cfg


def _curve_params(settings: Mapping[str, Any]) -> dict[str, Any]:
    from zooscape.connect.curve import check_kind

    c = settings["curves"]
    return pair_params(check_kind(c["kind"]), c["num_bends"], _curve_config(c), c["n_points"], c["mc_points"],
                       c["bn_mode"], ("train", "test"))


# ------------------------------------------------------------------------------------------------ averaging


def _bn_inputs(data: Any, n: int, seed: int) -> Any:
    import torch

    x = data.train_x
    if n and n < x.shape[0]:
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:n]
        x = x[torch.sort(idx).values]
    return x


def _evaluate(model: Any, data: Any, split: str) -> tuple[float, float]:
    from zooscape.connect.metrics import evaluate_model

    x, y = data.split(split)
    loss, error = evaluate_model(model, x, y, data.task)
    return float(loss), float("nan") if error is None else 1.0 - float(error)


@dataclass
class EpochAverageTask:
    """Epoch averaging of one model: the uniform average of its checkpoints ``epochs`` (picklable).

    Args:
        root: zoo directory.
        model_id: the model.
        epoch: the study epoch (the last of ``epochs``).
        params: stored settings (``analysis``, ``average_last``, ``epochs``, ``bn_samples``, ``seed``).
        device: torch device.
    """

    root: str
    model_id: str
    epoch: int
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"


def run_epoch_average_task(task: EpochAverageTask) -> dict[str, Any]:
    """Average the model's checkpoints, re-estimate BatchNorm, evaluate; return catalog rows.

    Rows (``model_id``, epoch = the study epoch): ``epoch_avg_acc_test``, ``epoch_avg_loss_test`` and
    ``epoch_avg_acc_test_delta`` (the average's test accuracy minus the model's at the study epoch).

    Args:
        task: the task.

    Returns:
        dict with ``model_ids`` and ``rows``.

    References:
        Izmailov et al. (2018), SWA; Schürholt et al. (2024), "wiseft" epoch averaging of the phase zoo.
    """
    from zooscape.phase.averaging import epoch_average
    from zooscape.zoo.reader import open_zoo

    p = task.params
    with open_zoo(task.root) as zoo:
        model = zoo.load_model(task.model_id, task.epoch, device=task.device)
        states = [zoo.state_dict(task.model_id, e) for e in p["epochs"]]
        data = zoo.data(task.model_id)
    avg = epoch_average(model, states, bn_data=_bn_inputs(data, p["bn_samples"], p["seed"]))
    loss, acc = _evaluate(avg, data, "test")
    _, acc0 = _evaluate(model, data, "test")
    values = {"epoch_avg_acc_test": acc, "epoch_avg_loss_test": loss, "epoch_avg_acc_test_delta": acc - acc0}
    rows = [{"model_id": task.model_id, "other_id": None, "epoch": task.epoch, "metric": k, "value": v,
             "params": p} for k, v in values.items()]
    return {"model_ids": [task.model_id], "rows": rows}


@dataclass
class CellAverageTask:
    """Seed averaging and soups of one grid cell at one epoch (picklable).

    Args:
        root: zoo directory.
        cell: cell index.
        epoch: the study epoch.
        params: stored settings (``analysis``, ``members``, ``bn_samples``, ``seed``, ``selection_split``).
        device: torch device.
    """

    root: str
    cell: int
    epoch: int
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"


def run_cell_average_task(task: CellAverageTask) -> dict[str, Any]:
    """Average a cell's seeds (naive; weight-matched) and make its soups; return catalog rows.

    Rows (``model_id`` = the cell's first member, ``other_id`` NULL, ``params.members`` = all members):
    ``seed_avg_naive_*``, ``seed_avg_aligned_*``, ``soup_uniform_*`` and ``soup_greedy_*`` with suffixes
    ``acc_test``, ``loss_test`` and ``acc_test_delta`` (test accuracy minus the mean of the members'), plus
    ``soup_greedy_size`` (ingredients) and ``soup_greedy_acc_<selection split>``. The uniform soup of a cell's
    seeds is by definition their naive average (one model, computed once, stored under both names).

    Args:
        task: the task.

    Returns:
        dict with ``model_ids`` and ``rows``.

    References:
        Ainsworth et al. (2023), "Git Re-Basin"; Wortsman et al. (2022), "Model soups".
    """
    from zooscape.phase.averaging import average_models, greedy_soup
    from zooscape.zoo.reader import open_zoo

    p = task.params
    members = list(p["members"])
    with open_zoo(task.root) as zoo:
        models = [zoo.load_model(m, task.epoch, device=task.device) for m in members]
        data = zoo.data(members[0])
    bn_x = _bn_inputs(data, p["bn_samples"], p["seed"])
    base = sum(_evaluate(m, data, "test")[1] for m in models) / len(models)
    results = {
        "seed_avg_naive": average_models(models, "none", bn_data=bn_x),
        "seed_avg_aligned": average_models(models, "weight", bn_data=bn_x, seed=p["seed"]),
    }
    results["soup_uniform"] = results["seed_avg_naive"]
    x_sel, y_sel = data.split(p["selection_split"])
    soup = greedy_soup(models, x_sel, y_sel, bn_data=bn_x)
    results["soup_greedy"] = soup.model
    values: dict[str, float] = {}
    for name, model in results.items():
        loss, acc = _evaluate(model, data, "test")
        values.update({f"{name}_acc_test": acc, f"{name}_loss_test": loss, f"{name}_acc_test_delta": acc - base})
    values["soup_greedy_size"] = float(len(soup.ingredients))
    values[f"soup_greedy_acc_{p['selection_split']}"] = soup.accuracy
    rows = [{"model_id": members[0], "other_id": None, "epoch": task.epoch, "metric": k, "value": v, "params": p}
            for k, v in values.items()]
    return {"model_ids": members, "cell": task.cell, "rows": rows}


def _stored_params(catalog: Any, metric: str, epoch: int) -> set[tuple[str, str]]:
    rows = catalog.query("SELECT model_id, params FROM analyses WHERE metric = ? AND epoch = ?", (metric, epoch))
    return {(m, p) for m, p in rows}


def _averaging_tasks(zoo: Any, settings: Mapping[str, Any], epoch: int, device: str
                     ) -> tuple[list[EpochAverageTask], list[CellAverageTask], int, list[str]]:
    k = settings["average_last"]
    window = list(range(epoch - k + 1, epoch + 1))
    if window[0] < 0:
        raise ValueError(f"[phase] average_last = {k} reaches before epoch 0 from the study epoch {epoch}")
    common = {"bn_samples": settings["bn_samples"], "seed": settings["seed"]}
    stored_e = _stored_params(zoo.catalog, "epoch_avg_acc_test", epoch)
    stored_c = _stored_params(zoo.catalog, "seed_avg_naive_acc_test", epoch)
    epoch_tasks, cell_tasks, done, messages = [], [], 0, []
    for cell in zoo_cells(zoo):
        usable = [m for m in cell.model_ids if epoch in zoo.epochs(m, "weights")]
        for mid in usable:
            missing = [e for e in window if e not in zoo.epochs(mid, "weights")]
            if missing:
                raise ValueError(f"epoch averaging of the last {k} epochs needs weights checkpoints at epochs "
                                 f"{window}; model {mid} has none at {missing} (add them to [checkpoints] epochs, "
                                 "or lower [phase] average_last)")
            params = {"analysis": EPOCH_AVERAGE, "average_last": k, "epochs": window, **common}
            if (mid, json.dumps(params, sort_keys=True)) in stored_e:
                done += 1
            else:
                epoch_tasks.append(EpochAverageTask(str(zoo.path), mid, epoch, params, device))
        if len(usable) < 2:
            messages.append(f"{cell.label}: fewer than 2 models at epoch {epoch}, no seed averaging")
            continue
        params = {"analysis": SEED_AVERAGE, "members": usable, "selection_split": "val", **common}
        if (usable[0], json.dumps(params, sort_keys=True)) in stored_c:
            done += 1
        else:
            cell_tasks.append(CellAverageTask(str(zoo.path), cell.index, epoch, params, device))
    return epoch_tasks, cell_tasks, done, messages


# ------------------------------------------------------------------------------------------------ the driver


def _study_epoch(settings: Mapping[str, Any], zoo_spec: ZooSpec, epoch: int | None) -> int:
    e = epoch if epoch is not None else settings["epoch"]
    e = int(zoo_spec.training["epochs"]) if e is None else int(e)
    if not 1 <= e <= int(zoo_spec.training["epochs"]):
        raise ValueError(f"epoch must lie in [1, training.epochs = {zoo_spec.training['epochs']}], got {e}")
    return e


def _check_window(study: StudySpec, e: int) -> None:
    """Epoch averaging needs weights checkpoints at the last ``average_last`` epochs up to ``e`` (checked before
    anything is trained or written)."""
    from zooscape.zoo.grid import checkpoint_epochs

    k = study.settings["average_last"]
    window = list(range(e - k + 1, e + 1))
    stored = checkpoint_epochs(study.zoo.checkpoint_epochs, int(study.zoo.training["epochs"]))
    missing = [x for x in window if x not in stored]
    if window[0] < 0 or missing:
        raise SpecError(study.path, "[checkpoints] epochs", f"epoch averaging of the last {k} epochs up to epoch "
                                                            f"{e} needs checkpoints at epochs {window}; missing "
                                                            f"{missing or window[:1]} (or lower [phase] average_last)")


def _resolve_device(device: str) -> str:
    from zooscape.train.trainer import resolve_device

    return str(resolve_device(device))


def run_study(
    spec: str | Path,
    out_dir: str | Path | None = None,
    *,
    epoch: int | None = None,
    engine: str | Engine = "local",
    workers: int = 1,
    device: str = "auto",
    progress: Callable[[str], None] | None = None,
    train_progress: bool = False,
    engine_options: Mapping[str, Any] | None = None,
) -> Any:
    """Run the phase-transition study of ``spec``: train (or reuse) the grid, compute and store every metric.

    Args:
        spec: study spec file (zoo spec + ``[phase]``), or an existing zoo directory (its spec; the study settings
            stored there by an earlier run, else the defaults).
        out_dir: the zoo directory (created; an existing zoo of the same spec is reused and finished). Default:
            ``spec`` when it is a zoo directory.
        epoch: the study epoch (default: ``[phase] epoch``, else ``training.epochs``).
        engine: ``"local"``, ``"ray"`` or an :class:`~zooscape.zoo.engines.Engine` (training and every part).
        workers: worker processes of the local engine.
        device: torch device (``"auto"``: CUDA, else MPS, else CPU).
        progress: optional ``fn(message)`` for progress messages.
        train_progress: show the training progress bar.
        engine_options: keyword arguments of the named engine (Ray: ``address``, ``num_cpus``, ...).

    Returns:
        The classified cell table (:func:`phase_table`).

    Raises:
        SpecError: invalid spec (nothing written).
        ZooExistsError: ``out_dir`` holds another zoo or other files.
        RuntimeError: another process writes the zoo.
        ValueError: bad settings, e.g. missing checkpoints for epoch averaging.
    """
    from zooscape.zoo.reader import open_zoo
    from zooscape.zoo.runner import train_zoo

    study = load_study_spec(spec)
    if out_dir is None:
        if not Path(spec).is_dir():
            raise ValueError("out_dir is required when spec is a spec file")
        out_dir = spec
    out = Path(out_dir)
    settings = study.settings
    e = _study_epoch(settings, study.zoo, epoch)
    if "averaging" in settings["parts"]:
        _check_window(study, e)
    say = progress or (lambda message: None)
    dev = _resolve_device(device)
    eng = get_engine(engine, workers, **dict(engine_options or {}))
    try:
        with tempfile.TemporaryDirectory(prefix="zooscape-phase-") as tmp:
            spec_file = Path(tmp) / f"{study.zoo.name}.toml"
            spec_file.write_text(dump_spec(study.zoo), encoding="utf-8")
            say(f"training the grid into {out} (finished models are skipped)")
            train_zoo(spec_file, out, engine=eng, device=device, progress=train_progress).close()
        store = zoo_store(out)
        with store.lock(), Catalog(store.catalog_path) as catalog:
            catalog.set_meta({META_KEY: json.dumps(settings, sort_keys=True)})
        parts = settings["parts"]
        common = {"engine": eng, "device": dev, "progress": say}
        for metric in ("hessian", "cka"):
            if metric in parts:
                say(f"[{metric}] at epoch {e}")
                run_metrics(out, metric, epoch=e, params=settings[metric], **common)
        if "curves" in parts:
            c = settings["curves"]
            say(f"[curves] {c['kind']} curves with {c['num_bends']} inner bend(s) between seed pairs at epoch {e}")
            curve_pairs(out, e, kind=c["kind"], num_bends=c["num_bends"], train_config=_curve_config(c),
                        n_points=c["n_points"], mc_points=c["mc_points"], splits=("train", "test"),
                        bn_mode=c["bn_mode"], **common)
        if "lmc" in parts:
            say(f"[lmc] linear paths between seed pairs at epoch {e}")
            pair_barriers(out, e, settings["lmc"]["n_points"], settings["lmc"]["bn_mode"], ("train", "test"),
                          **common)
        if "averaging" in parts:
            with open_zoo(out) as zoo:
                epoch_tasks, cell_tasks, done, messages = _averaging_tasks(zoo, settings, e, dev)
            for message in messages:
                say(message)
            say(f"[averaging] {len(epoch_tasks)} epoch average(s), {len(cell_tasks)} cell(s) to compute; "
                f"{done} already stored")
            n = len(epoch_tasks) + len(cell_tasks)

            def report(i: int, result: dict[str, Any]) -> None:
                rows = {r["metric"]: r["value"] for r in result["rows"]}
                head = "seed_avg_aligned_acc_test_delta" if "cell" in result else "epoch_avg_acc_test_delta"
                say(f"[averaging] {' '.join(result['model_ids'])[:60]}: {head} = {rows[head]:+.4f}")

            commit_task_results(store, eng, run_epoch_average_task, epoch_tasks, on_result=report)
            commit_task_results(store, eng, run_cell_average_task, cell_tasks,
                                on_result=lambda i, r: report(i + len(epoch_tasks), r))
            if n:
                say(f"[averaging] {n} task(s) stored")
    finally:
        if isinstance(engine, str) and callable(getattr(eng, "close", None)):
            eng.close()
    return phase_table(out, epoch=e)


# ------------------------------------------------------------------------------------------------ reading


def _matches(params: Mapping[str, Any], settings: Mapping[str, Any], e: int) -> str | None:
    """The part a stored row belongs to, if it was stored with the study's settings."""
    analysis = params.get("analysis")
    if analysis in ("hessian", "cka"):
        return analysis if dict(params) == {"analysis": analysis, **settings[analysis]} else None
    if analysis == EPOCH_AVERAGE:
        want = {"analysis": EPOCH_AVERAGE, "average_last": settings["average_last"],
                "epochs": list(range(e - settings["average_last"] + 1, e + 1)), "bn_samples": settings["bn_samples"],
                "seed": settings["seed"]}
        return "averaging" if dict(params) == want else None
    if analysis == SEED_AVERAGE:
        rest = {k: v for k, v in params.items() if k != "members"}
        want = {"analysis": SEED_AVERAGE, "selection_split": "val", "bn_samples": settings["bn_samples"],
                "seed": settings["seed"]}
        return "averaging" if rest == want else None
    experiment = params.get("experiment")
    if experiment == "curve_pairs":
        return "curves" if dict(params) == _curve_params(settings) else None
    if experiment == "lmc_pairs":
        lmc = settings["lmc"]
        return "lmc" if dict(params) == pair_barrier_params(lmc["n_points"], lmc["bn_mode"]) else None
    return None


def study_records(zoo: Any, settings: Mapping[str, Any] | None = None, epoch: int | None = None) -> Any:
    """Every stored value of the study at one epoch as long records (one row per model / pair / cell and metric).

    Args:
        zoo: an open :class:`~zooscape.zoo.reader.Zoo` or a zoo directory.
        settings: study settings (default: those stored by :func:`run_study`, else the defaults for the zoo).
        epoch: the study epoch (default: the settings', else ``training.epochs``).

    Returns:
        pandas DataFrame with columns ``cell``, the temperature and load keys, ``model_id``, ``other_id``,
        ``metric``, ``value``; its ``attrs`` hold ``temperature_key``, ``load_key``, ``epoch`` and ``settings``.
        Performance rows come from the trainer's metrics at the epoch (``train_loss``, ``test_loss``,
        ``train_error = 1 - train_acc``, ``test_error``); the rest from the ``analyses`` table, only rows stored
        with the study's settings and models of the same cell.
    """
    import pandas as pd

    from zooscape.zoo.reader import Zoo, open_zoo

    if not isinstance(zoo, Zoo):
        with open_zoo(zoo) as opened:
            return study_records(opened, settings, epoch)
    settings = settings or _stored_settings(zoo.path) or study_settings(None, zoo.spec, str(zoo.path))
    e = _study_epoch(settings, zoo.spec, epoch)
    tkey, lkey = settings["temperature"], settings["load"]
    cells = zoo_cells(zoo)
    cell_of: dict[str, int] = {}
    axes: dict[int, tuple[Any, Any]] = {}
    for cell in cells:
        flat = cell_settings(zoo.config(cell.model_ids[0]))
        axes[cell.index] = (flat.get(tkey), flat.get(lkey))
        cell_of.update({m: cell.index for m in cell.model_ids})
    records: list[tuple[Any, ...]] = []
    perf = zoo.catalog.query("SELECT model_id, name, value FROM metrics WHERE epoch = ? AND name IN "
                             "('train_loss', 'test_loss', 'train_acc', 'test_acc')", (e,))
    for mid, name, value in perf:
        if mid not in cell_of:
            continue
        if name.endswith("_acc"):
            name, value = name[:-4] + "_error", None if value is None else 1.0 - value
        records.append((cell_of[mid], mid, None, name, value))
    parsed: dict[str, str | None] = {}
    rows = zoo.catalog.query("SELECT model_id, other_id, metric, value, params FROM analyses WHERE epoch = ? "
                             "ORDER BY id", (e,))
    for mid, oid, metric, value, text in rows:
        if text not in parsed:
            parsed[text] = _matches(json.loads(text), settings, e)
        if parsed[text] is None or mid not in cell_of or (oid is not None and cell_of.get(oid) != cell_of[mid]):
            continue
        records.append((cell_of[mid], mid, oid, metric, value))
    frame = pd.DataFrame(records, columns=["cell", "model_id", "other_id", "metric", "value"])
    frame = frame.drop_duplicates(subset=["cell", "model_id", "other_id", "metric"], keep="last")
    frame.insert(1, tkey, [axes[c][0] for c in frame["cell"]])
    frame.insert(2, lkey, [axes[c][1] for c in frame["cell"]])
    frame = frame.astype({"value": "float64"}).reset_index(drop=True)
    frame.attrs.update({"temperature_key": tkey, "load_key": lkey, "epoch": e, "settings": dict(settings)})
    return frame


def phase_table(zoo: Any, settings: Mapping[str, Any] | None = None, epoch: int | None = None,
                thresholds: Mapping[str, Any] | None = None) -> Any:
    """One row per grid cell: every study metric's mean/std/count over the cell's seeds, and its phase.

    Args:
        zoo: an open :class:`~zooscape.zoo.reader.Zoo` or a zoo directory.
        settings: study settings (default: those stored by :func:`run_study`).
        epoch: the study epoch.
        thresholds: classification settings overriding the study's ``[phase.thresholds]``.

    Returns:
        pandas DataFrame (see :func:`zooscape.phase.cell_table` and :func:`zooscape.phase.classify`); ``attrs``
        as in :func:`study_records`.
    """
    from zooscape.phase.classify import classify
    from zooscape.phase.table import add_log_metrics, cell_table

    records = study_records(zoo, settings, epoch)
    attrs = dict(records.attrs)
    table = cell_table(add_log_metrics(records), by=[attrs["temperature_key"], attrs["load_key"]])
    if table.empty:
        raise ValueError(f"no stored values at epoch {attrs['epoch']} in {zoo}: run 'zooscape phase run' first")
    limits = {**attrs["settings"]["thresholds"], **dict(thresholds or {})}
    try:
        table = classify(table, limits)
    except KeyError as exc:
        missing = exc.args[0] if exc.args else exc
        raise KeyError(f"cannot classify the phases: {missing} (did every part of the study run?)") from None
    table.attrs.update(attrs)
    return table


def plot_study(zoo_dir: str | Path, out_dir: str | Path | None = None, epoch: int | None = None,
               metrics: Sequence[str] | None = None, thresholds: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Draw the study's figures: one PNG per metric, the phase map and the overview (``zooscape phase plot``).

    Args:
        zoo_dir: the study's zoo directory.
        out_dir: where to write (default ``<zoo_dir>/plots/phase``).
        epoch: the study epoch.
        metrics: metrics to draw (default: :data:`STUDY_METRICS` present in the table).
        thresholds: classification settings overriding the stored ones.

    Returns:
        dict name -> written path (see :func:`zooscape.phase.plot_phases`).
    """
    from zooscape.phase.plot import plot_phases
    from zooscape.phase.table import metric_names

    table = phase_table(zoo_dir, epoch=epoch, thresholds=thresholds)
    present = metric_names(table)
    names = [m for m in (metrics or STUDY_METRICS) if m in present]
    unknown = [m for m in (metrics or ()) if m not in present]
    if unknown:
        raise KeyError(f"metric(s) {unknown} are not in the study table (metrics: {present})")
    out = Path(out_dir) if out_dir is not None else Path(zoo_dir) / "plots" / "phase"
    with open(Path(zoo_dir) / "spec.toml", "rb") as fh:
        name = tomllib.load(fh).get("zoo", {}).get("name", "")
    title = f"{name}: epoch {table.attrs['epoch']}" if name else f"epoch {table.attrs['epoch']}"
    return plot_phases(table, out, metrics=names, title=title)

