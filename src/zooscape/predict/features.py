"""Features of vectorised weights for property prediction: raw weights (W) and per-parameter statistics (W-stats).

References:
    Unterthiner, Lampert, Batra, Bosch & Tolstikhin (2020), "Predicting Neural Network Accuracy from Weights"
    (weight statistics as features); Schürholt et al. (2022), "Model Zoos" (the W and W-stats baselines).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from zooscape.models.vectors import IndexMap

__all__ = ["FEATURE_KINDS", "PERCENTILES", "STAT_NAMES", "make_features", "quantiles", "weight_stats"]

#: Percentiles of W-stats.
PERCENTILES: tuple[float, ...] = (1.0, 25.0, 50.0, 75.0, 99.0)
#: The 7 statistics computed per parameter tensor.
STAT_NAMES: tuple[str, ...] = ("mean", "var") + tuple(f"p{int(p)}" for p in PERCENTILES)
#: Feature kinds of :func:`make_features`.
FEATURE_KINDS = ("w", "wstats")


def quantiles(x: Tensor, q: Sequence[float]) -> Tensor:
    """Row-wise quantiles with linear interpolation (NumPy's default method), for any row length.

    Args:
        x: ``[N, M]`` with ``M >= 1``.
        q: quantiles in [0, 1].

    Returns:
        ``[N, len(q)]``.

    Raises:
        ValueError: ``x`` is not 2-d with M >= 1, or a quantile is outside [0, 1].
    """
    if x.dim() != 2 or x.shape[1] < 1:
        raise ValueError(f"x must have shape [N, M] with M >= 1, got {tuple(x.shape)}")
    qs = torch.as_tensor(list(q), dtype=torch.float64)
    if bool(((qs < 0) | (qs > 1)).any()):
        raise ValueError(f"quantiles must be in [0, 1], got {list(q)}")
    s = torch.sort(x, dim=1).values
    pos = qs * (x.shape[1] - 1)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = (pos - lo).to(x.dtype).to(x.device)
    lo, hi = lo.to(x.device), hi.to(x.device)
    return s[:, lo] + (s[:, hi] - s[:, lo]) * frac


def weight_stats(weights: Tensor, imap: IndexMap) -> tuple[Tensor, list[str]]:
    """W-stats: per parameter tensor (each layer's weight and bias separately) the mean, variance and the
    1/25/50/75/99th percentiles.

    Args:
        weights: ``[N, D]`` vectorised weights laid out by ``imap``.
        imap: the layout.

    Returns:
        (features ``[N, 7 * len(imap)]``, names ``"<param>:<stat>"``). The variance is the population variance
        (0 for a single entry).

    References:
        Unterthiner et al. (2020); Schürholt et al. (2022), Model Zoos (14 statistics per layer).
    """
    if weights.dim() != 2 or weights.shape[1] != imap.size:
        raise ValueError(f"weights must have shape [N, {imap.size}], got {tuple(weights.shape)}")
    blocks, names = [], []
    for s in imap:
        w = weights[:, s.offset:s.stop]
        blocks += [w.mean(dim=1, keepdim=True), w.var(dim=1, correction=0, keepdim=True),
                   quantiles(w, [p / 100.0 for p in PERCENTILES])]
        names += [f"{s.name}:{stat}" for stat in STAT_NAMES]
    if not blocks:
        return weights.new_zeros((weights.shape[0], 0)), names
    return torch.cat(blocks, dim=1), names


def make_features(weights: Tensor, imap: IndexMap, kind: str) -> tuple[Tensor, list[str]]:
    """Features of one kind.

    Args:
        weights: ``[N, D]``.
        imap: the layout.
        kind: ``"w"`` (the raw weights) or ``"wstats"`` (:func:`weight_stats`).

    Returns:
        (``[N, F]``, F feature names).

    Raises:
        ValueError: unknown kind.
    """
    if kind == "w":
        names = [f"{s.name}[{j}]" for s in imap for j in range(s.numel)]
        return weights, names
    if kind == "wstats":
        return weight_stats(weights, imap)
    raise ValueError(f"feature kind must be one of {FEATURE_KINDS}, got {kind!r}")
