"""The one data adapter of the analyses: every function that evaluates models on data accepts the same forms.

``data`` may be

- a :class:`~zooscape.data.DataSplits` (or any object with ``split(name) -> (x, y)`` and ``train_x``),
- a mapping ``{split_name: (x, y)}``,
- an ``(x, y)`` pair of tensors (used for every split), or
- for functions that only need inputs: a tensor ``[N, ...]`` or an iterable of batches (a ``DataLoader``, a list)
  yielding tensors or ``(x, y, ...)`` tuples.

:func:`get_split` returns one split's ``(x, y)``; :func:`iter_batches` yields input batches; :func:`train_inputs`
returns the training inputs; :func:`infer_task` decides between classification and regression. Used by
:mod:`zooscape.connect`, :mod:`zooscape.align` and :mod:`zooscape.landscape` (docs/glossary.md: ``data``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["TASKS", "get_split", "infer_task", "iter_batches", "train_inputs"]


def _is_pair(data: Any) -> bool:
    return (isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)
            and data[0].ndim > 0 and data[1].ndim > 0 and len(data[0]) == len(data[1]))


def iter_batches(data: Any, batch_size: int = 256, device: torch.device | str | None = None) -> Iterator[torch.Tensor]:
    """Yield input batches from a tensor or from an iterable of batches.

    Args:
        data: a tensor ``[N, ...]`` (split into chunks of ``batch_size``), an ``(x, y)`` tuple of tensors
            (``x`` is used), a data object with ``train_x`` (e.g. :class:`zooscape.data.DataSplits`: its
            training inputs are used), or an iterable (e.g. a DataLoader or a list) yielding tensors or
            tuples/lists whose first element is the input tensor.
        batch_size: chunk size when ``data`` is a tensor.
        device: move every batch there (unchanged when None).

    Returns:
        iterator over input tensors ``[B, ...]``.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if hasattr(data, "train_x") and isinstance(data.train_x, torch.Tensor):
        data = data.train_x
    elif _is_pair(data):
        data = data[0]
    if isinstance(data, torch.Tensor):
        if data.ndim == 0 or len(data) == 0:
            raise ValueError(f"data must be a non-empty tensor [N, ...], got shape {tuple(data.shape)}")
        for i in range(0, len(data), int(batch_size)):
            yield data[i:i + int(batch_size)].to(device) if device is not None else data[i:i + int(batch_size)]
        return
    if not isinstance(data, Iterable):
        raise ValueError(f"data must be a tensor or an iterable of batches, got {type(data).__name__}")
    empty = True
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"data yielded a batch of type {type(x).__name__}; expected a tensor")
        empty = False
        yield x.to(device) if device is not None else x
    if empty:
        raise ValueError("data yielded no batches")


TASKS = ("classification", "regression")


def _concat_batches(loader: Iterable[Any]) -> tuple[Tensor, Tensor]:
    """All ``(x, y, ...)`` batches of a loader concatenated (one pass)."""
    xs, ys = [], []
    for i, batch in enumerate(loader):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"data must be a DataSplits-like object, a mapping {{split: (x, y)}}, an (x, y) pair "
                            f"or a loader of (x, y) batches; item {i} of the iterable is not an (x, y) pair but "
                            f"{type(batch).__name__}")
        xs.append(batch[0])
        ys.append(batch[1])
    if not xs:
        raise ValueError("data: the loader yielded no batches")
    return torch.cat(xs), torch.cat(ys)


def get_split(data: Any, split: str) -> tuple[Tensor, Tensor]:
    """Return ``(x, y)`` of one split.

    Args:
        data: a ``DataSplits``-like object with ``split(name)``, a mapping ``{name: (x, y)}``, an ``(x, y)``
            pair, or a loader yielding ``(x, y)`` batches (the last two are used for every split).
        split: split name, e.g. ``"train"``.

    Returns:
        ``(x, y)`` with ``x`` of shape ``[n, *input_shape]`` and ``y`` of shape ``[n]`` or ``[n, k]``.
    """
    if _is_pair(data):
        pair = tuple(data)
    elif isinstance(data, Mapping):
        if split not in data:
            raise KeyError(f"data has no split {split!r}; available: {sorted(data)}")
        pair = data[split]
    elif callable(getattr(data, "split", None)) and not isinstance(data, (str, bytes)):
        try:
            pair = data.split(split)
        except (KeyError, ValueError, AttributeError) as exc:
            raise KeyError(f"data has no split {split!r}: {exc}") from exc
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, Tensor)):
        pair = _concat_batches(data)
    else:
        raise TypeError(
            f"data must be a DataSplits-like object with .split(name), a mapping {{split: (x, y)}} or an (x, y) "
            f"pair of tensors, "
            f"got {type(data).__name__}"
        )
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"split {split!r} must be an (x, y) pair, got {type(pair).__name__}")
    x, y = pair
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"split {split!r} must hold tensors, got {type(x).__name__}, {type(y).__name__}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"split {split!r}: x has {x.shape[0]} samples but y has {y.shape[0]} (shapes "
            f"{tuple(x.shape)}, {tuple(y.shape)})"
        )
    if x.shape[0] == 0:
        raise ValueError(f"split {split!r} is empty")
    return x, y


def train_inputs(data: Any) -> Tensor:
    """Return training inputs from a tensor, an ``(x, y)`` pair or a data object.

    Args:
        data: a tensor ``[n, *input_shape]``, an ``(x, y)`` pair, or anything :func:`get_split` accepts.

    Returns:
        The inputs, shape ``[n, *input_shape]``.
    """
    if isinstance(data, Tensor):
        x = data
    elif isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        x = data[0]
    else:
        x = get_split(data, "train")[0]
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"training inputs must be a non-empty batch, got shape {tuple(x.shape)}")
    return x


def infer_task(data: Any, y: Tensor, task: str | None = None) -> str:
    """Decide between classification and regression.

    Args:
        data: the data object (its ``task`` attribute is used when present).
        y: targets of some split, shape ``[n]`` or ``[n, k]``.
        task: explicit task; wins when given.

    Returns:
        ``"classification"`` or ``"regression"``.
    """
    if task is None:
        task = getattr(data, "task", None)
    if task is None:
        task = "regression" if y.is_floating_point() else "classification"
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return task
