"""Curve mode-connectivity jobs: TOML-configured train/eval runs, and mc for every seed pair of a zoo.

The analyses live in :mod:`zooscape.connect` (``Curve``, ``train_curve``, ``evaluate_curve``, ``evaluate_plane``);
this module builds models and data from configs and zoos and writes files and catalog rows.

**Config files** use the keys of the TF port's ``config.toml`` (one TOML table per run, any name)::

    [curve-pretrained]
    dir = "results/digits/curve"          # output directory (relative paths: to the working directory)
    dataset = "digits"
    model = "mlp"
    curve = "Bezier"                      # "Bezier" | "PolyChain" (case-insensitive); absent: base model
    num-bends = 1                         # inner bends (see docs/curves.md)
    epochs = 10
    lr = 0.05
    wd = 0.0005
    seed = 1
    init-start = "results/digits/base-1"  # a model.safetensors file, or a directory holding one
    fix-start = true
    init-end = "results/digits/base-2"
    fix-end = true
    init-linear = true

A table **without** ``curve`` trains a base model (``dir/model.safetensors``); one with ``curve`` and without
``ckpt`` trains a curve (``dir/curve.safetensors``); one with ``ckpt`` evaluates a trained curve
(``dir/curve_eval.json`` and plots; keys ``num-points``, ``point-on-curve``, ``save-evaluation``). Keys beyond the
TF port's: ``data-path`` is passed as ``data_root``; ``dataset-args`` and ``model-args`` (inline tables) are
passed to ``load_dataset`` / ``create_model``; ``batch-size``, ``optimizer``, ``momentum``, ``schedule``,
``bn-mode``, ``splits``, ``mc-points``, ``plane``, ``grid-points``, ``margin``. ``resume-epoch`` is rejected.

**Zoo pairs** (:func:`curve_pairs`): for every grid cell (models whose configs differ only in
``training.seed`` / ``training.data_seed``), a curve is trained between every pair of models at one epoch and
evaluated; the summaries are ``analyses`` rows (``model_id`` < ``other_id``, ``metric = "curve_<stat>_<metric>_
<split>"`` e.g. ``curve_mc_error_test``, plus ``curve_length``; ``params.experiment = "curve_pairs"`` with every
setting). Curves and full evaluations are kept under ``DIR/curves/``. Pairs already stored with the same
settings are skipped, so an interrupted run resumes. Each pair is a picklable :class:`CurvePairTask`
(:func:`plan_curve_pairs`) that :func:`run_curve_pair_task` computes wherever the zoo's engine puts it
(in-process, local worker processes or Ray); it only reads the zoo and returns the rows and the files, which the
driver writes while holding the zoo's write lock (:mod:`zooscape.zoo.jobs`, as ``zooscape metrics run`` does).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from zooscape.zoo.engines import Engine, get_engine
from zooscape.zoo.grid import canonical_json
from zooscape.zoo.jobs import commit_task_results, stored_keys, zoo_store
from zooscape.zoo.shards import atomic_write_bytes
from zooscape.zoo.spec import SpecError

__all__ = [
    "CURVE_KEYS",
    "PAIRS_EXPERIMENT",
    "TF_KEYS",
    "CurvePairPlan",
    "CurvePairTask",
    "curve_pairs",
    "curve_records",
    "default_pair_config",
    "load_curve_config",
    "pair_params",
    "pair_train_config",
    "parse_curve_section",
    "plan_curve_pairs",
    "run_config",
    "run_curve_pair_task",
    "run_section",
    "section_role",
]

#: Keys of the TF port's config.toml (``resume-epoch`` is recognised and rejected).
TF_KEYS: tuple[str, ...] = (
    "dir", "dataset", "data-path", "model", "curve", "num-bends", "epochs", "lr", "wd", "seed", "init-start",
    "init-end", "fix-start", "fix-end", "ckpt", "resume-epoch", "init-linear", "num-points", "point-on-curve",
    "save-evaluation",
)  # fmt: skip
#: All accepted keys with their expected type (for messages).
CURVE_KEYS: dict[str, str] = {
    "dir": "path", "dataset": "data set name", "data-path": "path", "model": "model name",
    "curve": '"Bezier" or "PolyChain"', "num-bends": "int >= 0", "epochs": "int >= 0", "lr": "number >= 0",
    "wd": "number >= 0", "seed": "int >= 0", "init-start": "path", "init-end": "path", "fix-start": "bool",
    "fix-end": "bool", "ckpt": "path", "resume-epoch": "(unsupported)", "init-linear": "bool",
    "num-points": "int >= 2", "point-on-curve": "number in [0, 1]", "save-evaluation": "bool",
    "dataset-args": "table", "model-args": "table", "batch-size": "int >= 1", "optimizer": '"sgd" or "adam"',
    "momentum": "number >= 0", "schedule": "schedule name", "bn-mode": '"reset" or "interpolate"',
    "splits": "list of split names", "mc-points": "int >= 3", "plane": "bool", "grid-points": "int >= 2",
    "margin": "number >= 0",
}  # fmt: skip
PAIRS_EXPERIMENT = "curve_pairs"
CURVES_DIR = "curves"
_INT = ("num-bends", "epochs", "seed", "num-points", "batch-size", "mc-points", "grid-points")
_NUM = ("lr", "wd", "momentum", "point-on-curve", "margin")
_BOOL = ("fix-start", "fix-end", "init-linear", "save-evaluation", "plane")
_STR = ("dir", "dataset", "data-path", "model", "curve", "init-start", "init-end", "ckpt", "optimizer", "schedule",
        "bn-mode")
_DEFAULTS: dict[str, Any] = {
    "data-path": None, "dataset-args": {}, "model-args": {}, "num-bends": 1, "epochs": 10, "lr": 0.01, "wd": 0.0,
    "seed": 0, "init-start": None, "init-end": None, "fix-start": True, "fix-end": True, "init-linear": True,
    "num-points": 61, "point-on-curve": None, "save-evaluation": True, "batch-size": 128, "optimizer": "sgd",
    "momentum": 0.9, "schedule": None, "bn-mode": "reset", "splits": ["train", "test"], "mc-points": 5,
    "plane": False, "grid-points": 21, "margin": 0.2, "curve": None, "ckpt": None,
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- config


def _check_type(file: str, where: str, key: str, value: Any) -> Any:
    bad = False
    if key in _INT:
        bad = isinstance(value, bool) or not isinstance(value, int) or value < (0 if key != "batch-size" else 1)
        bad = bad or (key == "num-points" and value < 2) or (key == "mc-points" and value < 3)
        bad = bad or (key == "grid-points" and value < 2)
    elif key in _NUM:
        bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
        bad = bad or (key == "point-on-curve" and value > 1)
    elif key in _BOOL:
        bad = not isinstance(value, bool)
    elif key in _STR:
        bad = not isinstance(value, str) or not value
    elif key in ("dataset-args", "model-args"):
        bad = not isinstance(value, dict)
    elif key == "splits":
        bad = not isinstance(value, list) or not value or not all(v in ("train", "val", "test") for v in value)
    if bad:
        raise SpecError(file, f"[{where}] '{key}'", f"must be {CURVE_KEYS[key]}, got {value!r}")
    return value


def section_role(section: Mapping[str, Any]) -> str:
    """What a parsed section does.

    Args:
        section: output of :func:`parse_curve_section`.

    Returns:
        ``"base"`` (train a model), ``"curve"`` (train a curve) or ``"eval"`` (evaluate a trained curve).
    """
    if section["ckpt"] is not None:
        return "eval"
    return "base" if section["curve"] is None else "curve"


def parse_curve_section(name: str, raw: Mapping[str, Any], file: str | Path = "<memory>") -> dict[str, Any]:
    """Validate one table of a curve config and fill in defaults.

    Args:
        name: the table's name.
        raw: its keys (TF-style names such as ``num-bends``).
        file: file name for messages.

    Returns:
        dict with every key of :data:`CURVE_KEYS` (except ``resume-epoch``) plus ``"name"``; ``curve`` is
        normalised to ``"bezier"`` / ``"polychain"``.

    Raises:
        SpecError: unknown key, wrong type, missing ``dir``/``dataset``/``model``, unsupported ``resume-epoch``.
    """
    file = str(file)
    if not isinstance(raw, Mapping):
        raise SpecError(file, f"[{name}]", "must be a table")
    for key, value in raw.items():
        if key not in CURVE_KEYS:
            raise SpecError(file, f"[{name}] '{key}'", f"unknown key (allowed: {', '.join(CURVE_KEYS)})")
        if key == "resume-epoch":
            raise SpecError(file, f"[{name}] 'resume-epoch'", "resuming curve training is not supported; remove it")
        _check_type(file, name, key, value)
    for key in ("dir", "dataset", "model"):
        if key not in raw:
            raise SpecError(file, f"[{name}] '{key}'", "is required")
    section = {**_DEFAULTS, **{k: v for k, v in raw.items()}, "name": name}
    if section["curve"] is not None:
        if section["curve"].lower() not in ("bezier", "polychain"):
            raise SpecError(file, f"[{name}] 'curve'", f"must be {CURVE_KEYS['curve']}, got {section['curve']!r}")
        section["curve"] = section["curve"].lower()
    from zooscape.connect.curve_train import CURVE_OPTIMIZERS, CURVE_SCHEDULES

    if section["optimizer"] not in CURVE_OPTIMIZERS:
        raise SpecError(file, f"[{name}] 'optimizer'", f"must be one of {CURVE_OPTIMIZERS}")
    if section["schedule"] is not None and section["schedule"] not in CURVE_SCHEDULES:
        raise SpecError(file, f"[{name}] 'schedule'", f"must be one of {CURVE_SCHEDULES}")
    if section["bn-mode"] not in ("reset", "interpolate"):
        raise SpecError(file, f"[{name}] 'bn-mode'", f"must be {CURVE_KEYS['bn-mode']}")
    role = section_role(section)
    if role == "curve":
        for end in ("start", "end"):
            if section[f"fix-{end}"] and section[f"init-{end}"] is None:
                raise SpecError(file, f"[{name}] 'fix-{end}'",
                                f"a fixed {end} needs 'init-{end}' (a trained model); set fix-{end} = false to "
                                "train a randomly initialised endpoint")
    if role == "eval" and section["curve"] is None:
        section["curve"] = None  # taken from the checkpoint
    return section


def load_curve_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and validate every table of a curve config file.

    Args:
        path: TOML file.

    Returns:
        ``{table_name: section}`` in file order (see :func:`parse_curve_section`).

    Raises:
        FileNotFoundError: no such file.
        SpecError: invalid TOML or table.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"curve config {path} does not exist")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, "<toml>", f"invalid TOML: {exc}") from exc
    if not doc:
        raise SpecError(path, "<toml>", "no tables: add e.g. [curve] with dir, dataset, model, curve, ...")
    out = {}
    for name, raw in doc.items():
        if not isinstance(raw, dict):
            raise SpecError(path, f"'{name}'", "top-level keys must be tables like [curve-pretrained]")
        out[name] = parse_curve_section(name, raw, path)
    return out


# ---------------------------------------------------------------------------------------------------- builders


def _load_data(section: Mapping[str, Any]) -> Any:
    from zooscape.zoo.build import load_data

    dataset = {"name": section["dataset"], **section["dataset-args"]}
    if section["data-path"] is not None:
        dataset["data_root"] = section["data-path"]
    return load_data(dataset)


def _build_model(section: Mapping[str, Any], data: Any, seed: int) -> Any:
    from zooscape.zoo.build import build_model, data_model_args

    return build_model({"name": section["model"], **section["model-args"]}, seed=seed,
                       model_args=data_model_args(data))


def _model_file(path: str | Path, file: str, key: str, filename: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / filename
    if not p.is_file():
        raise FileNotFoundError(f"{file}: {key}: {p} does not exist (train that section first?)")
    return p


def _load_state(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(_json_ready(payload), indent=1).encode())


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    return obj


def _train_config(section: Mapping[str, Any]) -> Any:
    from zooscape.connect.curve_train import CurveTrainConfig

    return CurveTrainConfig(
        epochs=section["epochs"], batch_size=section["batch-size"], optimizer=section["optimizer"],
        lr=float(section["lr"]), momentum=float(section["momentum"]), weight_decay=float(section["wd"]),
        schedule=section["schedule"] or "garipov", seed=section["seed"],
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------- runs


def run_section(
    section: Mapping[str, Any],
    file: str = "<memory>",
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one parsed table: train a base model, train a curve, or evaluate a curve.

    Args:
        section: output of :func:`parse_curve_section`.
        file: config file name for messages.
        device: torch device.
        progress: optional ``fn(message)``.

    Returns:
        Summary dict with ``role``, ``dir`` and the written ``files`` (and, for evaluations, ``evaluation``).
    """
    say = progress or (lambda message: None)
    role = section_role(section)
    out_dir = Path(section["dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    data = _load_data(section)
    if role == "base":
        return _run_base(section, data, out_dir, device, say)
    if role == "curve":
        return _run_curve(section, data, out_dir, file, device, say)
    return _run_eval(section, data, out_dir, file, device, say)


def _run_base(section: Mapping[str, Any], data: Any, out_dir: Path, device: str, say: Callable) -> dict[str, Any]:
    from safetensors.torch import save

    from zooscape.train import Member, TrainConfig, train_population

    model = _build_model(section, data, section["seed"])
    cfg = TrainConfig(epochs=section["epochs"], batch_size=section["batch-size"], optimizer=section["optimizer"],
                      lr=float(section["lr"]), momentum=float(section["momentum"]),
                      weight_decay=float(section["wd"]), schedule=section["schedule"] or "constant")
    say(f"[{section['name']}] training a base {section['model']} on {section['dataset']} for {cfg.epochs} epochs")
    res = train_population([model], data, cfg, [Member(seed=section["seed"])], device=device)
    if res.status[0] != "done":
        raise RuntimeError(f"[{section['name']}] base model training {res.status[0]}: {res.reasons[0]}")
    meta = {"format": "zooscape-model", "section": json.dumps(dict(section), sort_keys=True)}
    state = {k: v.contiguous() for k, v in res.state_dicts[0].items()}
    path = out_dir / "model.safetensors"
    atomic_write_bytes(path, save(state, metadata=meta))
    hist = out_dir / "history.json"
    _write_json(hist, {"section": dict(section), "history": res.history[0]})
    last = res.history[0][-1]
    say(f"[{section['name']}] test acc {last.get('test_acc', math.nan):.4f} -> {path}")
    return {"role": "base", "dir": str(out_dir), "files": [str(path), str(hist)], "final": last}


def _endpoint(section: Mapping[str, Any], data: Any, which: str, file: str, seed: int) -> Any:
    model = _build_model(section, data, seed)
    ref = section[f"init-{which}"]
    if ref is not None:
        path = _model_file(ref, file, f"[{section['name']}] 'init-{which}'", "model.safetensors")
        try:
            model.load_state_dict(_load_state(path), strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{file}: [{section['name']}] 'init-{which}': {path} does not fit model "
                             f"{section['model']!r} with {section['model-args']}: {exc}") from None
    return model


def _run_curve(
    section: Mapping[str, Any], data: Any, out_dir: Path, file: str, device: str, say: Callable
) -> dict[str, Any]:
    from zooscape.connect.curve import Curve, save_curve
    from zooscape.connect.curve_train import train_curve

    start = _endpoint(section, data, "start", file, section["seed"])
    end = _endpoint(section, data, "end", file, section["seed"] + 1)
    curve = Curve(section["curve"], start, end, section["num-bends"], fix_start=section["fix-start"],
                  fix_end=section["fix-end"], init="linear" if section["init-linear"] else "random",
                  seed=section["seed"]).to(device)
    cfg = _train_config(section)
    say(f"[{section['name']}] training a {section['curve']} curve with {section['num-bends']} bend(s) for "
        f"{cfg.epochs} epochs")
    res = train_curve(curve, data, cfg, callback=lambda row: say(
        f"[{section['name']}] epoch {int(row['epoch'])}: lr {row['lr']:.4g} train loss {row['train_loss']:.4f}"))
    path = save_curve(curve.to("cpu"), out_dir / "curve.safetensors",
                      metadata={"section": dict(section), "train_config": cfg.to_dict()})
    hist = out_dir / "curve_history.json"
    _write_json(hist, {"section": dict(section), "train_config": cfg.to_dict(), "history": res.history})
    say(f"[{section['name']}] -> {path}")
    return {"role": "curve", "dir": str(out_dir), "files": [str(path), str(hist)], "history": res.history}


def _run_eval(
    section: Mapping[str, Any], data: Any, out_dir: Path, file: str, device: str, say: Callable
) -> dict[str, Any]:
    from safetensors.torch import save

    from zooscape.connect.curve import Curve, load_curve
    from zooscape.connect.curve_eval import evaluate_curve
    from zooscape.connect.curve_plot import plot_curve, plot_plane, save_png
    from zooscape.connect.plane import evaluate_plane

    name = section["name"]
    path = _model_file(section["ckpt"], file, f"[{name}] 'ckpt'", "curve.safetensors")
    template = _build_model(section, data, section["seed"])
    try:
        curve, _ = load_curve(path, template)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{file}: [{name}] 'ckpt': {path} does not fit model {section['model']!r} with "
                         f"{section['model-args']}: {exc}") from None
    for key, have in (("curve", curve.kind), ("num-bends", curve.num_bends)):
        if key in section.get("_explicit", ()) and section[key] != have:
            raise ValueError(f"{file}: [{name}] '{key}' = {section[key]!r} but the checkpoint holds {have!r}")
    curve.to(device)
    splits = tuple(section["splits"])
    say(f"[{name}] evaluating the {curve.kind} curve at {section['num-points']} points")
    ev = evaluate_curve(curve, data, section["num-points"], splits=splits, weight_decay=float(section["wd"]),
                        bn_mode=section["bn-mode"], mc_points=section["mc-points"])
    line_curve = Curve(curve.kind, curve.model_at(0.0), curve.model_at(1.0), 0)
    line = evaluate_curve(line_curve, data, section["num-points"], splits=splits, weight_decay=float(section["wd"]),
                          bn_mode=section["bn-mode"], mc_points=section["mc-points"])
    files = []
    summary: dict[str, Any] = {"role": "eval", "dir": str(out_dir), "evaluation": ev, "line": line}
    if section["save-evaluation"]:
        p = out_dir / "curve_eval.json"
        _write_json(p, {"section": dict(section), "curve": ev.to_dict(), "line": line.to_dict(),
                        "summary": ev.flat(), "line_summary": line.flat()})
        files.append(str(p))
    for metric in ("loss", "error") if ev.error else ("loss",):
        files.append(str(save_png(plot_curve(ev, metric, linear=line), out_dir / f"curve_{metric}.png")))
    if section["point-on-curve"] is not None:
        t = float(section["point-on-curve"])
        bn_data = data if section["bn-mode"] == "reset" else None
        model = curve.model_at(t, data=bn_data)
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        p = out_dir / "point.safetensors"
        atomic_write_bytes(p, save(state, metadata={"format": "zooscape-model", "t": str(t)}))
        files.append(str(p))
        summary["point"] = t
    if section["plane"]:
        say(f"[{name}] evaluating the plane on a {section['grid-points']}^2 grid")
        grid = evaluate_plane(curve, data, section["grid-points"], margin=float(section["margin"]), splits=splits,
                              weight_decay=float(section["wd"]))
        p = out_dir / "plane.json"
        _write_json(p, grid.to_dict())
        files.append(str(p))
        for split in splits:
            for metric in ("loss", "error") if grid.error else ("loss",):
                files.append(str(save_png(plot_plane(grid, metric, split), out_dir / f"plane_{split}_{metric}.png")))
    summary["files"] = files
    return summary


def run_config(
    path: str | Path,
    sections: Sequence[str] | None = None,
    roles: Sequence[str] = ("base", "curve", "eval"),
    device: str = "cpu",
    overrides: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run tables of a curve config in file order.

    Args:
        path: the TOML file.
        sections: table names to run (default: every table whose role is in ``roles``).
        roles: roles run when ``sections`` is None.
        device: torch device.
        overrides: values replacing the tables' keys (e.g. ``{"num-points": 11}``), validated like them.
        progress: optional ``fn(message)``.

    Returns:
        One summary per table run (see :func:`run_section`).

    Raises:
        KeyError: a named table does not exist.
        SpecError: invalid config.
    """
    config = load_curve_config(path)
    if sections:
        missing = [s for s in sections if s not in config]
        if missing:
            raise KeyError(f"{path} has no table(s) {missing}; tables: {list(config)}")
        chosen = [config[s] for s in sections]
    else:
        chosen = [s for s in config.values() if section_role(s) in roles]
        if not chosen:
            raise ValueError(f"{path} has no table to run for {list(roles)}; tables: {list(config)}")
    results = []
    doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    for section in chosen:
        if overrides:
            raw = {**doc[section["name"]], **{k: v for k, v in overrides.items() if v is not None}}
            section = parse_curve_section(section["name"], raw, path)
        section = {**section, "_explicit": tuple(doc[section["name"]])}
        results.append(run_section(section, str(path), device=device, progress=progress))
    return results


# ---------------------------------------------------------------------------------------------------- zoo pairs


def _cell_key(config: Mapping[str, Any]) -> str:
    training = {k: v for k, v in config["training"].items() if k not in ("seed", "data_seed")}
    return canonical_json({"dataset": config["dataset"], "model": config["model"], "training": training})


def _cells(zoo: Any) -> tuple[list[list[str]], dict[str, dict[str, Any]]]:
    """Grid cells of a zoo (sorted by cell key; lmc children and failed models left out) and the configs."""
    statuses = zoo.catalog.statuses()
    cells: dict[str, list[str]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for mid in zoo.model_ids:
        c = zoo.config(mid)
        if "lmc" in c.get("derived", {}) or statuses.get(mid) == "failed":
            continue
        configs[mid] = c
        cells.setdefault(_cell_key(c), []).append(mid)
    return [sorted(ids) for _, ids in sorted(cells.items())], configs


def pair_params(
    kind: str, num_bends: int, train_config: Any, n_points: int, mc_points: int, bn_mode: str,
    splits: Sequence[str],
) -> dict[str, Any]:
    """The ``params`` stored with every row of :func:`curve_pairs` (identifies a setting).

    Args:
        kind: curve kind.
        num_bends: inner bends.
        train_config: the ``CurveTrainConfig``.
        n_points: evaluated positions.
        mc_points: mc positions.
        bn_mode: BatchNorm mode of the evaluation.
        splits: evaluated splits.

    Returns:
        JSON-ready dict with ``experiment = "curve_pairs"``.
    """
    return {"experiment": PAIRS_EXPERIMENT, "kind": kind, "num_bends": int(num_bends), "n_points": int(n_points),
            "mc_points": int(mc_points), "bn_mode": bn_mode, "splits": list(splits), **train_config.to_dict()}


def default_pair_config() -> Any:
    """Curve training settings of :func:`curve_pairs` (the phase-transition zoo's: 10 epochs, batch 128, SGD lr 0.1,
    momentum 0.9), with wd 1e-4 and the Garipov schedule.

    Returns:
        ``CurveTrainConfig``.
    """
    from zooscape.connect.curve_train import CurveTrainConfig

    return CurveTrainConfig(epochs=10, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)


def pair_train_config(params: Mapping[str, Any]) -> Any:
    """The curve training settings stored in a pair's ``params`` (inverse of :func:`pair_params`'s last part).

    Args:
        params: output of :func:`pair_params`.

    Returns:
        ``CurveTrainConfig``.
    """
    from dataclasses import fields

    from zooscape.connect.curve_train import CurveTrainConfig

    values = {f.name: params[f.name] for f in fields(CurveTrainConfig) if f.name in params}
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    return CurveTrainConfig(**values)


@dataclass
class CurvePairTask:
    """One seed pair of a grid cell: train and evaluate a curve between two models at one epoch (picklable).

    Args:
        root: zoo directory.
        model_id: start of the curve (the smaller id).
        other_id: end of the curve.
        epoch: checkpointed epoch of both models.
        cell: index of the grid cell (as in :func:`curve_records`).
        params: every setting, from :func:`pair_params`.
        device: torch device.
    """

    root: str
    model_id: str
    other_id: str
    epoch: int
    cell: int
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"


def run_curve_pair_task(task: CurvePairTask) -> dict[str, Any]:
    """Load the pair at the epoch (read-only), train the curve, evaluate it; return its rows and files.

    The result depends only on the task (the curve training is seeded by ``params["seed"]``), not on the engine,
    the process or the other tasks.

    Args:
        task: the task.

    Returns:
        dict with ``record`` (``model_id``, ``other_id``, ``epoch``, ``cell`` and every ``curve_*`` value),
        ``rows`` (dicts for :meth:`Catalog.add_analyses`), ``curve`` (the curve's safetensors file as bytes) and
        ``evaluation`` (the JSON-ready full evaluation) for the driver to store.

    References:
        Garipov et al. (2018), "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs".
    """
    from zooscape.connect.curve import Curve, curve_bytes
    from zooscape.connect.curve_eval import evaluate_curve
    from zooscape.connect.curve_train import train_curve
    from zooscape.zoo.reader import open_zoo

    params = task.params
    cfg = pair_train_config(params)
    with open_zoo(task.root) as zoo:
        start, end = zoo.load_model(task.model_id, task.epoch), zoo.load_model(task.other_id, task.epoch)
        data = zoo.data(task.model_id)
    curve = Curve(params["kind"], start, end, params["num_bends"]).to(task.device)
    train_curve(curve, data, cfg)
    ev = evaluate_curve(curve, data, params["n_points"], splits=tuple(params["splits"]), bn_mode=params["bn_mode"],
                        mc_points=params["mc_points"], weight_decay=cfg.weight_decay)
    flat = {f"curve_{k}": v for k, v in ev.flat().items()}
    pair = {"model_id": task.model_id, "other_id": task.other_id, "epoch": task.epoch}
    return {
        "record": {**pair, "cell": task.cell, **flat},
        "rows": [{**pair, "metric": k, "value": v, "params": params} for k, v in flat.items()],
        "curve": curve_bytes(curve.to("cpu"), metadata={**pair, "params": params}),
        "evaluation": {**pair, "params": params, "evaluation": ev.to_dict()},
    }


@dataclass
class CurvePairPlan:
    """Tasks of a :func:`curve_pairs` run.

    Attributes:
        tasks: pairs still to compute, by cell, then pair.
        done: pairs skipped because their rows are already stored with the same settings.
        skipped: messages about models left out (no checkpoint at the epoch).
    """

    tasks: list[CurvePairTask]
    done: list[CurvePairTask]
    skipped: list[str]


def plan_curve_pairs(zoo: Any, params: Mapping[str, Any], epoch: int | None = None, force: bool = False,
                     device: str = "cpu") -> CurvePairPlan:
    """Decide which seed pairs to compute: every pair of each grid cell not yet stored with ``params``.

    Args:
        zoo: an open :class:`~zooscape.zoo.reader.Zoo`.
        params: settings from :func:`pair_params`.
        epoch: checkpointed epoch of the endpoints (default: each cell's ``training.epochs``).
        force: plan stored pairs again.
        device: torch device of the tasks.

    Returns:
        :class:`CurvePairPlan`.
    """
    marker = f"curve_mc_loss_{params['splits'][0]}"
    done_keys = set() if force else stored_keys(zoo.catalog, marker, params)
    cells, configs = _cells(zoo)
    plan = CurvePairPlan([], [], [])
    for index, ids in enumerate(cells):
        e = int(configs[ids[0]]["training"]["epochs"]) if epoch is None else int(epoch)
        usable = [m for m in ids if e in zoo.epochs(m, "weights")]
        if len(ids) > len(usable):
            plan.skipped.append(f"cell {index}: {len(ids) - len(usable)} model(s) have no checkpoint at epoch {e}, "
                                "skipped")
        for a, b in itertools.combinations(usable, 2):
            task = CurvePairTask(str(zoo.path), a, b, e, index, dict(params), device)
            (plan.done if (a, b, e) in done_keys else plan.tasks).append(task)
    return plan


def _store_pair_files(root: Path, result: Mapping[str, Any]) -> None:
    """Write a pair's curve and full evaluation under ``root/curves`` (driver side, before its rows)."""
    rec = result["record"]
    tag = hashlib.sha256(canonical_json(result["evaluation"]["params"]).encode()).hexdigest()[:10]
    stem = root / CURVES_DIR / f"{rec['model_id']}-{rec['other_id']}-e{rec['epoch']}-{tag}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(stem.with_suffix(".safetensors"), result["curve"])
    _write_json(stem.with_suffix(".json"), result["evaluation"])


def curve_pairs(
    zoo_dir: str | Path,
    epoch: int | None = None,
    *,
    kind: str = "bezier",
    num_bends: int = 1,
    train_config: Any = None,
    n_points: int = 5,
    mc_points: int = 5,
    splits: Sequence[str] = ("train", "test"),
    bn_mode: str = "reset",
    device: str = "cpu",
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    engine: str | Engine = "local",
    workers: int = 1,
    engine_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Train and evaluate a curve between every seed pair of each grid cell of a zoo; store mc in the catalog.

    Every pair is one :class:`CurvePairTask` run by :func:`run_curve_pair_task` on the engine (in-process by
    default, ``workers`` local processes, or Ray); the driver writes each pair's files and commits its rows as
    the pair finishes. A pair's values do not depend on the engine or the number of workers.

    Args:
        zoo_dir: a trained zoo directory.
        epoch: checkpointed epoch of the endpoints (default: each cell's ``training.epochs``).
        kind: ``"bezier"`` or ``"polychain"``.
        num_bends: inner bends (1 = the phase-transition zoo's "3 bends").
        train_config: :class:`~zooscape.connect.curve_train.CurveTrainConfig` (default: 10 epochs, batch 128,
            SGD lr 0.1 momentum 0.9, wd 1e-4, Garipov schedule).
        n_points: evaluated positions (5 in the phase-transition zoo; the mc positions are always included).
        mc_points: positions of the mc metric.
        splits: splits to evaluate.
        bn_mode: BatchNorm statistics along the curve (``"reset"``: re-estimated at every point).
        device: torch device.
        force: recompute pairs already stored with the same settings.
        progress: optional ``fn(message)``.
        engine: ``"local"``, ``"ray"`` or an :class:`~zooscape.zoo.engines.Engine`.
        workers: worker processes of the local engine (1 = in this process).
        engine_options: keyword arguments of the engine (Ray: ``address``, ``num_cpus``, ``num_gpus``,
            ``max_retries``).

    Returns:
        One dict per pair computed now, in cell and pair order: ``model_id``, ``other_id``, ``epoch``, ``cell``
        and every ``curve_<stat>_<metric>_<split>`` and ``curve_length``.

    Raises:
        FileNotFoundError: not a zoo directory.
        ValueError: unknown curve kind, no split, or bad engine settings.
        RuntimeError: another process is writing the zoo.

    References:
        Garipov et al. (2018); Schürholt et al. (2025), "A Model Zoo on Phase Transitions in Neural Networks".
    """
    from zooscape.connect.curve import check_kind
    from zooscape.zoo.reader import open_zoo

    store = zoo_store(zoo_dir)
    kind = check_kind(kind)
    cfg = train_config or default_pair_config()
    say = progress or (lambda message: None)
    splits = tuple(splits)
    if not splits:
        raise ValueError("splits must name at least one split")
    eng = get_engine(engine, workers, **dict(engine_options or {}))
    params = pair_params(kind, num_bends, cfg, n_points, mc_points, bn_mode, splits)
    with open_zoo(store.root) as zoo:
        plan = plan_curve_pairs(zoo, params, epoch=epoch, force=force, device=device)
    for message in plan.skipped:
        say(message)
    if plan.done:
        say(f"{len(plan.done)} pair(s) already stored with these settings, skipped")
    if plan.tasks:
        say(f"{len(plan.tasks)} pair(s) to compute in {len({t.cell for t in plan.tasks})} cell(s)")

    def report(i: int, result: dict[str, Any]) -> None:
        rec = result["record"]
        say(f"[{i}/{len(plan.tasks)}] cell {rec['cell']}: {rec['model_id']} - {rec['other_id']}: mc test error "
            f"{rec.get('curve_mc_error_test', math.nan):+.4f}")

    results = commit_task_results(store, eng, run_curve_pair_task, plan.tasks,
                                  before_commit=lambda result: _store_pair_files(store.root, result),
                                  on_result=report)
    order = {(t.model_id, t.other_id, t.epoch): i for i, t in enumerate(plan.tasks)}
    records = [r["record"] for r in results]
    return sorted(records, key=lambda r: order[(r["model_id"], r["other_id"], r["epoch"])])


def curve_records(zoo_dir: str | Path, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Read the stored curve summaries of a zoo back, one flat record per (pair, epoch, settings).

    Args:
        zoo_dir: a zoo directory.
        params: only rows stored with these settings (see :func:`pair_params`); default all.

    Returns:
        Dicts with ``model_id``, ``other_id``, ``epoch``, ``cell`` (index as in :func:`curve_pairs`), ``params``
        and every stored ``curve_*`` metric.

    Raises:
        FileNotFoundError: not a zoo directory.
    """
    from zooscape.zoo.reader import open_zoo

    store = zoo_store(zoo_dir)
    with open_zoo(store.root) as zoo:
        rows = zoo.catalog.query("SELECT model_id, other_id, epoch, metric, value, params FROM analyses ORDER BY id")
        cells, _ = _cells(zoo)
    cell_of = {m: i for i, ids in enumerate(cells) for m in ids}
    records: dict[tuple[str, str, int, str], dict[str, Any]] = {}
    for a, b, e, metric, value, p in rows:
        stored = json.loads(p)
        if stored.get("experiment") != PAIRS_EXPERIMENT or (params is not None and stored != dict(params)):
            continue
        rec = records.setdefault((a, b, e, p), {"model_id": a, "other_id": b, "epoch": e,
                                                "cell": cell_of.get(a, -1), "params": stored})
        rec[metric] = math.nan if value is None else float(value)
    return sorted(records.values(), key=lambda r: (r["cell"], r["model_id"], r["other_id"], r["epoch"]))
