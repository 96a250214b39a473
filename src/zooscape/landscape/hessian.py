"""Hessian spectrum of a model's loss: top eigenvalues, trace and spectral density, matrix-free.

Every routine takes a symmetric :class:`LinearOperator` (usually a :class:`HessianOperator`, built by
:func:`hessian_operator`) and only multiplies it with blocks of vectors, so the same code serves the Hessian of
one batch, the exact full-data Hessian (``batch_size`` chunks weighted by their sample counts) and plain
matrices (:class:`DenseOperator`, used by the closed-form tests).

- top eigenvalues: :func:`lanczos_eigenvalues` (default) or :func:`power_iteration` with deflation;
- trace and spectral density: :mod:`zooscape.landscape.stochastic`;
- :func:`dense_matrix` materialises small operators (the oracle for tests).

Randomness comes from a ``torch.Generator`` (or an int seed); the global RNG is never used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zooscape._deprecate import renamed_kwargs
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
    "dense_matrix",
    "hessian_operator",
    "lanczos",
    "lanczos_eigenvalues",
    "power_iteration",
    "top_eigenvalues",
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


@renamed_kwargs(generator="seed")
def lanczos(op: LinearOperator, num_steps: int, *, num_runs: int = 1, start: Tensor | None = None,
            seed: int | torch.Generator | None = None, reorthogonalize: bool = True,
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
        seed: randomness for the starting vectors (a Generator or a seed; default seed 0).
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
        q = rademacher((num_runs, op.dim), as_generator(seed), op.dtype, op.device)
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


@renamed_kwargs(generator="seed")
def power_iteration(op: LinearOperator, k: int = 1, *, max_iter: int = 100, tol: float = 1e-3,
                    seed: int | torch.Generator | None = None) -> EigenResult:
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
        seed: randomness for the Gaussian starting vectors (Generator or seed; default seed 0).

    Returns:
        :class:`EigenResult` (``converged`` is False if any pair ran out of iterations).

    References:
        Yao et al., 2020 (PyHessian); Golub and Van Loan, 2013 (section 7.3).
    """
    check_power_iteration(k, op.dim, max_iter, tol)
    gen = as_generator(seed)
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


@renamed_kwargs(generator="seed")
def lanczos_eigenvalues(op: LinearOperator, k: int = 1, *, which: str = "LA", num_steps: int | None = None,
                        tol: float = 1e-3, seed: int | torch.Generator | None = None) -> EigenResult:
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
        seed: randomness for the starting vector (Generator or seed; default seed 0).

    Returns:
        :class:`EigenResult`.

    References:
        Lanczos, 1950; Ghorbani, Krishnan and Xiao, 2019.
    """
    num_steps = lanczos_steps(k, which, num_steps, op.dim)
    start_count = op.num_matvecs
    run = lanczos(op, num_steps, seed=seed, keep_basis=True)
    values, vectors = ritz_pairs(run, 0, k, which, op.dtype)
    # the computed residual ||A v - theta v|| (one extra block product): in floating point the Ritz estimate
    # |beta_m s_mi| keeps shrinking below the rounding error of the products and is no bound at all
    residuals = (op.matmat(vectors) - values[:, None].to(vectors.device) * vectors).norm(dim=1)
    converged = bool((residuals.cpu() <= tol * values.abs().clamp_min(1e-12)).all())
    return EigenResult(values.cpu(), vectors, residuals.cpu(), op.num_matvecs - start_count, converged)


def check_power_iteration(k: int, dim: int, max_iter: int, tol: float) -> None:
    """Validate the settings of :func:`power_iteration` (``dim``: the operator's); raises ValueError."""
    if not 1 <= k <= dim:
        raise ValueError(f"k must be in [1, {dim}], got {k}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")


def lanczos_steps(k: int, which: str, num_steps: int | None, dim: int) -> int:
    """Check ``k`` and ``which`` and return the Krylov dimension :func:`lanczos_eigenvalues` uses: ``num_steps``
    (default ``max(2k + 20, 30)``) clipped to the operator dimension ``dim``."""
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
    if not 1 <= k <= dim:
        raise ValueError(f"k must be in [1, {dim}], got {k}")
    if num_steps is None:
        num_steps = max(2 * k + 20, 30)
    num_steps = min(num_steps, dim)
    if num_steps < k:
        raise ValueError(f"num_steps ({num_steps}) must be >= k ({k})")
    return num_steps


def ritz_pairs(run: LanczosResult, index: int, k: int, which: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The k leading Ritz pairs of one run of a :class:`LanczosResult` (kept basis) by ``which``.

    Returns:
        ``(values [k], vectors [k, P])``: values in ``dtype``, unit-norm vectors on the basis's device.
    """
    theta, s = run.ritz(index)
    if which == "LA":
        order = torch.argsort(theta, descending=True)
    elif which == "SA":
        order = torch.argsort(theta)
    else:
        order = torch.argsort(theta.abs(), descending=True)
    if len(order) < k:
        raise ValueError(f"the Krylov space of run {index} has dimension {len(order)} < k={k} (the operator has "
                         f"rank < k on the start vector's span); lower k")
    order = order[:k]
    vectors = s[:, order].T.to(dtype) @ run.basis[index, :int(run.lengths[index])]
    return theta[order].to(dtype), vectors / vectors.norm(dim=1, keepdim=True)


_EIG_METHODS = ("lanczos", "power")


@renamed_kwargs(generator="seed")
def top_eigenvalues(op: LinearOperator, k: int = 1, *, method: str = "lanczos", which: str = "LA",
                    num_steps: int | None = None, max_iter: int = 100, tol: float = 1e-3,
                    seed: int | torch.Generator | None = None) -> EigenResult:
    """Top-k eigenvalues of a symmetric operator (the Hessian sharpness), by Lanczos or power iteration.

    Args:
        op: symmetric operator of dimension P.
        k: number of eigenpairs.
        method: ``"lanczos"`` (default) or ``"power"`` (power iteration with deflation; always by magnitude).
        which: for Lanczos: ``"LA"``, ``"LM"`` or ``"SA"`` (see :func:`lanczos_eigenvalues`).
        num_steps: Lanczos Krylov dimension.
        max_iter: power-iteration iterations per eigenpair.
        tol: tolerance (relative change for power iteration, relative residual for Lanczos).
        seed: randomness (Generator or seed; default seed 0).

    Returns:
        :class:`EigenResult`.

    References:
        Yao et al., 2020 (PyHessian); Golub and Van Loan, 2013.
    """
    if method == "lanczos":
        return lanczos_eigenvalues(op, k, which=which, num_steps=num_steps, tol=tol, seed=seed)
    if method == "power":
        return power_iteration(op, k, max_iter=max_iter, tol=tol, seed=seed)
    raise ValueError(f"method must be one of {_EIG_METHODS}, got {method!r}")
