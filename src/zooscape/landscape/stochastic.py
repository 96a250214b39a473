"""Stochastic estimates of a Hessian's trace and spectral density, matrix-free.

- trace: :func:`hutchinson_trace` (Rademacher probes, with a standard error) and :func:`hutchpp_trace`
  (Meyer, Musco, Musco & Woodruff 2021), behind :func:`trace`;
- spectral density: :func:`spectral_density` (stochastic Lanczos quadrature; Ghorbani, Krishnan & Xiao 2019).

Like :mod:`zooscape.landscape.hessian` (eigenvalues), every routine takes a symmetric ``LinearOperator`` and only
multiplies it with blocks of vectors. Randomness comes from an int seed or a ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from zooscape._deprecate import renamed_kwargs
from zooscape.landscape._hvp import (
    LinearOperator,
    as_generator,
    rademacher,
)
from zooscape.landscape.hessian import lanczos

__all__ = ["SpectralDensity", "TraceEstimate", "hutchinson_trace", "hutchpp_trace", "spectral_density", "trace"]


# Trace


@dataclass(frozen=True)
class TraceEstimate:
    """A stochastic trace estimate with its uncertainty.

    Attributes:
        estimate: the trace estimate.
        std_error: its standard error (0 when exact, e.g. a diagonal matrix with Rademacher probes).
        num_matvecs: operator-vector products spent.
        samples: Tensor ``[n]`` of the per-probe quadratic forms of the stochastic part.
    """

    estimate: float
    std_error: float
    num_matvecs: int
    samples: Tensor


@renamed_kwargs(generator="seed")
def hutchinson_trace(op: LinearOperator, *, num_probes: int = 100, block_size: int = 10, tol: float | None = None,
                     min_probes: int = 20, seed: int | torch.Generator | None = None) -> TraceEstimate:
    """Hutchinson's trace estimator ``tr A ~ mean_i z_i^T A z_i`` with Rademacher probes, with a standard error.

    Probes are multiplied ``block_size`` at a time (one vmapped HVP call). With ``tol``, stops early once
    ``std_error <= tol * |estimate|`` (after at least ``min_probes``), which is a statistically meaningful rule,
    unlike the relative change of the running mean used by PyHessian.

    Args:
        op: symmetric operator of dimension P.
        num_probes: maximum number of probes.
        block_size: probes per block product.
        tol: optional relative standard-error target.
        min_probes: probes before the ``tol`` rule may stop (>= 2).
        seed: randomness (Generator or seed; default seed 0).

    Returns:
        :class:`TraceEstimate`.

    References:
        Hutchinson, 1990; Avron and Toledo, 2011.
    """
    check_hutchinson(num_probes, block_size, tol)
    gen = as_generator(seed)
    start_count = op.num_matvecs
    samples: list[Tensor] = []
    n = 0
    while n < num_probes:
        b = min(block_size, num_probes - n)
        z = rademacher((b, op.dim), gen, op.dtype, op.device)
        samples.append((z * op.matmat(z)).sum(dim=1).double().cpu())
        n += b
        if tol is not None and n >= max(min_probes, 2):
            s = torch.cat(samples)
            if float(s.std() / math.sqrt(n)) <= tol * abs(float(s.mean())):
                break
    s = torch.cat(samples)
    return TraceEstimate(float(s.mean()), float(s.std() / math.sqrt(len(s))), op.num_matvecs - start_count, s)


def check_hutchinson(num_probes: int, block_size: int, tol: float | None) -> None:
    """Validate Hutchinson's settings (:func:`hutchinson_trace`); raises ValueError naming the bad one."""
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2 (for a standard error), got {num_probes}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if tol is not None and tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")


@renamed_kwargs(generator="seed")
def hutchpp_trace(op: LinearOperator, *, num_matvecs: int = 99,
                  seed: int | torch.Generator | None = None) -> TraceEstimate:
    """Hutch++: exact trace on a sketched top subspace plus Hutchinson on the rest.

    With a budget of m products, ``k = m // 3`` sketch vectors ``S`` give ``Q = orth(A S)``; then
    ``tr A ~ tr(Q^T A Q) + mean_i g_i^T (I - QQ^T) A (I - QQ^T) g_i`` over k Rademacher ``g_i``. The error falls
    as 1/m instead of 1/sqrt(m) when the spectrum decays, as Hessian spectra do. The standard error is that of
    the Hutchinson part (the first term is exact given Q).

    Args:
        op: symmetric operator of dimension P.
        num_matvecs: total products m (>= 6).
        seed: randomness (Generator or seed; default seed 0).

    Returns:
        :class:`TraceEstimate`.

    References:
        Meyer, Musco, Musco and Woodruff, 2021 (Hutch++).
    """
    if num_matvecs < 6:
        raise ValueError(f"num_matvecs must be >= 6 (3 blocks of >= 2), got {num_matvecs}")
    gen = as_generator(seed)
    k = num_matvecs // 3
    start_count = op.num_matvecs
    s = rademacher((k, op.dim), gen, op.dtype, op.device)
    q, _ = torch.linalg.qr(op.matmat(s).T.double())  # [P, k]
    q = q.to(op.dtype)
    top = float((q.T * op.matmat(q.T)).sum())
    g = rademacher((k, op.dim), gen, op.dtype, op.device)
    g = g - (g @ q) @ q.T
    samples = (g * op.matmat(g)).sum(dim=1).double().cpu()
    est = top + float(samples.mean())
    return TraceEstimate(est, float(samples.std() / math.sqrt(k)), op.num_matvecs - start_count, samples)


