"""Shared image preprocessing: scaling to [0, 1], bilinear resizing, normalisation and flattening."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .splits import SPLIT_NAMES, DataSplits

__all__ = ["resize_images", "channel_stats", "normalize_images", "build_image_splits", "build_splits"]

NormalizeSpec = bool | tuple[float | Sequence[float], float | Sequence[float]] | None


def resize_images(x: Tensor, size: int) -> Tensor:
    """Resize a batch of images to ``size x size`` with bilinear interpolation.

    Args:
        x: float tensor ``[n, C, H, W]``.
        size: target height and width (positive int).

    Returns:
        float tensor ``[n, C, size, size]`` (``align_corners=False``, as ``torch.nn.functional.interpolate``).
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"resize must be a positive int, got {size!r}")
    if x.dim() != 4:
        raise ValueError(f"resize expects images of shape [n, C, H, W], got {tuple(x.shape)}")
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(int(size), int(size)), mode="bilinear", align_corners=False)


def channel_stats(x: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of a batch.

    Args:
        x: float tensor ``[n, C, ...]`` (or ``[n, D]``, treated as one channel).

    Returns:
        ``(mean, std)``, two lists of ``C`` floats (std computed in float64, population form).
    """
    if x.dim() == 2:
        x = x[:, None]
    xc = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    return xc.mean(1).tolist(), xc.std(1, unbiased=False).tolist()


def normalize_images(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalise ``x`` per channel: ``(x - mean[c]) / std[c]``.

    Args:
        x: float tensor ``[n, C, ...]``.
        mean: ``C`` means (or 1, broadcast).
        std: ``C`` positive standard deviations (or 1, broadcast).

    Returns:
        float32 tensor of the same shape.
    """
    c = x.shape[1]
    m = torch.as_tensor(list(mean), dtype=torch.float32)
    s = torch.as_tensor(list(std), dtype=torch.float32)
    if m.numel() not in (1, c) or s.numel() not in (1, c):
        raise ValueError(f"normalize mean/std need 1 or {c} values, got {m.numel()} and {s.numel()}")
    if bool((s <= 0).any()):
        raise ValueError(f"normalize std must be positive, got {s.tolist()}")
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - m.reshape(shape)) / s.reshape(shape)


def _as_list(v: Any, what: str) -> list[float]:
    if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
        return [float(v)]
    try:
        return [float(u) for u in v]
    except TypeError as exc:
        raise ValueError(f"normalize {what} must be a float or a sequence of floats, got {v!r}") from exc


def build_image_splits(
    name: str,
    parts: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    num_classes: int,
    scale: float,
    flat: bool = False,
    resize: int | None = None,
    normalize: NormalizeSpec = False,
    meta: dict[str, Any] | None = None,
) -> DataSplits:
    """Turn raw image arrays of the three splits into a classification ``DataSplits``.

    Pipeline: ``x / scale`` (to [0, 1]) -> optional bilinear ``resize`` -> optional normalisation -> optional
    flattening. ``normalize=True`` uses per-channel mean/std of the (full) training split; a pair
    ``(mean, std)`` uses the given values (floats or one per channel).

    Args:
        name: data set name.
        parts: ``{"train"|"val"|"test": (x [n, C, H, W] numeric, y [n] int)}``.
        num_classes: number of classes.
        scale: divisor that maps raw pixel values to [0, 1] (e.g. 255).
        flat: flatten each sample to ``[C * H * W]``.
        resize: optional target side length (e.g. 28).
        normalize: ``False``/``None``, ``True`` or ``(mean, std)``.
        meta: provenance to store (``normalize_mean``/``normalize_std`` are added).

    Returns:
        ``DataSplits`` with float32 x ``[n, C, H, W]`` (or ``[n, D]`` when flat) and int64 y ``[n]``.
    """
    meta = dict(meta or {})
    xs: dict[str, Tensor] = {}
    for split in SPLIT_NAMES:
        x = torch.from_numpy(np.ascontiguousarray(parts[split][0], dtype=np.float32) / np.float32(scale))
        if x.dim() != 4:
            raise ValueError(f"{name}: {split} images must be [n, C, H, W], got {tuple(x.shape)}")
        xs[split] = resize_images(x, resize) if resize is not None else x
    if normalize is True:
        mean, std = channel_stats(xs["train"])
        std = [s if s > 0 else 1.0 for s in std]
    elif normalize is False or normalize is None:
        mean = std = None
    elif isinstance(normalize, (tuple, list)) and len(normalize) == 2:
        mean, std = _as_list(normalize[0], "mean"), _as_list(normalize[1], "std")
    else:
        raise ValueError(f"normalize must be False, True or a (mean, std) pair, got {normalize!r}")
    if mean is not None:
        xs = {k: normalize_images(v, mean, std) for k, v in xs.items()}
        meta.update(normalize_mean=mean, normalize_std=std)
    if flat:
        xs = {k: v.reshape(v.shape[0], -1) for k, v in xs.items()}
    ys = {k: torch.from_numpy(np.asarray(parts[k][1], dtype=np.int64).copy()) for k in SPLIT_NAMES}
    return build_splits(name, "classification", num_classes, xs, ys, meta)


def build_splits(
    name: str,
    task: str,
    num_outputs: int,
    xs: Mapping[str, Tensor | np.ndarray],
    ys: Mapping[str, Tensor | np.ndarray],
    meta: dict[str, Any],
) -> DataSplits:
    """Assemble a ``DataSplits`` from per-split arrays, casting x to float32 and y to the task's dtype.

    Args:
        name: data set name.
        task: ``"classification"`` or ``"regression"``.
        num_outputs: classes, or 1 for regression.
        xs: ``{"train"|"val"|"test": x [n, *input_shape]}``.
        ys: ``{"train"|"val"|"test": y [n]}`` (classification) or ``[n]``/``[n, 1]`` (regression).
        meta: provenance dict.

    Returns:
        The validated ``DataSplits``.
    """
    tx = {k: _tensor(v, torch.float32) for k, v in xs.items()}
    if task == "classification":
        ty = {k: _tensor(v, torch.int64).reshape(-1) for k, v in ys.items()}
    else:
        ty = {k: _tensor(v, torch.float32).reshape(-1, num_outputs) for k, v in ys.items()}
    return DataSplits(
        name=name,
        task=task,
        num_outputs=int(num_outputs),
        input_shape=tuple(tx["train"].shape[1:]),
        train_x=tx["train"].contiguous(),
        train_y=ty["train"].contiguous(),
        val_x=tx["val"].contiguous(),
        val_y=ty["val"].contiguous(),
        test_x=tx["test"].contiguous(),
        test_y=ty["test"].contiguous(),
        meta=meta,
    )


def _tensor(v: Tensor | np.ndarray, dtype: torch.dtype) -> Tensor:
    """Convert to a tensor of ``dtype``; NumPy input is always copied (it may be a read-only cache)."""
    if isinstance(v, Tensor):
        return v.to(dtype)
    return torch.tensor(np.asarray(v), dtype=dtype)
