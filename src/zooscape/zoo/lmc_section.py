"""The ``[lmc]`` section of a spec: linear mode connectivity settings, validated once for every command.

Two groups of keys share the section:

- **during training** (``zooscape zoo train``; see ``docs/connectivity.md``): ``every`` (fraction of training
  between two measurements, in (0, 1]; the section is inactive without it), ``pairs`` (``"seeds"``: every pair of
  members of one grid cell that train in the same population), ``align`` (``"none"``, ``"weight"``,
  ``"activation"``), ``renorm`` (``"none"``, ``"reset_bn"``, ``"repair"``, ``"rescale"``, ``"reshift"``),
  ``seed`` (weight matching), ``n_points`` and ``splits``;
- **spawn** (``zooscape lmc spawn``): ``k1s``, ``k2s``, ``replicates``, ``n_points``, ``bn_mode``, ``splits``,
  ``child_data_seeds``.

:func:`check_lmc_section` checks names and types (``zoo validate`` accepts every spec that either command
accepts); :func:`training_lmc` fills the defaults of the during-training keys. Errors are :class:`LmcKeyError`
(key and problem), which spec readers turn into their ``SpecError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["LMC_SPAWN_KEYS", "LMC_TRAINING_KEYS", "LmcKeyError", "check_lmc_section", "measure_epochs",
           "training_lmc"]

#: Keys of ``zooscape lmc spawn`` (the instability experiment) and what they take.
LMC_SPAWN_KEYS: dict[str, str] = {
    "k1s": "list of ints",
    "k2s": '"all", "end" or a list of ints',
    "replicates": "int >= 1",
    "n_points": "int >= 2",
    "bn_mode": '"interpolate" or "reset"',
    "splits": "list of split names",
    "child_data_seeds": "list of ints",
}
#: Keys of LMC measured during ``zooscape zoo train`` and what they take.
LMC_TRAINING_KEYS: dict[str, str] = {
    "every": "number in (0, 1]: fraction of training between measurements",
    "pairs": '"seeds"',
    "align": '"none", "weight" or "activation"',
    "renorm": '"none", "reset_bn", "repair", "rescale" or "reshift"',
    "seed": "int",
    "n_points": "int >= 2",
    "splits": "list of split names",
}
_CHOICES = {
    "bn_mode": ("interpolate", "reset"),
    "pairs": ("seeds",),
    "align": ("none", "weight", "activation"),
    "renorm": ("none", "reset_bn", "repair", "rescale", "reshift"),
}
_TRAINING_DEFAULTS: dict[str, Any] = {"pairs": "seeds", "align": "none", "renorm": "none", "seed": 0,
                                      "n_points": 11, "splits": ["train", "test"]}


class LmcKeyError(ValueError):
    """An invalid ``[lmc]`` key; ``key`` reads ``"[lmc] 'name'"``."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_list(key: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not value or not all(_is_int(v) for v in value):
        raise LmcKeyError(f"[lmc] '{key}'", f"must be a non-empty list of ints, got {value!r}")
    return [int(v) for v in value]


def check_lmc_section(raw: Any) -> dict[str, Any]:
    """Validate an ``[lmc]`` table (names and types; no defaults are added).

    Args:
        raw: the parsed TOML table.

    Returns:
        a cleaned copy.

    Raises:
        LmcKeyError: not a table, unknown key, or a value of the wrong type / out of range.
    """
    if not isinstance(raw, Mapping):
        raise LmcKeyError("[lmc]", "must be a table")
    allowed = {**LMC_SPAWN_KEYS, **LMC_TRAINING_KEYS}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"[lmc] '{key}'"
        if key not in allowed:
            raise LmcKeyError(where, f"unknown key (allowed: {', '.join(allowed)})")
        if key in ("k1s", "child_data_seeds"):
            value = _int_list(key, value)
        elif key == "k2s":
            if value not in ("all", "end"):
                value = _int_list(key, value)
        elif key in ("replicates", "n_points"):
            low = 1 if key == "replicates" else 2
            if not _is_int(value) or value < low:
                raise LmcKeyError(where, f"must be an int >= {low}, got {value!r}")
        elif key == "seed":
            if not _is_int(value) or value < 0:
                raise LmcKeyError(where, f"must be an int >= 0, got {value!r}")
        elif key == "every":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise LmcKeyError(where, f"must be a number in (0, 1] (a fraction of training), got {value!r}")
            value = float(value)
        elif key == "splits":
            if not isinstance(value, list) or not value or not all(v in ("train", "val", "test") for v in value):
                raise LmcKeyError(where, f"must be a non-empty list of train/val/test, got {value!r}")
            value = list(value)
        elif key in _CHOICES and value not in _CHOICES[key]:
            raise LmcKeyError(where, f"must be one of {', '.join(map(repr, _CHOICES[key]))}, got {value!r}")
        out[key] = value
    return out


def training_lmc(section: Mapping[str, Any]) -> dict[str, Any] | None:
    """The during-training LMC settings of a checked ``[lmc]`` section, defaults filled.

    Args:
        section: output of :func:`check_lmc_section`.

    Returns:
        ``{"every", "pairs", "align", "renorm", "seed", "n_points", "splits"}``, or None when ``every`` is
        absent (no measurement during training).
    """
    if "every" not in section:
        return None
    return {"every": float(section["every"]),
            **{k: section.get(k, v) for k, v in _TRAINING_DEFAULTS.items()}}


def measure_epochs(every: float, epochs: int) -> list[int]:
    """The epochs at which LMC is measured during training: the nearest epoch to every multiple of
    ``every * epochs`` (the trainer reports after whole epochs), 0 (initialisation) and the last epoch included.

    Args:
        every: fraction of training between measurements, in (0, 1].
        epochs: training epochs.

    Returns:
        sorted distinct epochs in ``[0, epochs]``.
    """
    k, out = 0, {0, int(epochs)}
    while k * every <= 1 + 1e-9:
        out.add(min(int(epochs), int(k * every * epochs + 0.5)))
        k += 1
    return sorted(out)
