"""Data set registry and ``load_dataset``: name -> loader, option checks, train subsets, label noise."""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from .partition import check_label_noise, check_train_fraction, flip_labels, subset_train
from .splits import DataSplits

__all__ = ["register_dataset", "list_datasets", "load_dataset", "dataset_options"]

Loader = Callable[..., DataSplits]
F = TypeVar("F", bound=Loader)

_RESERVED = ("seed", "data_root")


@dataclass(frozen=True)
class _Entry:
    name: str
    fn: Loader
    options: dict[str, Any]  # option name -> default
    aliases: tuple[str, ...]


_REGISTRY: dict[str, _Entry] = {}
_ALIASES: dict[str, str] = {}


def _canonical(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_dataset(name: str, *, aliases: tuple[str, ...] | list[str] = ()) -> Callable[[F], F]:
    """Register a data set loader under ``name`` (timm-style decorator).

    The loader is called as ``fn(seed=..., data_root=..., **options)`` and returns the *full* splits;
    ``load_dataset`` then applies ``train_fraction`` and ``label_noise``. Its options are its keyword-only
    parameters with defaults (``seed`` and ``data_root`` are passed only if the loader declares them);
    ``load_dataset`` rejects any other option.

    Args:
        name: data set name (case-insensitive, ``-`` and ``_`` equivalent).
        aliases: extra names resolving to the same loader.

    Returns:
        A decorator that registers and returns the loader unchanged.
    """
    key = _canonical(name)
    keys = [key, *(_canonical(a) for a in aliases)]

    def decorator(fn: F) -> F:
        for k in keys:
            if k in _REGISTRY or k in _ALIASES:
                raise ValueError(f"data set name {k!r} is already registered")
        options: dict[str, Any] = {}
        for p in inspect.signature(fn).parameters.values():
            if p.name in _RESERVED:
                continue
            if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty:
                raise ValueError(
                    f"loader {fn.__name__}: option {p.name!r} must be keyword-only with a default"
                )
            options[p.name] = p.default
        _REGISTRY[key] = _Entry(key, fn, options, tuple(keys[1:]))
        for alias in keys[1:]:
            _ALIASES[alias] = key
        return fn

    return decorator


def list_datasets() -> list[str]:
    """Return the sorted canonical names of all registered data sets (aliases excluded).

    Returns:
        List of names, e.g. ``["blobs", "cifar10", ..., "regression"]``.
    """
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if not isinstance(name, str):
        raise ValueError(f"data set name must be a str, got {name!r}")
    key = _ALIASES.get(_canonical(name), _canonical(name))
    if key not in _REGISTRY:
        aliases = ", ".join(f"{a} -> {k}" for a, k in sorted(_ALIASES.items()))
        raise ValueError(
            f"unknown data set {name!r}; valid data sets: {list_datasets()} (aliases: {aliases})"
        )
    return _REGISTRY[key]


def dataset_options(name: str) -> dict[str, Any]:
    """Return the options a data set accepts and their defaults.

    Args:
        name: data set name or alias.

    Returns:
        ``{option: default}``.
    """
    return dict(_entry(name).options)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(u) for u in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return v


def load_dataset(
    name: str,
    *,
    seed: int = 42,
    train_fraction: float = 1.0,
    label_noise: float = 0.0,
    data_root: str | os.PathLike | None = None,
    **options: Any,
) -> DataSplits:
    """Load a registered data set into memory as seeded train/val/test splits.

    The val/test split depends only on ``seed`` (and the data set options), never on ``train_fraction`` or
    ``label_noise``; no global RNG state is used or changed.

    References:
        Zhang, Bengio, Hardt, Recht, Vinyals (2017) for random label noise.

    Args:
        name: data set name or alias, see ``list_datasets()``.
        seed: non-negative split seed.
        train_fraction: in (0, 1]; keep a seeded, class-stratified subset of ``round(f * n_train)`` training
            samples (nested across fractions for a fixed seed). val/test are unchanged.
        label_noise: in [0, 1); replace exactly ``round(label_noise * n_train)`` training labels (after
            subsetting) by a different, uniformly drawn class. Classification only: a regression data set
            with ``label_noise > 0`` raises ``ValueError`` (use its ``noise`` option instead).
        data_root: folder with local files for the file-backed data sets (``mnist``, ``fashion_mnist``,
            ``cifar10``, ``cifar100``); ``None`` -> ``$ZOOSCAPE_DATA_ROOT`` or ``./data``.
        **options: data set specific options, see ``dataset_options(name)``.

    Returns:
        ``DataSplits`` with float32 x ``[n, *input_shape]`` and int64 ``[n]`` / float32 ``[n, 1]`` y; ``meta``
        records ``name, seed, train_fraction, label_noise, n_noisy, n_train_full, options, source, ...``.
    """
    entry = _entry(name)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    train_fraction = check_train_fraction(train_fraction)
    label_noise = check_label_noise(label_noise)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for data set {entry.name!r}; valid options: {sorted(entry.options)}"
        )
    resolved = {**entry.options, **options}
    params = inspect.signature(entry.fn).parameters
    call: dict[str, Any] = dict(options)
    if "seed" in params:
        call["seed"] = int(seed)
    if "data_root" in params:
        call["data_root"] = None if data_root is None else Path(data_root)
    ds = entry.fn(**call)
    if ds.task == "regression" and label_noise > 0:
        raise ValueError(
            f"label_noise={label_noise} is only defined for classification; {entry.name!r} is a regression "
            "data set (set its 'noise' option to add noise to y)"
        )

    n_full = ds.n_train
    train_x, train_y = ds.train_x, ds.train_y
    if train_fraction < 1.0:
        strat = train_y.numpy() if ds.task == "classification" else None
        keep = torch.from_numpy(subset_train(strat, n_full, train_fraction, int(seed)))
        train_x, train_y = train_x[keep].contiguous(), train_y[keep].contiguous()
    train_y_clean = train_y
    n_noisy = 0
    if label_noise > 0:
        noisy, idx = flip_labels(train_y.numpy(), ds.num_outputs, label_noise, int(seed))
        train_y = torch.from_numpy(noisy)
        n_noisy = int(len(idx))

    meta = {
        **ds.meta,
        "name": entry.name,
        "seed": int(seed),
        "train_fraction": train_fraction,
        "label_noise": label_noise,
        "n_noisy": n_noisy,
        "n_train_full": n_full,
        "n_train": int(train_x.shape[0]),
        "n_val": ds.n_val,
        "n_test": ds.n_test,
        "options": resolved,
    }
    if "data_root" in params:
        meta["data_root"] = None if data_root is None else os.fspath(data_root)
    return dataclasses.replace(
        ds,
        name=entry.name,
        train_x=train_x,
        train_y=train_y,
        train_y_clean=train_y_clean,
        meta=_jsonable(meta),
    )
