"""Summaries along a curve: positions, segment lengths, min/max/mean/integral and the mc metric.

Pure functions of values along a curve (and of the curve's weights for the lengths), used by
:func:`zooscape.connect.curve_eval.evaluate_curve`, which re-exports them. The mc metric: with ``v`` the metric at
the ``mc_points`` evenly spaced positions and ``m = (v_0 + v_1) / 2`` the endpoint mean, ``t* = argmax_t |v(t) -
m|`` and ``mc = m - v(t*)`` (negative: a barrier).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from zooscape.connect.curve import Curve

__all__ = ["CURVE_STATS", "curve_stats", "curve_ts", "mc_index", "mode_connectivity", "segment_lengths"]

CURVE_STATS: tuple[str, ...] = ("min", "max", "mean", "int")


def curve_ts(n_points: int = 61, mc_points: int = 5) -> Tensor:
    """Evenly spaced curve positions, with the ``mc_points`` evenly spaced mc positions added when missing.

    Args:
        n_points: points including both ends (>= 2).
        mc_points: points of the mc metric (>= 3; 5 in the phase-transition zoo).

    Returns:
        Sorted, strictly increasing float64 tensor ``[T]`` with ``T >= n_points``; for ``n_points = 61`` and
        ``mc_points = 5`` it is ``linspace(0, 1, 61)``.
    """
    for name, value, low in (("n_points", n_points, 2), ("mc_points", mc_points, 3)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    grid = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64)
    extra = torch.linspace(0.0, 1.0, mc_points, dtype=torch.float64)
    missing = [v for v in extra.tolist() if not torch.isclose(grid, torch.tensor(v, dtype=torch.float64),
                                                               atol=1e-12, rtol=0).any()]
    if missing:
        grid = torch.sort(torch.cat([grid, torch.tensor(missing, dtype=torch.float64)])).values
    return grid


def _mc_positions(ts: Tensor, mc_points: int) -> Tensor:
    want = torch.linspace(0.0, 1.0, mc_points, dtype=torch.float64)
    idx = (ts.to(torch.float64)[None, :] - want[:, None]).abs().argmin(1)
    if not torch.allclose(ts.to(torch.float64)[idx], want, atol=1e-9, rtol=0):
        raise ValueError(f"ts must contain the {mc_points} evenly spaced mc positions {want.tolist()}")
    return idx


def mc_index(values: Tensor) -> int:
    """Index ``argmax_i |v_i - (v_0 + v_last) / 2|`` (the first one on ties).

    Args:
        values: metric at the mc positions, shape ``[P]`` with ``P >= 2``.

    Returns:
        The index ``t*`` as an int.
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.dim() != 1 or v.shape[0] < 2:
        raise ValueError(f"values must be 1-D with at least 2 entries, got shape {tuple(v.shape)}")
    mean = 0.5 * (v[0] + v[-1])
    return int((v - mean).abs().argmax())


def mode_connectivity(values: Tensor, ts: Tensor | None = None, mc_points: int = 5) -> float:
    """The phase-transition zoo's mc metric ``(v_0 + v_1) / 2 - v(t*)``; negative means a barrier.

    Args:
        values: the metric (loss or error) along a curve, shape ``[T]``.
        ts: positions of ``values``, shape ``[T]``; then only the ``mc_points`` evenly spaced positions are used
            (they must be among ``ts``). None: ``values`` are already the mc positions and all are used.
        mc_points: number of mc positions (5 in the reference).

    Returns:
        mc as a float (NaN if any used value is NaN).

    References:
        Schürholt, Meynent, Zhou, Lu, Yang, Borth (2025), "A Model Zoo on Phase Transitions in Neural Networks";
        Yang, Hodgkinson, Theisen, Zou, Gonzalez, Ramchandran, Mahoney (2021), "Taxonomizing local versus global
        structure in neural network loss landscapes".
    """
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if ts is not None:
        ts = torch.as_tensor(ts, dtype=torch.float64).reshape(-1)
        if ts.shape != v.shape:
            raise ValueError(f"ts shape {tuple(ts.shape)} does not match values shape {tuple(v.shape)}")
        v = v[_mc_positions(ts, mc_points)]
    if torch.isnan(v).any():
        return math.nan
    i = mc_index(v)
    return float(0.5 * (v[0] + v[-1]) - v[i])


def curve_stats(values: Tensor, dl: Tensor) -> dict[str, float]:
    """Min, max, mean and length-weighted integral of a metric along a curve.

    Args:
        values: metric at the points, shape ``[T]``.
        dl: segment lengths, shape ``[T]`` with ``dl[0] = 0`` (``dl[i]`` joins points ``i - 1`` and ``i``).

    Returns:
        ``{"min", "max", "mean", "int"}``; ``int = sum (v_{i-1} + v_i) / 2 * dl_i / sum dl_i`` (for a curve of
        length 0 the trapezoid average over the points).

    References:
        Garipov et al. (2018), "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs" (``eval_curve.py``).
    """
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    d = torch.as_tensor(dl, dtype=torch.float64).reshape(-1)
    if v.shape != d.shape or v.shape[0] < 2:
        raise ValueError(f"values {tuple(v.shape)} and dl {tuple(d.shape)} must have the same length >= 2")
    mid = 0.5 * (v[:-1] + v[1:])
    total = d[1:].sum()
    integral = (mid * d[1:]).sum() / total if total > 0 else mid.mean()
    return {"min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()), "int": float(integral)}


@torch.no_grad()
def segment_lengths(curve: Curve, ts: Tensor) -> Tensor:
    """Euclidean lengths of the chords between consecutive points, over all parameters.

    Args:
        curve: the curve.
        ts: positions, shape ``[T]``.

    Returns:
        Float64 ``[T]`` with ``dl[0] = 0`` and ``dl[i] = ||w(t_i) - w(t_{i-1})||``.
    """
    w = curve.stacked_weights(torch.as_tensor(ts, dtype=torch.float64))
    sq = None
    for v in w.values():
        diff = v[1:].to(torch.float64) - v[:-1].to(torch.float64)
        part = diff.reshape(diff.shape[0], -1).pow(2).sum(1)
        sq = part if sq is None else sq + part
    assert sq is not None
    return torch.cat([torch.zeros(1, dtype=torch.float64), sq.sqrt().cpu()])


@torch.no_grad()
def _sq_norms(curve: Curve, ts: Tensor) -> Tensor:
    w = curve.stacked_weights(ts)
    return sum(v.to(torch.float64).reshape(v.shape[0], -1).pow(2).sum(1) for v in w.values()).cpu()
