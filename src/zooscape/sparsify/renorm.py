"""Re-normalisation after pruning, and the linear-mode-connectivity barrier between pruned models.

Pruning shifts and shrinks the statistics of hidden channels, as interpolation does; the Rethink Re-Basin study
repairs them with the same tools: reset BatchNorm statistics, REPAIR (every channel's mean and std set to the
unpruned source model's) or RESCALE (std only). :func:`renormalize` calls :mod:`zooscape.align`'s code with the
source model as the single endpoint, then re-applies the pruning masks.

References:
    Jordan et al. (2023), "REPAIR: REnormalizing Permuted Activations for Interpolation Repair";
    Qu & Horvath (2024), "Rethink Model Re-Basin and the Linear Mode Connectivity".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from zooscape import align
from zooscape.connect import linear_path
from zooscape.data.adapt import train_inputs

from .prune import apply_masks, masks, strip_masks

__all__ = ["RENORM_METHODS", "pruned_barrier", "renormalize", "renorm_inputs"]

RENORM_METHODS = ("reset_bn", "repair", "rescale")


def renorm_inputs(data: Any, n_samples: int | None = None, seed: int = 0) -> Tensor:
    """The training inputs used for re-normalisation (any form :func:`zooscape.data.adapt.train_inputs` takes):
    ``n_samples`` of them drawn without replacement with ``seed`` (all when None or larger)."""
    x = train_inputs(data)
    if n_samples is not None:
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if n_samples < x.shape[0]:
            idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:n_samples]
            x = x[idx]
    return x


def renormalize(pruned: nn.Module, source: nn.Module | None, data: Any, method: str = "reset_bn", *,
                n_samples: int | None = None, batch_size: int = 256, seed: int = 0) -> nn.Module:
    """Re-normalise a pruned network.

    Args:
        pruned: the pruned model (from :func:`~zooscape.sparsify.prune`; not modified).
        source: the unpruned model it came from (REPAIR/RESCALE target statistics; unused by ``reset_bn``).
        data: training data (a DataSplits, an ``(x, y)`` pair, inputs ``[n, ...]`` or a loader).
        method: ``"reset_bn"`` (re-estimate BatchNorm running statistics on ``data``), ``"repair"`` (every
            correction point's channel mean and std set to the source's) or ``"rescale"`` (std only).
        n_samples: number of training inputs used (all when None; the Rethink scripts' ``--num-samples``).
        batch_size: forward batch size.
        seed: which ``n_samples`` inputs.

    Returns:
        a new model; its masks (if any) are kept and re-applied, so pruned weights stay exactly zero.

    References:
        Jordan et al. (2023); Qu & Horvath (2024).
    """
    if method not in RENORM_METHODS:
        raise ValueError(f"method must be one of {RENORM_METHODS}, got {method!r}")
    if method != "reset_bn" and source is None:
        raise ValueError(f"method {method!r} needs the unpruned source model")
    x = renorm_inputs(data, n_samples, seed)
    endpoints = [source] if source is not None and method != "reset_bn" else None
    out = align.renormalize(pruned, x, method, endpoints=endpoints, batch_size=batch_size)
    return apply_masks(out) if masks(out) else out


def pruned_barrier(model_a: nn.Module, model_b: nn.Module, data: Any, *, n_points: int = 11,
                   splits: Sequence[str] = ("test",), bn_mode: str = "interpolate",
                   batch_size: int = 1024) -> dict[str, float]:
    """Loss/error barriers on the straight line between two (pruned) models, via :func:`zooscape.connect.linear_path`.

    The masks are dropped before interpolating (the pruned weights are zero), so interior points carry the union
    of both supports. Returns ``LinearPath.flat_barriers()`` (``barrier_<metric>_<split>_<definition>``) plus
    ``error_a_<split>`` / ``error_b_<split>`` at the endpoints.
    """
    path = linear_path(strip_masks(model_a), strip_masks(model_b), data, n_points, splits=tuple(splits),
                       bn_mode=bn_mode, batch_size=batch_size)
    out = dict(path.flat_barriers())
    for s in splits:
        if s in path.error:
            out[f"error_a_{s}"] = float(path.error[s][0])
            out[f"error_b_{s}"] = float(path.error[s][-1])
    return out
