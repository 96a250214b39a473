"""Curve mode-connectivity runs configured by TOML files (``zooscape curve train`` / ``curve eval``).

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

For ``mc`` over every seed pair of a zoo see :mod:`zooscape.studies.curves`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomllib

from zooscape._io import atomic_write_bytes, json_ready
from zooscape.zoo.spec import SpecError

__all__ = [
    "CURVE_KEYS",
    "TF_KEYS",
    "load_curve_config",
    "parse_curve_section",
    "run_config",
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
    atomic_write_bytes(path, json.dumps(json_ready(payload), indent=1).encode())


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
    device: str = "auto",
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
    from zooscape.train.trainer import resolve_device

    device = str(resolve_device(device))
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
    device: str = "auto",
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
