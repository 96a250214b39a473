"""Checking the values of a zoo spec: :class:`SpecError` and the type coercion and range checks of
:func:`zooscape.zoo.spec.parse_spec` (each problem names the file and the key).
"""

from __future__ import annotations

import datetime
import math
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

DATASET_TYPES: dict[str, Any] = {
    "name": str,
    "seed": int,
    "train_fraction": float,
    "label_noise": float,
    "data_root": str,
}
TRAINING_EXTRA_TYPES: dict[str, Any] = {"seed": int, "data_seed": int}


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

    def __init__(self, file: str, schema: Any) -> None:  # a zooscape.zoo.spec.SpecSchema
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
