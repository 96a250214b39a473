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

The ``[phase]`` section of a study spec is described in :mod:`zooscape.studies.phase_spec` and
``docs/phase.md``; the averaging tasks are in :mod:`zooscape.studies.phase_tasks`.

References:
    Schürholt, Mahoney, et al. (2024/2025), "A Model Zoo on Phase Transitions in Neural Networks"; Yang et al.
    (2021), "Taxonomizing local versus global structure in neural network loss landscapes".
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomllib

from zooscape.studies.cells import cell_settings, zoo_cells
from zooscape.studies.curves import curve_pairs
from zooscape.studies.jobs import commit_task_results, zoo_store
from zooscape.studies.lmc_pairs import pair_barriers
from zooscape.studies.metrics import run_metrics
from zooscape.studies.phase_spec import (
    LOAD_KEYS,
    META_KEY,
    PARTS,
    STUDY_METRICS,
    TEMPERATURE_KEYS,
    StudySpec,
    check_average_window,
    curve_pair_params,
    curve_train_config,
    lmc_params,
    load_study_spec,
    parse_study_spec,
    stored_settings,
    study_epoch,
    study_settings,
)
from zooscape.studies.phase_tasks import (
    EPOCH_AVERAGE,
    SEED_AVERAGE,
    CellAverageTask,
    EpochAverageTask,
    averaging_tasks,
    run_cell_average_task,
    run_epoch_average_task,
)
from zooscape.zoo.catalog import Catalog
from zooscape.zoo.engines import Engine, get_engine
from zooscape.zoo.spec import dump_spec

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
    e = study_epoch(settings, study.zoo, epoch)
    if "averaging" in settings["parts"]:
        check_average_window(study, e)
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
            curve_pairs(out, e, kind=c["kind"], num_bends=c["num_bends"], train_config=curve_train_config(c),
                        n_points=c["n_points"], mc_points=c["mc_points"], splits=("train", "test"),
                        bn_mode=c["bn_mode"], **common)
        if "lmc" in parts:
            say(f"[lmc] linear paths between seed pairs at epoch {e}")
            lmc = settings["lmc"]
            pair_barriers(out, e, lmc["n_points"], align=lmc["align"], renorm=lmc["renorm"], splits=("train", "test"),
                          seed=settings["seed"], **common)
        if "averaging" in parts:
            with open_zoo(out) as zoo:
                epoch_tasks, cell_tasks, done, messages = averaging_tasks(zoo, settings, e, dev)
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
        return "curves" if dict(params) == curve_pair_params(settings) else None
    if experiment == "lmc_pairs":
        return "lmc" if dict(params) == lmc_params(settings) else None
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
    settings = settings or stored_settings(zoo.path) or study_settings(None, zoo.spec, str(zoo.path))
    e = study_epoch(settings, zoo.spec, epoch)
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
        as in :func:`study_records`. Without the metrics the classification needs (a study run with fewer
        ``parts``) the table has no phase columns and a warning says which metric is missing.
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
    except KeyError as exc:  # a part the classification needs was not run: the table stays unclassified
        missing = exc.args[0] if exc.args else exc
        warnings.warn(f"phases not classified: {missing} (parts run: {attrs['settings']['parts']})", stacklevel=2)
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

