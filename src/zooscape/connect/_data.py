"""Private helpers: read splits from the data objects that connect functions accept.

Accepted forms: an object with a ``split(name) -> (x, y)`` method (``zooscape.data.DataSplits``), or a mapping
``{split_name: (x, y)}``. Task inference: a ``task`` attribute if present, otherwise floating ``y`` means
regression and integer ``y`` classification.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

TASKS = ("classification", "regression")


def get_split(data: Any, split: str) -> tuple[Tensor, Tensor]:
    """Return ``(x, y)`` of one split.

    Args:
        data: a ``DataSplits``-like object with ``split(name)`` or a mapping ``{name: (x, y)}``.
        split: split name, e.g. ``"train"``.

    Returns:
        ``(x, y)`` with ``x`` of shape ``[n, *input_shape]`` and ``y`` of shape ``[n]`` or ``[n, k]``.
    """
    if isinstance(data, Mapping):
        if split not in data:
            raise KeyError(f"data has no split {split!r}; available: {sorted(data)}")
        pair = data[split]
    elif callable(getattr(data, "split", None)) and not isinstance(data, (str, bytes)):
        try:
            pair = data.split(split)
        except (KeyError, ValueError, AttributeError) as exc:
            raise KeyError(f"data has no split {split!r}: {exc}") from exc
    else:
        raise TypeError(
            f"data must be a DataSplits-like object with .split(name) or a mapping {{split: (x, y)}}, "
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
