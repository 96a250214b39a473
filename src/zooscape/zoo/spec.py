"""Zoo specification files: read, validate and write the TOML spec of a zoo.

A spec has the sections ``[zoo]`` (name, description), ``[dataset]`` (name and the options of
:func:`zooscape.data.load_dataset`), ``[model]`` (name and :func:`zooscape.models.create_model` keyword
arguments), ``[training]`` (:class:`zooscape.train.TrainConfig` fields plus ``seed`` and ``data_seed``),
``[checkpoints]`` (``epochs`` = list of ints or ``"all"``; ``optimizer`` = bool), ``[grid]`` (dotted keys such
as ``"training.lr"`` mapped to lists of values; the zoo is their Cartesian product) and the optional
``[population]`` (``max_size``) and ``[lmc]`` (linear mode connectivity: measured during training, or the
spawn experiment's settings; :mod:`zooscape.zoo.lmc_section`). See ``docs/zoo-format.md``.

Every problem raises :class:`SpecError`, whose message names the file and the key.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from zooscape.zoo.lmc_section import LmcKeyError, check_lmc_section

__all__ = [
    "SpecError",
    "SpecSchema",
    "ZooSpec",
    "default_schema",
    "dump_spec",
    "load_spec",
    "parse_spec",
    "spec_matches",
]

SECTIONS = ("zoo", "dataset", "model", "training", "checkpoints", "grid", "population", "lmc")
GRID_SECTIONS = ("dataset", "model", "training")
DATASET_TYPES: dict[str, Any] = {
    "name": str,
    "seed": int,
    "train_fraction": float,
    "label_noise": float,
    "data_root": str,
}
TRAINING_EXTRA_TYPES: dict[str, Any] = {"seed": int, "data_seed": int}
DEFAULT_MAX_POPULATION = 64


class SpecError(ValueError):
    """A zoo spec is invalid; the message reads ``"<file>: <key>: <problem>"``.

    Args:
        file: path of the spec file (as given by the user).
        key: the offending section/key, e.g. ``"[grid] 'training.lr'"``.
        problem: what is wrong.
    """

    def __init__(self, file: str | Path, key: str, problem: str) -> None:
        self.file = str(file)
        self.key = key
        self.problem = problem
        super().__init__(f"{self.file}: {key}: {problem}")


@dataclass(frozen=True)
class SpecSchema:
    """What a spec may contain: known data sets, models and training fields.

    Args:
        datasets: names accepted in ``[dataset] name``.
        models: names accepted in ``[model] name``.
        training_types: TrainConfig field name -> type annotation (``typing`` objects or classes).
        training_defaults: TrainConfig field name -> default value.
        dataset_keys: data set name -> accepted option names (besides name/seed/train_fraction/label_noise/
            data_root); None: options are checked only when the data set is loaded.
        model_keys: model name -> accepted keyword names (besides name); None: checked when the model is built.
    """

    datasets: tuple[str, ...]
    models: tuple[str, ...]
    training_types: Mapping[str, Any]
    training_defaults: Mapping[str, Any] = field(default_factory=dict)
    dataset_keys: Callable[[str], Collection[str]] | None = None
    model_keys: Callable[[str], Collection[str]] | None = None


def _call_lister(fn: Callable[..., Any]) -> tuple[str, ...]:
    try:
        names = fn()
    except TypeError:
        names = fn("*")
    return tuple(sorted(str(n) for n in names))


def default_schema() -> SpecSchema:
    """Build the schema from the installed registries (``zooscape.data``, ``zooscape.models``, ``zooscape.train``).

    Returns:
        SpecSchema with the registered data sets and models and the fields of ``TrainConfig``.
    """
    from zooscape.data import list_datasets
    from zooscape.models import list_models
    from zooscape.train import TrainConfig

    try:
        hints = typing.get_type_hints(TrainConfig)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        hints = {}
    types_: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            defaults[f.name] = f.default_factory()  # type: ignore[misc]
        ann = hints.get(f.name)
        if ann is None:
            ann = type(defaults[f.name]) if f.name in defaults and defaults[f.name] is not None else Any
        types_[f.name] = ann
    return SpecSchema(
        datasets=_call_lister(list_datasets),
        models=_call_lister(lambda: list_models("*", aliases=True)),
        training_types=types_,
        training_defaults=defaults,
        dataset_keys=_dataset_keys(),
        model_keys=_model_keys(),
    )


def _dataset_keys() -> Callable[[str], Collection[str]] | None:
    try:
        from zooscape.data import dataset_options
    except ImportError:
        return None
    return lambda name: tuple(dataset_options(name))


def _model_keys() -> Callable[[str], Collection[str]] | None:
    try:
        from zooscape.models import get_model_entry
        from zooscape.models.registry import COMMON_ARGS
    except ImportError:
        return None
    return lambda name: (*COMMON_ARGS, "init", *get_model_entry(name).family_kwargs)


@dataclass(frozen=True)
class ZooSpec:
    """A validated zoo spec (treat the dict fields as read-only).

    Args:
        path: the file it was read from ("<memory>" for specs built in code).
        name: zoo name.
        description: free text.
        dataset: ``[dataset]`` table (contains ``name``).
        model: ``[model]`` table (contains ``name``).
        training: ``[training]`` table (TrainConfig fields, ``seed``, ``data_seed``).
        checkpoint_epochs: ``"all"`` or sorted tuple of epochs (0 and the last epoch are always added).
        save_optimizer: whether optimizer-state shards are written at checkpoint epochs.
        grid: dotted key -> tuple of values (non-empty).
        max_population: largest number of models trained together as one population.
    """

    path: str
    name: str
    description: str
    dataset: dict[str, Any]
    model: dict[str, Any]
    training: dict[str, Any]
    checkpoint_epochs: str | tuple[int, ...]
    save_optimizer: bool
    grid: dict[str, tuple[Any, ...]]
    max_population: int = DEFAULT_MAX_POPULATION
    lmc: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as a TOML document (nested dicts and lists).

        Returns:
            dict with the sections ``zoo``, ``dataset``, ``model``, ``training``, ``checkpoints``, ``grid``,
            ``population``.
        """
        ckpt = self.checkpoint_epochs if isinstance(self.checkpoint_epochs, str) else list(self.checkpoint_epochs)
        return {
            "zoo": {"name": self.name, "description": self.description},
            "dataset": dict(self.dataset),
            "model": dict(self.model),
            "training": dict(self.training),
            "checkpoints": {"epochs": ckpt, "optimizer": self.save_optimizer},
            "grid": {k: list(v) for k, v in self.grid.items()},
            "population": {"max_size": self.max_population},
            **({"lmc": dict(self.lmc)} if self.lmc else {}),
        }

    def fingerprint(self) -> str:
        """Canonical JSON of everything that determines the zoo's content (not the name/description/path).

        Returns:
            str; two specs describe the same zoo iff their fingerprints are equal.
        """
        doc = self.to_dict()
        doc.pop("zoo")
        doc["grid"] = {k: sorted(v, key=_sort_key) for k, v in doc["grid"].items()}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _sort_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


