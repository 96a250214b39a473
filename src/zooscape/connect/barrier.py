"""Barrier definitions: three ways to measure how much a path rises above its endpoints.

The literature uses three different definitions, usually without saying which one:

- ``"linear"`` (default): ``max_a [x(a) - ((1 - a) x(0) + a x(1))]``, the largest height of the curve above
  the straight chord between its endpoints (Entezari et al. 2022, eq. 1; used by the Shapira LMC study).
- ``"mean"``: ``max_a x(a) - (x(0) + x(1)) / 2``, the largest value relative to the mean of the endpoints
  (Frankle et al. 2020, "error barrier height").
- ``"midpoint"``: ``x(0.5) - (x(0) + x(1)) / 2``, only the midpoint (Entezari et al. 2022, released code).

All functions are pure and act on 1-D tensors ``values`` ``[n]`` measured at ``alphas`` ``[n]`` with
``alphas[0] == 0`` and ``alphas[-1] == 1``. See ``docs/connectivity.md`` for when the definitions differ.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "BARRIER_DEFINITIONS",
    "barrier",
    "barrier_linear",
    "barrier_mean",
    "barrier_midpoint",
    "barriers",
]

BARRIER_DEFINITIONS: tuple[str, ...] = ("linear", "mean", "midpoint")
_ATOL = 1e-6


def _check_path(values: Tensor, alphas: Tensor) -> tuple[Tensor, Tensor]:
    """Validate a sampled path and return it as float64 tensors.

    Args:
        values: metric along the path, shape ``[n]``.
        alphas: interpolation coefficients, shape ``[n]``, increasing from 0 to 1.

    Returns:
        ``(values, alphas)`` as float64 CPU tensors of shape ``[n]``.
    """
    values = torch.as_tensor(values).detach().to("cpu", torch.float64)
    alphas = torch.as_tensor(alphas).detach().to("cpu", torch.float64)
    if values.dim() != 1 or alphas.dim() != 1:
        raise ValueError(
            f"values and alphas must be 1-D, got values shape {tuple(values.shape)} "
            f"and alphas shape {tuple(alphas.shape)}"
        )
    if values.shape != alphas.shape:
        raise ValueError(
            f"values shape {tuple(values.shape)} does not match alphas shape {tuple(alphas.shape)}"
        )
    if values.numel() < 2:
        raise ValueError(f"a path needs at least 2 points, got {values.numel()}")
    if abs(alphas[0].item()) > _ATOL or abs(alphas[-1].item() - 1.0) > _ATOL:
        raise ValueError(
            f"alphas must start at 0 and end at 1, got alphas[0]={alphas[0].item()} "
            f"and alphas[-1]={alphas[-1].item()}"
        )
    if bool((alphas[1:] <= alphas[:-1]).any()):
        raise ValueError("alphas must be strictly increasing")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("values contain NaN or inf; a barrier is undefined")
    return values, alphas


def barrier_linear(values: Tensor, alphas: Tensor) -> float:
    """Largest height of the path above the chord between its endpoints (the default definition).

    ``max_a [x(a) - ((1 - a) x(0) + a x(1))]``; always >= 0 because the endpoints contribute 0.

    Args:
        values: metric (loss or error) along the path, shape ``[n]``.
        alphas: interpolation coefficients, shape ``[n]``, from 0 to 1.

    Returns:
        The barrier as a Python float.

    References:
        Entezari, Sedghi, Saukh, Neyshabur (2022), "The Role of Permutation Invariance in Linear Mode
        Connectivity of Neural Networks", eq. 1.
    """
    values, alphas = _check_path(values, alphas)
    chord = (1.0 - alphas) * values[0] + alphas * values[-1]
    return float((values - chord).max())


def barrier_mean(values: Tensor, alphas: Tensor) -> float:
    """Largest value along the path minus the mean of the two endpoints.

    ``max_a x(a) - (x(0) + x(1)) / 2``; always >= ``|x(1) - x(0)| / 2``.

    Args:
        values: metric (loss or error) along the path, shape ``[n]``.
        alphas: interpolation coefficients, shape ``[n]``, from 0 to 1.

    Returns:
        The barrier as a Python float.

    References:
        Frankle, Dziugaite, Roy, Carbin (2020), "Linear Mode Connectivity and the Lottery Ticket Hypothesis".
    """
    values, _ = _check_path(values, alphas)
    return float(values.max() - 0.5 * (values[0] + values[-1]))


def barrier_midpoint(values: Tensor, alphas: Tensor) -> float:
    """Value at ``alpha = 0.5`` minus the mean of the two endpoints (may be negative).

    ``x(0.5) - (x(0) + x(1)) / 2``; never larger than :func:`barrier_linear`.

    Args:
        values: metric (loss or error) along the path, shape ``[n]``.
        alphas: interpolation coefficients, shape ``[n]``, from 0 to 1; must contain 0.5.

    Returns:
        The barrier as a Python float.

    References:
        Entezari, Sedghi, Saukh, Neyshabur (2022), released code (midpoint accuracy on an 11-point grid).
    """
    values, alphas = _check_path(values, alphas)
    hit = torch.nonzero((alphas - 0.5).abs() <= _ATOL).flatten()
    if hit.numel() == 0:
        raise ValueError(f"alphas must contain 0.5 for the midpoint barrier, got {alphas.tolist()}")
    return float(values[hit[0]] - 0.5 * (values[0] + values[-1]))


_FUNCTIONS = {"linear": barrier_linear, "mean": barrier_mean, "midpoint": barrier_midpoint}


def barrier(values: Tensor, alphas: Tensor, definition: str = "linear") -> float:
    """Barrier of a sampled path under one of the three definitions.

    Args:
        values: metric along the path, shape ``[n]``.
        alphas: interpolation coefficients, shape ``[n]``, from 0 to 1.
        definition: ``"linear"`` (default), ``"mean"`` or ``"midpoint"``.

    Returns:
        The barrier as a Python float.

    References:
        Frankle et al. (2020); Entezari et al. (2022).
    """
    if definition not in _FUNCTIONS:
        raise ValueError(f"definition must be one of {BARRIER_DEFINITIONS}, got {definition!r}")
    return _FUNCTIONS[definition](values, alphas)


def barriers(values: Tensor, alphas: Tensor) -> dict[str, float]:
    """All three barrier definitions of one sampled path.

    Args:
        values: metric along the path, shape ``[n]``.
        alphas: interpolation coefficients, shape ``[n]``, from 0 to 1 (containing 0.5 for ``"midpoint"``).

    Returns:
        ``{"linear": float, "mean": float, "midpoint": float}``; ``"midpoint"`` is NaN when 0.5 is not
        sampled.

    References:
        Frankle et al. (2020); Entezari et al. (2022).
    """
    out = {"linear": barrier_linear(values, alphas), "mean": barrier_mean(values, alphas)}
    try:
        out["midpoint"] = barrier_midpoint(values, alphas)
    except ValueError:
        out["midpoint"] = float("nan")
    return out
