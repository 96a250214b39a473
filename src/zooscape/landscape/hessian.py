"""Hessian spectrum of a model's loss: top eigenvalues, trace and spectral density, matrix-free.

Every routine takes a symmetric :class:`LinearOperator` (usually a :class:`HessianOperator`, built by
:func:`hessian_operator`) and only multiplies it with blocks of vectors, so the same code serves the Hessian of
one batch, the exact full-data Hessian (``batch_size`` chunks weighted by their sample counts) and plain
matrices (:class:`DenseOperator`, used by the closed-form tests).

- top eigenvalues: :func:`lanczos_eigenvalues` (default) or :func:`power_iteration` with deflation;
- trace: :func:`hutchinson_trace` (Rademacher probes, with a standard error) and :func:`hutchpp_trace`;
- spectral density: :func:`spectral_density` (stochastic Lanczos quadrature);
- :func:`dense_matrix` materialises small operators (the oracle for tests).

Randomness comes from a ``torch.Generator`` (or an int seed); the global RNG is never used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zooscape.landscape._hvp import (
    DenseOperator,
    HessianOperator,
    LinearOperator,
    LossFn,
    as_generator,
    gaussian,
    rademacher,
)

__all__ = [
    "DenseOperator",
    "EigenResult",
    "HessianOperator",
    "LanczosResult",
    "LinearOperator",
    "SpectralDensity",
    "TraceEstimate",
    "dense_matrix",
    "hessian_operator",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos",
    "lanczos_eigenvalues",
    "power_iteration",
    "spectral_density",
    "top_eigenvalues",
    "trace",
]


def hessian_operator(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, *, batch_size: int | None = None,
                     param_names: Sequence[str] | None = None, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None, mode: str = "rev-rev",
                     chunk_size: int | None = None, cache_graph: bool | None = None) -> HessianOperator:
    """Build the matrix-free Hessian of ``loss_fn(model(x), y)`` with respect to the model's parameters.

    ``batch_size=None`` treats ``(x, y)`` as one batch. With a ``batch_size``, HVPs are accumulated over chunks
    weighted by ``n_b / N``: the exact Hessian of the mean loss over all samples, at bounded memory.

    Args:
        model: the network; evaluated in eval mode on copies of its tensors and never modified.
        loss_fn: ``loss_fn(output, target) -> scalar`` mean loss.
        x: inputs ``[N, ...]``.
        y: targets ``[N, ...]``.
        batch_size: chunk size (``None``: one batch).
        param_names: parameters to differentiate (default: every parameter with ``requires_grad``).
        device: compute device (default: the model's).
        dtype: compute dtype (default: the model's); ``torch.float64`` for reference values.
        mode: ``"rev-rev"`` (vjp of grad; fastest on CPU) or ``"fwd-rev"`` (jvp of grad).
        chunk_size: most probe vectors per vmap call (``None``: all at once).
        cache_graph: keep the linearised gradient between products (default: when there is one chunk); see
            :class:`HessianOperator`.

    Returns:
        A :class:`HessianOperator` of dimension P (the number of differentiated parameters).

    References:
        Pearlmutter, 1994; Yao et al., 2020 (PyHessian).
    """
    return HessianOperator(model, loss_fn, x, y, batch_size=batch_size, param_names=param_names, device=device,
                           dtype=dtype, mode=mode, chunk_size=chunk_size, cache_graph=cache_graph)


def dense_matrix(op: LinearOperator, *, chunk_size: int = 256) -> Tensor:
    """Materialise an operator as a dense symmetric matrix (P products with unit vectors).

    Args:
        op: the operator (dimension P).
        chunk_size: unit vectors per block.

    Returns:
        Tensor ``[P, P]``, symmetrised as ``(A + A^T) / 2``.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    eye = torch.eye(op.dim, dtype=op.dtype, device=op.device)
    rows = [op.matmat(eye[i:i + chunk_size]) for i in range(0, op.dim, chunk_size)]
    a = torch.cat(rows)
    return (a + a.T) / 2


# ----------------------------------------------------------------------------------------------------------
# Lanczos


@dataclass(frozen=True)
class LanczosResult:
    """Tridiagonal matrices from (batched) Lanczos runs.

    Attributes:
        alphas: Tensor ``[r, m]``: diagonals, one row per run (zero-padded past ``lengths``).
        betas: Tensor ``[r, m - 1]``: off-diagonals (zero-padded).
        lengths: Tensor ``[r]`` (int64): steps actually taken by each run (< m after an early breakdown,
            i.e. when the Krylov space is invariant and the run's Ritz values are exact).
        basis: Tensor ``[r, m, P]`` of Lanczos vectors, or ``None`` when not kept.
        residual: Tensor ``[r]``: the last off-diagonal ``beta_m`` (0 after a breakdown), for error bounds.
    """

    alphas: Tensor
    betas: Tensor
    lengths: Tensor
    basis: Tensor | None
    residual: Tensor

    def tridiagonal(self, run: int = 0) -> Tensor:
        """The tridiagonal matrix of one run, ``[k, k]`` with ``k = lengths[run]`` (float64)."""
        k = int(self.lengths[run])
        a = self.alphas[run, :k].double()
        b = self.betas[run, :k - 1].double()
        return torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1)

    def ritz(self, run: int = 0) -> tuple[Tensor, Tensor]:
        """Ritz values ``[k]`` (ascending, float64) and eigenvectors ``[k, k]`` (columns) of one run."""
        return torch.linalg.eigh(self.tridiagonal(run))


def lanczos(op: LinearOperator, num_steps: int, *, num_runs: int = 1, start: Tensor | None = None,
            generator: torch.Generator | int | None = None, reorthogonalize: bool = True,
            keep_basis: bool = True) -> LanczosResult:
    """Run ``num_runs`` independent Lanczos iterations in parallel (one block product per step).

    Each run starts from a random Rademacher vector (or a row of ``start``) and builds an orthonormal Krylov
    basis with full re-orthogonalisation (classical Gram-Schmidt, twice), which keeps the Ritz values free of
    the spurious copies that plain Lanczos produces in floating point. A run whose next vector vanishes (an
    invariant subspace: exact arithmetic would divide by zero) stops early and its ``length`` records where.

    Args:
        op: symmetric operator of dimension P.
        num_steps: Krylov dimension m (clipped to P).
        num_runs: number of independent runs r (ignored when ``start`` is given).
        start: optional starting vectors ``[r, P]`` (need not be normalised).
        generator: randomness for the starting vectors (a Generator or a seed; default seed 0).
        reorthogonalize: full re-orthogonalisation (recommended; costs O(m P) memory per run).
        keep_basis: return the Lanczos vectors (needed for Ritz vectors).

    Returns:
        :class:`LanczosResult`.

    References:
        Lanczos, 1950; Golub and Van Loan, 2013 (Matrix Computations, section 10.1).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    m = min(int(num_steps), op.dim)
    if start is None:
        if num_runs < 1:
            raise ValueError(f"num_runs must be >= 1, got {num_runs}")
        q = rademacher((num_runs, op.dim), as_generator(generator), op.dtype, op.device)
    else:
        if start.ndim != 2 or start.shape[1] != op.dim:
            raise ValueError(f"start must have shape [r, {op.dim}], got {tuple(start.shape)}")
        q = start.to(device=op.device, dtype=op.dtype)
    r = q.shape[0]
    norms = q.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("start contains a zero vector")
    q = q / norms
    need_basis = reorthogonalize or keep_basis
    basis = torch.zeros(r, m, op.dim, dtype=op.dtype, device=op.device) if need_basis else None
    alphas = torch.zeros(r, m, dtype=op.dtype, device=op.device)
    betas = torch.zeros(r, max(m - 1, 0), dtype=op.dtype, device=op.device)
    lengths = torch.full((r,), m, dtype=torch.int64)
    residual = torch.zeros(r, dtype=op.dtype, device=op.device)
    active = torch.ones(r, dtype=torch.bool, device=op.device)
    q_prev = torch.zeros_like(q)
    beta_prev = torch.zeros(r, dtype=op.dtype, device=op.device)
    eps = torch.finfo(op.dtype).eps
    scale = torch.zeros(r, dtype=op.dtype, device=op.device)  # running estimate of ||A|| per run
    for j in range(m):
        if basis is not None:
            basis[:, j] = q
        w = op.matmat(q)
        alpha = (w * q).sum(dim=1)
        w = w - alpha[:, None] * q - beta_prev[:, None] * q_prev
        if reorthogonalize:
            for _ in range(2):
                v = basis[:, :j + 1]
                w = w - torch.einsum("rj,rjp->rp", torch.einsum("rjp,rp->rj", v, w), v)
        beta = w.norm(dim=1)
        alphas[:, j] = torch.where(active, alpha, torch.zeros_like(alpha))
        scale = torch.maximum(scale, alpha.abs() + beta + beta_prev)
        broke = active & (beta <= 100 * eps * scale.clamp_min(eps))
        if j == m - 1:
            residual = torch.where(active & ~broke, beta, torch.zeros_like(beta))
            break
        lengths[broke.cpu()] = j + 1
        active = active & ~broke
        beta = torch.where(active, beta, torch.zeros_like(beta))
        betas[:, j] = beta
        q_prev = q
        q = torch.where(active[:, None], w / beta.clamp_min(eps)[:, None], torch.zeros_like(w))
        beta_prev = beta
        if not bool(active.any()):
            break
    return LanczosResult(alphas, betas, lengths, basis if keep_basis else None, residual)


# ----------------------------------------------------------------------------------------------------------
# Top eigenvalues


@dataclass(frozen=True)
class EigenResult:
    """Leading eigenpairs of a symmetric operator.

    Attributes:
        eigenvalues: Tensor ``[k]``, in decreasing order of the criterion (value or magnitude).
        eigenvectors: Tensor ``[k, P]``, unit norm (row i belongs to eigenvalue i).
        residuals: Tensor ``[k]``: ``||A v - lambda v||`` computed with one more product (an eigenvalue lies
            within it of ``lambda``, up to the rounding of the products).
        num_matvecs: operator-vector products spent.
        converged: whether every pair met the tolerance.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    num_matvecs: int
    converged: bool


def power_iteration(op: LinearOperator, k: int = 1, *, max_iter: int = 100, tol: float = 1e-3,
                    generator: torch.Generator | int | None = None) -> EigenResult:
    """Top-k eigenpairs by largest *magnitude* with power iteration and deflation.

    Eigenpair i iterates ``v <- A v / ||A v||`` with ``v`` kept orthogonal to the pairs already found (projection
    deflation, more stable than subtracting ``lambda v v^T``) until the Rayleigh quotient changes by less than
    ``tol`` relative to its magnitude. This is the PyHessian method; note that it finds the largest ``|lambda|``,
    which can be a negative eigenvalue, and converges slowly when the top eigenvalues are close. Prefer
    :func:`lanczos_eigenvalues`.

    Args:
        op: symmetric operator of dimension P.
        k: number of eigenpairs.
        max_iter: iterations per eigenpair.
        tol: relative tolerance on the change of the eigenvalue estimate.
        generator: randomness for the Gaussian starting vectors (Generator or seed; default seed 0).

    Returns:
        :class:`EigenResult` (``converged`` is False if any pair ran out of iterations).

    References:
        Yao et al., 2020 (PyHessian); Golub and Van Loan, 2013 (section 7.3).
    """
    if not 1 <= k <= op.dim:
        raise ValueError(f"k must be in [1, {op.dim}], got {k}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")
    gen = as_generator(generator)
    start_count = op.num_matvecs
    found: list[Tensor] = []
    values, residuals = [], []
    all_converged = True

    def project(v: Tensor) -> Tensor:
        for u in found:
            v = v - (u @ v) * u
        return v

    for _ in range(k):
        v = project(gaussian((op.dim,), gen, op.dtype, op.device))
        v = v / v.norm()
        value, res, converged = None, None, False
        for _ in range(max_iter):
            w = project(op.matvec(v))
            new = float(v @ w)
            res = float((w - new * v).norm())
            norm = w.norm()
            if value is not None and abs(new - value) <= tol * (abs(value) + 1e-12):
                value = new
                converged = True
                break
            value = new
            if float(norm) == 0.0:  # v is in the null space: eigenvalue 0, exactly
                converged = True
                break
            v = w / norm
        all_converged &= converged
        found.append(v)
        values.append(value)
        residuals.append(res)
    return EigenResult(torch.tensor(values, dtype=op.dtype), torch.stack(found),
                       torch.tensor(residuals, dtype=op.dtype), op.num_matvecs - start_count, all_converged)


_WHICH = ("LA", "LM", "SA")


def lanczos_eigenvalues(op: LinearOperator, k: int = 1, *, which: str = "LA", num_steps: int | None = None,
                        tol: float = 1e-3, generator: torch.Generator | int | None = None) -> EigenResult:
    """Top-k eigenpairs from the Ritz pairs of one Lanczos run with full re-orthogonalisation.

    Each Ritz pair ``(theta, v)`` (``||v|| = 1``) comes with its residual ``r = ||A v - theta v||``, computed
    with one extra block product of the k Ritz vectors after the run (``num_matvecs = num_steps + k``). For a
    symmetric A some eigenvalue lies within ``r`` of ``theta`` (Golub and Van Loan, Theorem 8.1.13); it is the
    error of ``theta`` up to the rounding of the products themselves, which dominates in float32. The Ritz
    estimate ``|beta_m s_mi|`` that costs nothing is not used: in floating point it keeps shrinking far below
    the real error (1e-18 to 1e-31 in float32, where the error is ~1e-6). A pair counts as converged when its
    residual is below ``tol * |theta|``.

    Args:
        op: symmetric operator of dimension P.
        k: number of eigenpairs.
        which: ``"LA"`` largest algebraic (default; the sharpness), ``"LM"`` largest magnitude (what power
            iteration returns), ``"SA"`` smallest algebraic (most negative curvature).
        num_steps: Krylov dimension (default ``min(P, max(2k + 20, 30))``).
        tol: relative residual tolerance for ``converged``.
        generator: randomness for the starting vector (Generator or seed; default seed 0).

    Returns:
        :class:`EigenResult`.

    References:
        Lanczos, 1950; Ghorbani, Krishnan and Xiao, 2019.
    """
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
    if not 1 <= k <= op.dim:
        raise ValueError(f"k must be in [1, {op.dim}], got {k}")
    if num_steps is None:
        num_steps = max(2 * k + 20, 30)
    num_steps = min(num_steps, op.dim)
    if num_steps < k:
        raise ValueError(f"num_steps ({num_steps}) must be >= k ({k})")
    start_count = op.num_matvecs
    run = lanczos(op, num_steps, generator=generator, keep_basis=True)
    theta, s = run.ritz(0)
    if which == "LA":
        order = torch.argsort(theta, descending=True)
    elif which == "SA":
        order = torch.argsort(theta)
    else:
        order = torch.argsort(theta.abs(), descending=True)
    if len(order) < k:
        raise ValueError(f"the Krylov space has dimension {len(order)} < k={k} (the operator has rank < k "
                         f"on the start vector's span); lower k")
    order = order[:k]
    length = int(run.lengths[0])
    vectors = s[:, order].T.to(op.dtype) @ run.basis[0, :length]
    vectors = vectors / vectors.norm(dim=1, keepdim=True)
    values = theta[order].to(op.dtype)
    # the computed residual ||A v - theta v|| (one extra block product): in floating point the Ritz estimate
    # |beta_m s_mi| keeps shrinking below the rounding error of the products and is no bound at all
    residuals = (op.matmat(vectors) - values[:, None].to(vectors.device) * vectors).norm(dim=1)
    converged = bool((residuals.cpu() <= tol * values.abs().clamp_min(1e-12)).all())
    return EigenResult(values.cpu(), vectors, residuals.cpu(), op.num_matvecs - start_count, converged)


_EIG_METHODS = ("lanczos", "power")


def top_eigenvalues(op: LinearOperator, k: int = 1, *, method: str = "lanczos", which: str = "LA",
                    num_steps: int | None = None, max_iter: int = 100, tol: float = 1e-3,
                    generator: torch.Generator | int | None = None) -> EigenResult:
    """Top-k eigenvalues of a symmetric operator (the Hessian sharpness), by Lanczos or power iteration.

    Args:
        op: symmetric operator of dimension P.
        k: number of eigenpairs.
        method: ``"lanczos"`` (default) or ``"power"`` (power iteration with deflation; always by magnitude).
        which: for Lanczos: ``"LA"``, ``"LM"`` or ``"SA"`` (see :func:`lanczos_eigenvalues`).
        num_steps: Lanczos Krylov dimension.
        max_iter: power-iteration iterations per eigenpair.
        tol: tolerance (relative change for power iteration, relative residual for Lanczos).
        generator: randomness (Generator or seed; default seed 0).

    Returns:
        :class:`EigenResult`.

    References:
        Yao et al., 2020 (PyHessian); Golub and Van Loan, 2013.
    """
    if method == "lanczos":
        return lanczos_eigenvalues(op, k, which=which, num_steps=num_steps, tol=tol, generator=generator)
    if method == "power":
        return power_iteration(op, k, max_iter=max_iter, tol=tol, generator=generator)
    raise ValueError(f"method must be one of {_EIG_METHODS}, got {method!r}")


# ----------------------------------------------------------------------------------------------------------
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


def hutchinson_trace(op: LinearOperator, *, num_probes: int = 100, block_size: int = 10, tol: float | None = None,
                     min_probes: int = 20, generator: torch.Generator | int | None = None) -> TraceEstimate:
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
        generator: randomness (Generator or seed; default seed 0).

    Returns:
        :class:`TraceEstimate`.

    References:
        Hutchinson, 1990; Avron and Toledo, 2011.
    """
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2 (for a standard error), got {num_probes}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if tol is not None and tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")
    gen = as_generator(generator)
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


def hutchpp_trace(op: LinearOperator, *, num_matvecs: int = 99,
                  generator: torch.Generator | int | None = None) -> TraceEstimate:
    """Hutch++: exact trace on a sketched top subspace plus Hutchinson on the rest.

    With a budget of m products, ``k = m // 3`` sketch vectors ``S`` give ``Q = orth(A S)``; then
    ``tr A ~ tr(Q^T A Q) + mean_i g_i^T (I - QQ^T) A (I - QQ^T) g_i`` over k Rademacher ``g_i``. The error falls
    as 1/m instead of 1/sqrt(m) when the spectrum decays, as Hessian spectra do. The standard error is that of
    the Hutchinson part (the first term is exact given Q).

    Args:
        op: symmetric operator of dimension P.
        num_matvecs: total products m (>= 6).
        generator: randomness (Generator or seed; default seed 0).

    Returns:
        :class:`TraceEstimate`.

    References:
        Meyer, Musco, Musco and Woodruff, 2021 (Hutch++).
    """
    if num_matvecs < 6:
        raise ValueError(f"num_matvecs must be >= 6 (3 blocks of >= 2), got {num_matvecs}")
    gen = as_generator(generator)
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


def trace(op: LinearOperator, *, method: str = "hutchinson", num_matvecs: int = 100, block_size: int = 10,
          tol: float | None = None, generator: torch.Generator | int | None = None) -> TraceEstimate:
    """Stochastic trace of a symmetric operator (the Hessian's total curvature).

    Args:
        op: symmetric operator of dimension P.
        method: ``"hutchinson"`` (default) or ``"hutch++"``.
        num_matvecs: product budget (probes for Hutchinson).
        block_size: Hutchinson probes per block product.
        tol: Hutchinson relative standard-error target (early stop).
        generator: randomness (Generator or seed; default seed 0).

    Returns:
        :class:`TraceEstimate`.

    References:
        Hutchinson, 1990; Meyer et al., 2021.
    """
    if method == "hutchinson":
        return hutchinson_trace(op, num_probes=num_matvecs, block_size=block_size, tol=tol, generator=generator)
    if method == "hutch++":
        return hutchpp_trace(op, num_matvecs=num_matvecs, generator=generator)
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


def spectral_density(op: LinearOperator, *, num_steps: int = 50, num_probes: int = 1,
                     generator: torch.Generator | int | None = None) -> SpectralDensity:
    """Spectral density by stochastic Lanczos quadrature (runs over all probes in parallel).

    For a unit probe v, Lanczos with m steps gives a Gauss rule ``v^T f(A) v ~ sum_j w_j f(theta_j)`` with
    ``w_j = s_1j^2``; averaging over probes estimates ``tr f(A) / P``. With m = P (and a probe with a component
    along every eigenvector), the nodes are exactly the eigenvalues.

    Args:
        op: symmetric operator of dimension P.
        num_steps: Lanczos steps per probe (clipped to P).
        num_probes: independent Rademacher probes.
        generator: randomness (Generator or seed; default seed 0).

    Returns:
        :class:`SpectralDensity`.

    References:
        Lin, Saad and Yang, 2016; Ghorbani, Krishnan and Xiao, 2019.
    """
    run = lanczos(op, num_steps, num_runs=num_probes, generator=generator, keep_basis=False)
    m = run.alphas.shape[1]
    nodes = torch.zeros(num_probes, m, dtype=torch.float64)
    weights = torch.zeros(num_probes, m, dtype=torch.float64)
    for i in range(num_probes):
        theta, s = run.ritz(i)
        k = theta.shape[0]
        nodes[i, :k] = theta.cpu()
        weights[i, :k] = (s[0] ** 2).cpu()
    return SpectralDensity(nodes, weights, op.dim)
