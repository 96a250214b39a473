"""Study specs of the phase-transition study: a zoo spec plus a ``[phase]`` section, validated with defaults.

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
    [phase.lmc]                          # n_points, align (none|weight|activation), renorm (reset_bn, ...)
    [phase.thresholds]                   # zooscape.phase.DEFAULT_THRESHOLDS
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from zooscape.studies.curves import pair_params
from zooscape.studies.lmc_pairs import pair_params as lmc_pair_params
from zooscape.studies.metrics import metric_params
from zooscape.zoo.catalog import Catalog
from zooscape.zoo.spec import SpecError, ZooSpec, load_spec, parse_spec
from zooscape.zoo.store import is_zoo

__all__ = ["LOAD_KEYS", "PARTS", "STUDY_METRICS", "TEMPERATURE_KEYS", "StudySpec", "check_average_window",
           "lmc_params", "load_study_spec", "parse_study_spec", "stored_settings", "study_epoch", "study_settings"]

#: Parts of the study after training (``[phase] parts``), in the order they run.
PARTS: tuple[str, ...] = ("hessian", "cka", "curves", "lmc", "averaging")
#: Grid keys recognised as the temperature axis (default: the first the grid varies).
TEMPERATURE_KEYS: tuple[str, ...] = ("training.batch_size", "training.lr", "training.weight_decay")
#: Grid keys recognised as the load axis.
LOAD_KEYS: tuple[str, ...] = ("model.width", "dataset.train_fraction", "dataset.label_noise")
#: The metrics drawn by ``zooscape phase plot`` by default (one PNG each), in this order.
STUDY_METRICS: tuple[str, ...] = (
    "train_loss", "train_error", "test_loss", "test_error",
    "hessian_log_top_eigenvalue", "hessian_log_top_eigenvalue_se", "hessian_log_trace", "hessian_log_trace_se",
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
_DEFAULTS: dict[str, Any] = {
    "temperature": None, "load": None, "epoch": None, "average_last": 5, "bn_samples": 1024, "seed": 0,
    "parts": list(PARTS), "hessian": {}, "cka": {},
    "curves": {"kind": "bezier", "num_bends": 1, "epochs": 10, "batch_size": 128, "optimizer": "sgd", "lr": 0.1,
               "momentum": 0.9, "weight_decay": 1e-4, "seed": 0, "n_points": 5, "mc_points": 5, "bn_mode": "reset"},
    "lmc": {"n_points": 11, "align": "none", "renorm": "reset_bn"},
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
        curve_train_config(s["curves"])
        lmc_params(s)
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
        return StudySpec(zoo=zoo, settings=stored_settings(path) or study_settings(None, zoo, str(path)),
                         path=str(path))
    if not path.is_file():
        raise FileNotFoundError(f"spec file {path} does not exist")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, "<toml>", f"invalid TOML: {exc}") from exc
    return parse_study_spec(doc, file=path)


def stored_settings(zoo_dir: str | Path) -> dict[str, Any] | None:
    with Catalog(Path(zoo_dir) / "catalog.sqlite", readonly=True) as catalog:
        text = catalog.meta().get(META_KEY)
    return None if text is None else json.loads(text)


def curve_train_config(curves: Mapping[str, Any]) -> Any:
    from zooscape.connect.curve_train import CurveTrainConfig

    keys = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "seed")
    cfg = CurveTrainConfig(**{k: curves[k] for k in keys})
    cfg.validate()
    return cfg


def curve_pair_params(settings: Mapping[str, Any]) -> dict[str, Any]:
    from zooscape.connect.curve import check_kind

    c = settings["curves"]
    return pair_params(check_kind(c["kind"]), c["num_bends"], curve_train_config(c), c["n_points"], c["mc_points"],
                       c["bn_mode"], ("train", "test"))


def study_epoch(settings: Mapping[str, Any], zoo_spec: ZooSpec, epoch: int | None) -> int:
    e = epoch if epoch is not None else settings["epoch"]
    e = int(zoo_spec.training["epochs"]) if e is None else int(e)
    if not 1 <= e <= int(zoo_spec.training["epochs"]):
        raise ValueError(f"epoch must lie in [1, training.epochs = {zoo_spec.training['epochs']}], got {e}")
    return e


def check_average_window(study: StudySpec, e: int) -> None:
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


def lmc_params(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The ``params`` of the study's ``lmc pairs`` rows (:func:`zooscape.studies.lmc_pairs.pair_params`).

    Args:
        settings: study settings.

    Returns:
        JSON-ready dict.
    """
    lmc = settings["lmc"]
    return lmc_pair_params(lmc["n_points"], ("train", "test"), lmc["align"], lmc["renorm"], settings["seed"])