# ----------------------------------------------------------------------------------------------- type checking


def _type_name(ann: Any) -> str:
    if isinstance(ann, type):
        return ann.__name__
    return str(ann).replace("typing.", "")


def _coerce(value: Any, ann: Any) -> tuple[bool, Any]:
    """Check a TOML value against a type annotation; return (ok, normalised value)."""
    if ann is Any or ann is None:
        return _check_plain(value)
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Union or origin is types.UnionType:
        for a in args:
            ok, v = _coerce(value, a)
            if ok:
                return True, v
        return False, value
    if origin is typing.Literal:
        return (value in args and type(value) in {type(a) for a in args}), value
    if ann is type(None):
        return False, value
    if ann is bool:
        return isinstance(value, bool), value
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if ann is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False, value
        return True, float(value)
    if ann is str:
        return isinstance(value, str), value
    if origin in (tuple, list, Sequence, typing.Sequence) or ann in (tuple, list):
        if not isinstance(value, list | tuple):
            return False, value
        out = []
        for i, item in enumerate(value):
            if not args:
                elem = Any
            elif origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                if len(args) != len(value):
                    return False, value
                elem = args[i]
            else:
                elem = args[0]
            ok, v = _coerce(item, elem)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if origin in (dict, Mapping) or ann is dict:
        return isinstance(value, dict), value
    if isinstance(ann, type):
        return isinstance(value, ann), value
    return _check_plain(value)