_TRACE_METHODS = ("hutchinson", "hutch++")


@renamed_kwargs(generator="seed")
def trace(op: LinearOperator, *, method: str = "hutchinson", num_matvecs: int = 100, block_size: int = 10,
          tol: float | None = None, seed: int | torch.Generator | None = None) -> TraceEstimate:
    """Stochastic trace of a symmetric operator (the Hessian's total curvature).

    Args:
        op: symmetric operator of dimension P.
        method: ``"hutchinson"`` (default) or ``"hutch++"``.
        num_matvecs: product budget (probes for Hutchinson).
        block_size: Hutchinson probes per block product.
        tol: Hutchinson relative standard-error target (early stop).
        seed: randomness (Generator or seed; default seed 0).

    Returns:
        :class:`TraceEstimate`.

    References:
        Hutchinson, 1990; Meyer et al., 2021.
    """
    if method == "hutchinson":
        return hutchinson_trace(op, num_probes=num_matvecs, block_size=block_size, tol=tol, seed=seed)
    if method == "hutch++":
        return hutchpp_trace(op, num_matvecs=num_matvecs, seed=seed)
    raise ValueError(f"method must be one of {_TRACE_METHODS}, got {method!r}")


# ----------------------------------------------------------------------------------------------------------
# Spectral density


@dataclass(frozen=True)
class SpectralDensity:
    """Spectral density from stochastic Lanczos quadrature: one Gauss quadrature rule per probe.

    Attributes:
        nodes: Tensor ``[r, m]``: Ritz values per probe (float64; padded entries have weight 0).
        weights: Tensor ``[r, m]``: quadrature weights (each row sums to 1).
        dim: the operator dimension P.
    """

    nodes: Tensor
    weights: Tensor
    dim: int

    def evaluate(self, grid: Tensor, sigma: float | None = None) -> Tensor:
        """Gaussian-smoothed density on a grid (integrates to 1).

        Args:
            grid: Tensor ``[g]`` of eigenvalue positions.
            sigma: kernel width (default: 1% of the spread of the nodes, at least 1e-6).

        Returns:
            Tensor ``[g]`` (float64).
        """
        grid = grid.double().reshape(-1)
        mask = self.weights > 0
        if sigma is None:
            spread = float(self.nodes[mask].max() - self.nodes[mask].min())
            sigma = max(0.01 * spread, 1e-6)
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        z = (grid[:, None, None] - self.nodes[None]) / sigma
        kern = torch.exp(-0.5 * z ** 2) / (sigma * math.sqrt(2 * math.pi))
        return (kern * self.weights[None]).sum(dim=(1, 2)) / self.nodes.shape[0]

    def trace(self) -> float:
        """Trace estimate ``P * mean_r sum_j w_rj theta_rj`` implied by the quadrature."""
        return float(self.dim * (self.nodes * self.weights).sum(dim=1).mean())

    def eigenvalue_range(self) -> tuple[float, float]:
        """Smallest and largest Ritz values (estimates of the extreme eigenvalues)."""
        mask = self.weights > 0
        return float(self.nodes[mask].min()), float(self.nodes[mask].max())


@renamed_kwargs(generator="seed")
def spectral_density(op: LinearOperator, *, num_steps: int = 50, num_probes: int = 1,
                     seed: int | torch.Generator | None = None) -> SpectralDensity:
    """Spectral density by stochastic Lanczos quadrature (runs over all probes in parallel).

    For a unit probe v, Lanczos with m steps gives a Gauss rule ``v^T f(A) v ~ sum_j w_j f(theta_j)`` with
    ``w_j = s_1j^2``; averaging over probes estimates ``tr f(A) / P``. With m = P (and a probe with a component
    along every eigenvector), the nodes are exactly the eigenvalues.

    Args:
        op: symmetric operator of dimension P.
        num_steps: Lanczos steps per probe (clipped to P).
        num_probes: independent Rademacher probes.
        seed: randomness (Generator or seed; default seed 0).

    Returns:
        :class:`SpectralDensity`.

    References:
        Lin, Saad and Yang, 2016; Ghorbani, Krishnan and Xiao, 2019.
    """
    run = lanczos(op, num_steps, num_runs=num_probes, seed=seed, keep_basis=False)
    m = run.alphas.shape[1]
    nodes = torch.zeros(num_probes, m, dtype=torch.float64)
    weights = torch.zeros(num_probes, m, dtype=torch.float64)
    for i in range(num_probes):
        theta, s = run.ritz(i)
        k = theta.shape[0]
        nodes[i, :k] = theta.cpu()
        weights[i, :k] = (s[0] ** 2).cpu()
    return SpectralDensity(nodes, weights, op.dim)
