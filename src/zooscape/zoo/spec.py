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
import json
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from zooscape.zoo.lmc_section import LmcKeyError, check_lmc_section
from zooscape.zoo.spec_check import (
    DATASET_TYPES,
    SpecError,
    _check_options,
    _check_range,
    _Checker,
    _coerce,
)

__all__ = [
    "SpecError",
    "SpecSchema",
    "ZooSpec",
    "default_schema",
    "dump_spec",
    "load_spec",
    "load_stored_spec",
    "parse_spec",
    "spec_matches",
]

SECTIONS = ("zoo", "dataset", "model", "training", "checkpoints", "grid", "population", "lmc")
GRID_SECTIONS = ("dataset", "model", "training")
DEFAULT_MAX_POPULATION = 64


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


class _AnyName(tuple):
    """Every name is known (:func:`load_stored_spec`'s first reading)."""

    def __contains__(self, item: object) -> bool:
        return True


class _AnyField(dict):
    """Every ``[training]`` key is a field of any type (:func:`load_stored_spec`'s first reading)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> Any:
        return Any


def load_stored_spec(path: str | Path, fingerprint: str | None) -> ZooSpec | None:
    """Read a zoo's ``spec.toml`` quickly: without the data, model and training registries (and torch).

    The file is parsed with names and ``[training]`` fields taken as written; the result is returned only if its
    fingerprint is ``fingerprint``, the one stored in the zoo's catalog when the zoo was created from a spec that
    was validated in full (:func:`load_spec`). Equal fingerprints mean equal contents and types, so the spec is
    the one :func:`load_spec` returns. Anything else (no fingerprint, a file that does not parse, a spec that
    differs, e.g. a ``[training]`` value whose type :func:`load_spec` would coerce) returns None: the caller then
    validates the file in full, which raises the precise error.

    Args:
        path: the zoo's ``spec.toml``.
        fingerprint: :meth:`ZooSpec.fingerprint` stored in the catalog, or None.

    Returns:
        ZooSpec, or None when the full validation must decide.
    """
    if fingerprint is None:
        return None
    schema = SpecSchema(datasets=_AnyName(), models=_AnyName(), training_types=_AnyField())
    try:
        spec = load_spec(path, schema)
    except SpecError:
        return None
    return spec if spec_matches(spec, fingerprint) else None


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