def _check_plain(value: Any) -> tuple[bool, Any]:
    """Accept JSON-compatible TOML values (no dates/times, no NaN/inf)."""
    if isinstance(value, datetime.date | datetime.time):
        return False, value
    if isinstance(value, float) and not math.isfinite(value):
        return False, value
    if isinstance(value, list):
        return all(_check_plain(v)[0] for v in value), value
    if isinstance(value, dict):
        return all(_check_plain(v)[0] for v in value.values()), value
    return True, value


def _like(value: Any, reference: Any) -> tuple[bool, Any]:
    """Check a grid value for a free-form key against the type of the base value (int/float interchangeable)."""
    if isinstance(reference, bool):
        return _coerce(value, bool)
    if isinstance(reference, float):
        return _coerce(value, float)
    if isinstance(reference, int):
        if isinstance(value, float) and not isinstance(value, bool):
            return True, value
        return _coerce(value, int)
    if isinstance(reference, str):
        return _coerce(value, str)
    if isinstance(reference, list):
        return (isinstance(value, list) and _check_plain(value)[0]), value
    return _check_plain(value)


# ----------------------------------------------------------------------------------------------- parsing


class _Checker:
    """Validates one document; every error names ``file`` and the key."""

    def __init__(self, file: str, schema: SpecSchema) -> None:
        self.file = file
        self.schema = schema

    def fail(self, key: str, problem: str) -> typing.NoReturn:
        raise SpecError(self.file, key, problem)

    def table(self, doc: Mapping[str, Any], section: str, required: bool) -> dict[str, Any]:
        if section not in doc:
            if required:
                self.fail(f"[{section}]", "missing section")
            return {}
        value = doc[section]
        if not isinstance(value, dict):
            self.fail(f"[{section}]", f"expected a table, got {type(value).__name__}")
        return dict(value)

    def typed(self, section: str, key: str, value: Any, ann: Any) -> Any:
        ok, v = _coerce(value, ann)
        if not ok:
            self.fail(f"[{section}] '{key}'", f"expected {_type_name(ann)}, got {value!r}")
        return v

    def key_type(self, section: str, key: str, base: Mapping[str, Any]) -> Any | None:
        """Annotation of a known key, or None for free-form keys (dataset options, model kwargs)."""
        if section == "dataset":
            return DATASET_TYPES.get(key)
        if section == "training":
            if key in TRAINING_EXTRA_TYPES:
                return TRAINING_EXTRA_TYPES[key]
            return self.schema.training_types[key]
        if section == "model" and key == "name":
            return str
        return None

    def value(self, section: str, key: str, value: Any, base: Mapping[str, Any], where: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(where, f"must be a finite number, got {value!r}")
        ann = self.key_type(section, key, base)
        if ann is not None:
            ok, v = _coerce(value, ann)
            expected = _type_name(ann)
        elif key in base:
            ok, v = _like(value, base[key])
            expected = type(base[key]).__name__
        else:
            ok, v = _check_plain(value)
            expected = "a TOML value without dates, NaN or inf"
        if not ok:
            self.fail(where, f"expected {expected}, got {value!r}")
        return v

    def known_key(self, section: str, key: str, where: str) -> None:
        if section == "training" and key not in self.schema.training_types and key not in TRAINING_EXTRA_TYPES:
            allowed = sorted([*self.schema.training_types, *TRAINING_EXTRA_TYPES])
            self.fail(where, f"unknown key (TrainConfig fields and seed/data_seed: {', '.join(allowed)})")

    def name(self, section: str, value: Any, known: Sequence[str], where: str) -> None:
        if not isinstance(value, str):
            self.fail(where, f"expected str, got {value!r}")
        if value not in known:
            self.fail(where, f"unknown {section} {value!r}; known: {', '.join(known) or '(none registered)'}")


def _check_range(chk: _Checker, where: str, key: str, value: Any) -> None:
    """Cheap range checks on well-known keys (the full check happens when objects are built)."""
    if key == "train_fraction" and not 0.0 < value <= 1.0:
        chk.fail(where, f"must be in (0, 1], got {value!r}")
    if key == "label_noise" and not 0.0 <= value <= 1.0:
        chk.fail(where, f"must be in [0, 1], got {value!r}")
    if key in ("epochs", "batch_size") and isinstance(value, int) and value < 1:
        chk.fail(where, f"must be >= 1, got {value!r}")
    if key == "lr" and isinstance(value, float) and value <= 0:
        chk.fail(where, f"must be > 0, got {value!r}")
    if key in ("seed", "data_seed") and isinstance(value, int) and not isinstance(value, bool) and value < 0:
        chk.fail(where, f"must be >= 0, got {value!r}")


def _check_options(
    chk: _Checker,
    section: str,
    base: Mapping[str, Any],
    grid: Mapping[str, Sequence[Any]],
    keys_of: Callable[[str], Collection[str]] | None,
    always: Sequence[str],
) -> None:
    """Check the keys of [dataset]/[model] (base and grid) against the options of every named data set/model."""
    if keys_of is None:
        return
    names = list(grid.get(f"{section}.name", [base.get("name")]))
    used = [(k, f"[{section}] '{k}'") for k in base] + [
        (k.split(".", 1)[1], f"[grid] '{k}'") for k in grid if k.split(".", 1)[0] == section
    ]
    for name in names:
        allowed = set(keys_of(name)) | set(always)
        for key, where in used:
            if key not in allowed:
                what = "data set" if section == "dataset" else "model"
                chk.fail(where, f"unknown option for {what} {name!r} (valid: {', '.join(sorted(allowed))})")


def parse_spec(doc: Mapping[str, Any], file: str | Path = "<memory>", schema: SpecSchema | None = None) -> ZooSpec:
    """Validate a parsed TOML document and return the spec.

    Args:
        doc: the TOML document (as returned by ``tomllib.load``).
        file: file name used in error messages.
        schema: allowed names and fields; default :func:`default_schema`.

    Returns:
        ZooSpec.

    Raises:
        SpecError: unknown section/key/name, wrong type, empty or duplicated grid values, bad checkpoint epochs.
    """
    schema = schema if schema is not None else default_schema()
    file = str(file)
    chk = _Checker(file, schema)
    if not isinstance(doc, Mapping):
        chk.fail("<document>", "expected a TOML table")
    for section in doc:
        if section not in SECTIONS:
            chk.fail(f"[{section}]", f"unknown section (allowed: {', '.join(SECTIONS)})")

    zoo = chk.table(doc, "zoo", required=False)
    for k in zoo:
        if k not in ("name", "description"):
            chk.fail(f"[zoo] '{k}'", "unknown key (allowed: name, description)")
    name = chk.typed("zoo", "name", zoo.get("name", Path(file).stem), str)
    description = chk.typed("zoo", "description", zoo.get("description", ""), str)

    sections: dict[str, dict[str, Any]] = {}
    for section in GRID_SECTIONS:
        raw = chk.table(doc, section, required=section != "training")
        clean: dict[str, Any] = {}
        for k, v in raw.items():
            where = f"[{section}] '{k}'"
            chk.known_key(section, k, where)
            clean[k] = chk.value(section, k, v, {}, where)
            _check_range(chk, where, k, clean[k])
        sections[section] = clean

    grid_raw = chk.table(doc, "grid", required=False)
    grid: dict[str, tuple[Any, ...]] = {}
    for key, values in grid_raw.items():
        where = f"[grid] '{key}'"
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in GRID_SECTIONS or not parts[1]:
            chk.fail(where, "grid keys are '<section>.<key>' with section one of dataset, model, training")
        section, sub = parts
        if not isinstance(values, list):
            chk.fail(where, f"expected a list of values, got {values!r}")
        if len(values) == 0:
            chk.fail(where, "empty list")
        chk.known_key(section, sub, where)
        clean_values = []
        for i, v in enumerate(values):
            cv = chk.value(section, sub, v, sections[section], f"{where}[{i}]")
            _check_range(chk, f"{where}[{i}]", sub, cv)
            clean_values.append(cv)
        canon = [_sort_key(v) for v in clean_values]
        if len(set(canon)) != len(canon):
            dup = next(v for v, c in zip(clean_values, canon) if canon.count(c) > 1)
            chk.fail(where, f"duplicate value {dup!r}")
        grid[key] = tuple(clean_values)

    for section, known in (("dataset", schema.datasets), ("model", schema.models)):
        gkey = f"{section}.name"
        if gkey in grid:
            for i, v in enumerate(grid[gkey]):
                chk.name(section, v, known, f"[grid] '{gkey}'[{i}]")
        elif "name" not in sections[section]:
            chk.fail(f"[{section}] 'name'", "missing required key")
        else:
            chk.name(section, sections[section]["name"], known, f"[{section}] 'name'")

    _check_options(chk, "dataset", sections["dataset"], grid, schema.dataset_keys, tuple(DATASET_TYPES))
    _check_options(chk, "model", sections["model"], grid, schema.model_keys, ("name",))

    epochs_values = list(grid.get("training.epochs", ()))
    if not epochs_values:
        if "epochs" not in sections["training"]:
            chk.fail("[training] 'epochs'", "missing required key")
        epochs_values = [sections["training"]["epochs"]]
    max_epochs = max(epochs_values)

    ckpt = chk.table(doc, "checkpoints", required=False)
    for k in ckpt:
        if k not in ("epochs", "optimizer"):
            chk.fail(f"[checkpoints] '{k}'", "unknown key (allowed: epochs, optimizer)")
    ck_epochs: str | tuple[int, ...]
    raw_epochs = ckpt.get("epochs", "all")
    if isinstance(raw_epochs, str):
        if raw_epochs != "all":
            chk.fail("[checkpoints] 'epochs'", f"expected \"all\" or a list of ints, got {raw_epochs!r}")
        ck_epochs = "all"
    else:
        ok, val = _coerce(raw_epochs, list[int])
        if not ok:
            chk.fail("[checkpoints] 'epochs'", f"expected \"all\" or a list of ints, got {raw_epochs!r}")
        bad = [e for e in val if e < 0 or e > max_epochs]
        if bad:
            chk.fail("[checkpoints] 'epochs'", f"epochs {bad} outside [0, {max_epochs}] (training.epochs)")
        ck_epochs = tuple(sorted(set(val)))
    save_optimizer = chk.typed("checkpoints", "optimizer", ckpt.get("optimizer", True), bool)

    pop = chk.table(doc, "population", required=False)
    for k in pop:
        if k != "max_size":
            chk.fail(f"[population] '{k}'", "unknown key (allowed: max_size)")
    max_size = chk.typed("population", "max_size", pop.get("max_size", DEFAULT_MAX_POPULATION), int)
    if max_size < 1:
        chk.fail("[population] 'max_size'", f"must be >= 1, got {max_size}")

    try:
        lmc = check_lmc_section(doc.get("lmc", {}))
    except LmcKeyError as exc:
        chk.fail(exc.key, exc.problem)

    return ZooSpec(
        path=file,
        name=name,
        description=description,
        dataset=sections["dataset"],
        model=sections["model"],
        training=sections["training"],
        checkpoint_epochs=ck_epochs,
        save_optimizer=save_optimizer,
        grid=grid,
        max_population=max_size,
        lmc=lmc,
    )


def load_spec(path: str | Path, schema: SpecSchema | None = None) -> ZooSpec:
    """Read and validate a TOML spec file.

    Args:
        path: the ``.toml`` file.
        schema: allowed names and fields; default :func:`default_schema`.

    Returns:
        ZooSpec.

    Raises:
        SpecError: the file is missing, is not valid TOML, or fails validation (message names file and key).
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(path, "<file>", "no such file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(path, "<file>", f"unreadable ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(path, "<file>", f"not UTF-8 text (byte {exc.start}, line {line}); TOML files are UTF-8") \
            from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, "<toml>", f"invalid TOML: {exc}") from None
    return parse_spec(doc, path, schema)


def spec_matches(spec: ZooSpec, fingerprint: str) -> bool:
    """Whether ``spec`` describes the zoo of a catalog's stored fingerprint (also when the zoo was trained with
    another population chunk size than the spec's ``[population] max_size``, e.g. ``--chunk-size``).

    Args:
        spec: a parsed spec (e.g. a zoo's ``spec.toml``).
        fingerprint: :meth:`ZooSpec.fingerprint` stored in the catalog.

    Returns:
        bool.
    """
    if spec.fingerprint() == fingerprint:
        return True
    try:
        size = int(json.loads(fingerprint)["population"]["max_size"])
    except (ValueError, KeyError, TypeError):
        return False
    return dataclasses.replace(spec, max_population=size).fingerprint() == fingerprint


def dump_spec(spec: ZooSpec) -> str:
    """Serialise a spec to TOML text (``load_spec`` of it gives an equal spec).

    Args:
        spec: the spec.

    Returns:
        TOML text.
    """
    return tomli_w.dumps(spec.to_dict())
