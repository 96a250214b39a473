"""Random-matrix fits of an empirical spectral density (ESD): the power-law tail, the Marchenko-Pastur bulk.

Pure functions of an eigenvalue (or singular value) tensor, as WeightWatcher 0.7.7 computes them:

- :func:`fit_power_law`: continuous power-law MLE of the tail with ``xmin`` by the KS distance (WeightWatcher's
  default fitter including its small-sample rule, or Clauset et al.'s rule), with the standard error of alpha;
- :func:`mp_fit`: Marchenko-Pastur fit of the bulk (number of spikes, bulk edges, MP soft rank);
- :func:`matrix_rank`, :func:`spectral_entropy`, :func:`jensen_shannon_distance`.

:mod:`zooscape.landscape.spectra` applies them to the layers of a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "EVALS_THRESH",
    "FIT_METHODS",
    "MPFit",
    "PowerLawFit",
    "fit_power_law",
    "jensen_shannon_distance",
    "matrix_rank",
    "mp_fit",
    "spectral_entropy",
]

_SPREAD = 1e-8  # smallest mean log-spread ln(x / xmin) of a tail that counts as a distribution, not rounding


@dataclass(frozen=True)
class PowerLawFit:
    """A continuous power-law fit ``p(x) = (alpha - 1) / xmin (x / xmin)^-alpha`` for ``x >= xmin``.

    Attributes:
        alpha: the exponent (NaN when no fit is possible, e.g. all eigenvalues equal).
        xmin: lower end of the fitted tail.
        ks_distance: Kolmogorov-Smirnov distance between the tail and the fit.
        num_tail: number of eigenvalues in the tail (``x >= xmin``).
        sigma: standard error of alpha, ``(alpha - 1) / sqrt(num_tail)`` (Clauset et al., eq. 3.2; the
            ``sigma`` of WeightWatcher and ``powerlaw``).
        method: the rule that chose ``xmin`` (``"weightwatcher"``, ``"clauset"`` or ``"fixed"``).
    """

    alpha: float
    xmin: float
    ks_distance: float
    num_tail: int
    sigma: float = float("nan")
    method: str = "weightwatcher"


FIT_METHODS = ("weightwatcher", "clauset")
#: WeightWatcher 0.7.7's constants: eigenvalues at or below EVALS_THRESH are left out of the fit; samples of
#: fewer than SMALL_N eigenvalues use the small-sample rule, whose tails have at least SMALL_N_MIN_TAIL points.
EVALS_THRESH = 1e-5
SMALL_N = 20
SMALL_N_MIN_TAIL = 8


def _nan_fit(method: str, num_tail: int = 0, xmin: float = float("nan")) -> PowerLawFit:
    nan = float("nan")
    return PowerLawFit(nan, xmin, nan, num_tail, nan, method)


def _ks_for_candidates(x: Tensor, cand: Tensor, min_tail: int, block: int = 256, *, two_sided: bool = True,
                       bias_corrected: bool = False) -> tuple[Tensor, Tensor]:
    """alpha and KS distance for every candidate start index in ``cand`` of the ascending sample ``x``.

    ``two_sided``: compare the model CDF with both ends of each empirical step (``k/m`` and ``(k+1)/m``, the
    exact supremum); otherwise with ``k/m`` only (WeightWatcher). ``bias_corrected``: ``1 + (m - 1) / s``.
    """
    n = x.shape[0]
    logx = torch.log(x)
    suffix = torch.flip(torch.cumsum(torch.flip(logx, [0]), 0), [0])  # sum_{i >= j} log x_i
    alphas = torch.full((cand.shape[0],), float("nan"), dtype=x.dtype)
    dists = torch.full((cand.shape[0],), float("inf"), dtype=x.dtype)
    pos = torch.arange(n)
    for s in range(0, cand.shape[0], block):
        j = cand[s:s + block]
        m = (n - j).to(x.dtype)
        denom = suffix[j] - m * logx[j]
        # a tail whose values agree to rounding (e.g. a scaled orthogonal matrix) has no power law
        ok = (denom > m * _SPREAD) & (m >= min_tail)
        safe = torch.where(ok, denom, torch.ones_like(denom))
        alpha = torch.where(ok, 1 + (m - 1 if bias_corrected else m) / safe, torch.full_like(m, float("nan")))
        ok = ok & (alpha > 1)
        k = (pos[None, :] - j[:, None]).to(x.dtype)  # rank within the tail
        inside = k >= 0
        ratio = torch.exp(logx[None, :] - logx[j][:, None])
        model_cdf = 1 - ratio.pow(1 - alpha[:, None])
        diff = (model_cdf - k / m[:, None]).abs()
        if two_sided:
            diff = torch.maximum((model_cdf - (k + 1) / m[:, None]).abs(), diff)
        diff = torch.where(inside, diff, torch.zeros_like(diff))
        d = diff.max(dim=1).values
        alphas[s:s + block] = alpha
        dists[s:s + block] = torch.where(ok, d, torch.full_like(d, float("inf")))
    return alphas, dists


def _fit_weightwatcher(x: Tensor, num_all: Tensor) -> PowerLawFit:
    """WeightWatcher 0.7.7's ``WWFit`` on the ascending positive sample ``x`` (``num_all``: every eigenvalue)."""
    n = x.shape[0]
    if n < 2:
        return _nan_fit("weightwatcher")
    cand = torch.arange(n - 1)  # every value but the largest, ties included (as the reference loops)
    if n < SMALL_N:
        # WWFit.fit_powerlaw_smallN ranks candidates by D - 0.868 / sqrt(m), but WWFit.__init__ then re-selects
        # xmin by the smallest D over the same arrays; the released 0.7.7 behaviour (reproduced) is the latter
        alphas, dists = _ks_for_candidates(x, cand, SMALL_N_MIN_TAIL, two_sided=False, bias_corrected=True)
        objective = dists
        if not bool(torch.isfinite(objective).any()):  # no tail of SMALL_N_MIN_TAIL points: the whole sample
            alphas, dists = _ks_for_candidates(x, cand[:1], 2, two_sided=False, bias_corrected=True)
            objective = dists
    else:
        alphas, dists = _ks_for_candidates(x, cand, 2, two_sided=False)
        objective = dists
    if not bool(torch.isfinite(objective).any()):
        return _nan_fit("weightwatcher")
    best = int(torch.argmin(objective))
    xmin = float(x[best])
    alpha = float(alphas[best])
    num_tail = int((num_all >= xmin).sum())
    return PowerLawFit(alpha, xmin, float(dists[best]), num_tail, (alpha - 1) / math.sqrt(n - best), "weightwatcher")


def fit_power_law(eigenvalues: Tensor, *, xmin: float | None = None, method: str = "weightwatcher",
                  min_tail: int = 2) -> PowerLawFit:
    """Fit a power law to the tail of a positive sample (an ESD), choosing ``xmin`` by the KS distance.

    ``alpha = 1 + m / sum_{x_i >= xmin} ln(x_i / xmin)`` (continuous MLE on the m tail points), with standard
    error ``sigma = (alpha - 1) / sqrt(m)``. Two rules choose ``xmin``:

    - ``"weightwatcher"`` (default; WeightWatcher 0.7.7's ``WWFit``, its default fitter, reproduced exactly):
      eigenvalues ``<= 1e-5`` are dropped; every remaining value but the largest is a candidate and the one with
      the smallest one-sided KS distance ``max_k |F(x_k) - k/m|`` wins. Samples of fewer than 20 values use its
      small-sample rule: tails of at least 8 points and the bias-corrected ``alpha = 1 + (m - 1) / sum ln``,
      again by the smallest D (its code also computes ``D - 0.868 / sqrt(m)``, but the released fitter
      re-selects by D, and that is what is reproduced); if no tail has 8 points, the whole sample is the tail.
      ``min_tail`` is not used.
    - ``"clauset"`` (zooscape's former rule): every distinct value with at least ``min_tail`` points at or
      above it is a candidate, with the two-sided (exact supremum) KS distance.

    ``sigma`` is always ``(alpha - 1) / sqrt(m)`` with the fitted alpha (as both references report it).

    Args:
        eigenvalues: Tensor ``[n]``; non-positive values are ignored.
        xmin: fixed lower cut-off (default: chosen by the rule above).
        method: ``"weightwatcher"`` or ``"clauset"``.
        min_tail: fewest tail points a candidate ``xmin`` may leave (>= 2; ``"clauset"`` and fixed ``xmin``).

    Returns:
        :class:`PowerLawFit` (alpha NaN when no fit is possible: too few values or all equal).

    References:
        Clauset, Shalizi and Newman, 2009; Martin and Mahoney, 2021 (WeightWatcher 0.7.7, ``WW_powerlaw.py``).
    """
    if min_tail < 2:
        raise ValueError(f"min_tail must be >= 2, got {min_tail}")
    if method not in FIT_METHODS:
        raise ValueError(f"method must be one of {FIT_METHODS}, got {method!r}")
    x = eigenvalues.detach().double().reshape(-1).cpu()
    every = x
    x = torch.sort(x[x > 0]).values
    n = x.shape[0]
    if xmin is not None:
        if xmin <= 0:
            raise ValueError(f"xmin must be positive, got {xmin}")
        start = int(torch.searchsorted(x, torch.tensor(xmin, dtype=x.dtype)))
        if n - start < min_tail:
            raise ValueError(f"xmin={xmin} leaves {n - start} values (< min_tail={min_tail})")
        tail = x[start:]  # the given xmin itself (not the nearest sample value) enters the MLE and the CDF
        m = tail.shape[0]
        denom = float(torch.log(tail / xmin).sum())
        if denom <= m * _SPREAD:
            return _nan_fit("fixed", m, float(xmin))
        alpha = 1 + m / denom
        cdf = 1 - (tail / xmin).pow(1 - alpha)
        k = torch.arange(m, dtype=x.dtype)
        d = float(torch.maximum((cdf - (k + 1) / m).abs(), (cdf - k / m).abs()).max())
        return PowerLawFit(alpha, float(xmin), d, m, (alpha - 1) / math.sqrt(m), "fixed")
    if method == "weightwatcher":
        return _fit_weightwatcher(x[x > EVALS_THRESH], every)
    if n < min_tail:
        return _nan_fit("clauset")
    first = torch.ones(n, dtype=torch.bool)
    first[1:] = x[1:] != x[:-1]
    cand = torch.nonzero(first).reshape(-1)
    cand = cand[n - cand >= min_tail]
    if cand.numel() == 0:
        return _nan_fit("clauset")
    alphas, dists = _ks_for_candidates(x, cand, min_tail)
    if not bool(torch.isfinite(dists).any()):
        return _nan_fit("clauset")
    best = int(torch.argmin(dists))
    j = int(cand[best])
    alpha = float(alphas[best])
    return PowerLawFit(alpha, float(x[j]), float(dists[best]), n - j, (alpha - 1) / math.sqrt(n - j), "clauset")


def matrix_rank(singular_values: Tensor, n: int) -> int:
    """Numerical rank: singular values above ``max(sv) * n * eps(float64)`` (``numpy.linalg.matrix_rank``).

    Args:
        singular_values: Tensor ``[m]`` (or pooled conv slices, flattened).
        n: the larger side of the matrix.

    Returns:
        The rank (int).
    """
    sv = singular_values.double().reshape(-1)
    if sv.numel() == 0:
        return 0
    return int((sv > sv.max() * n * torch.finfo(torch.float64).eps).sum())


def spectral_entropy(singular_values: Tensor, n: int) -> float:
    """WeightWatcher's matrix entropy ``-sum p_i ln p_i / ln(rank)``, ``p_i = lambda_i / sum lambda + 1e-10``.

    1 for a flat spectrum of full rank, near 0 for a rank-one matrix.

    Args:
        singular_values: Tensor ``[m]`` (pooled over conv slices).
        n: the larger side of the matrix (for :func:`matrix_rank`).

    Returns:
        The entropy (NaN for a zero matrix or rank one, where ``ln(rank)`` vanishes).

    References:
        Martin and Mahoney, 2021 (``RMT_Util.matrix_entropy`` of WeightWatcher 0.7.7).
    """
    sv = singular_values.double().reshape(-1)
    lam = sv * sv
    total = float(lam.sum())
    rank = matrix_rank(sv, n)
    if total <= 0 or rank <= 1:
        return float("nan")
    p = lam / total + 1e-10
    return float(-(p * torch.log(p)).sum() / math.log(rank + 1e-10))


# ------------------------------------------------------------------------------------- Marchenko-Pastur fit


@dataclass(frozen=True)
class MPFit:
    """A Marchenko-Pastur fit of the bulk of an ESD (rescaled to mean eigenvalue 1).

    Attributes:
        sigma_mp: fitted MP scale sigma.
        bulk_min: lower bulk edge ``(sigma (1 - 1/sqrt(Q)))^2 / w_scale^2`` (in the units of the eigenvalues).
        bulk_max: upper bulk edge ``lambda_+ = (sigma (1 + 1/sqrt(Q)))^2 / w_scale^2``.
        num_spikes: eigenvalues above ``bulk_max + sqrt(TW)``, ``TW = Q^-1/2 bulk_max^(2/3) M^(-2/3)``
            (the Tracy-Widom width; WeightWatcher's rule).
        mp_softrank: ``bulk_max / lambda_max`` (rescaled).
        w_scale: the factor ``sqrt(num_evals / sum lambda)`` applied to W before the fit.
    """

    sigma_mp: float
    bulk_min: float
    bulk_max: float
    num_spikes: int
    mp_softrank: float
    w_scale: float


def _linear_kde(samples: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """Density of a linear-kernel KDE, ``mean_i max(0, 1 - |x - x_i| / h) / h``, on a grid."""
    out = np.zeros_like(grid)
    for start in range(0, samples.shape[0], 512):
        u = np.abs(grid[:, None] - samples[None, start:start + 512]) / bandwidth
        out += np.clip(1.0 - u, 0.0, None).sum(1)
    return out / (samples.shape[0] * bandwidth)


def _mp_density(x: np.ndarray, q: float, sigma: float) -> tuple[np.ndarray, float, float]:
    b = (sigma * (1 + math.sqrt(1 / q))) ** 2
    a = (sigma * (1 - math.sqrt(1 / q))) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        val = np.nan_to_num((1 / (2 * np.pi * sigma * sigma * x / q)) * np.sqrt((b - x) * (x - a)))
    return val, a, b


def _qc_density(x: np.ndarray, sigma: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.nan_to_num((1 / (np.pi * sigma * sigma)) * np.sqrt(4 - x ** 2))


def mp_fit(eigenvalues: Tensor, n: int, m: int, *, bandwidth: float = 0.1) -> MPFit:
    """Fit a Marchenko-Pastur law to an ESD, as WeightWatcher 0.7.7's ``mp_fit`` does.

    The eigenvalues are rescaled to mean 1 (``W -> W sqrt(num_evals / sum lambda)``); a linear-kernel density
    estimate (bandwidth 0.1) on 1,000 points of ``[0, lambda_max + 0.5]``, restricted to where it exceeds 0.01,
    is compared with the MP density of aspect ratio ``Q = n / m`` (for ``Q = 1`` the quarter-circle law of the
    singular values); sigma minimises the squared residual over a grid of ``[0.05, 2) s0`` in steps of
    ``0.01 s0`` (``s0 = sqrt(lambda_max) / (1 + Q^-1/2)``), polished by Nelder-Mead (``scipy.optimize.brute``
    with ``fmin``). An MP law whose upper edge lies left of the density peak or beyond the grid, or whose lower
    edge lies right of the peak, is rejected (residual 1000 per point), as in the reference.

    Args:
        eigenvalues: Tensor ``[num_evals]`` (pooled over conv slices).
        n: larger side of each matrix.
        m: smaller side of each matrix.
        bandwidth: KDE bandwidth (on the rescaled eigenvalues).

    Returns:
        :class:`MPFit`.

    References:
        Martin and Mahoney, 2021 (JMLR, "Implicit self-regularization"); WeightWatcher 0.7.7
        (``RMT_Util.fit_density_with_range``, ``resid_mp``).
    """
    from scipy import optimize

    evals = eigenvalues.detach().double().reshape(-1).cpu().numpy()
    if evals.size == 0 or float(evals.sum()) <= 0:
        raise ValueError("mp_fit needs a non-zero spectrum")
    q = n / m
    w_scale = math.sqrt(evals.size) / math.sqrt(float(evals.sum()))
    lam = evals * w_scale ** 2
    lam_max = float(lam.max())
    s0 = math.sqrt(lam_max / (1 + 1 / math.sqrt(q)) ** 2)
    to_fit = np.sqrt(lam) if q == 1 else lam
    grid = np.linspace(0, float(to_fit.max()) + 0.5, 1000)
    dens = _linear_kde(to_fit, grid, bandwidth)
    good = dens > 0.01
    xde, yde = grid[good], dens[good]
    peak = xde[np.argmax(yde)] if xde.size else 0.0

    def residual(p: np.ndarray) -> float:
        sigma = float(np.asarray(p).reshape(-1)[0])
        if q == 1:
            r = _qc_density(xde, sigma) - yde
        else:
            val, a, b = _mp_density(xde, q, sigma)
            if b < peak or b > xde.max() or a > peak:
                return 1000.0 ** 2 * yde.size
            r = val - yde
        return float(np.sum(r ** 2))

    sigma = float(np.asarray(optimize.brute(residual, (slice(0.05 * s0, 2.0 * s0, 0.01 * s0),),
                                            finish=optimize.fmin)).reshape(-1)[0])
    bulk_max = (sigma * (1 + 1 / math.sqrt(q))) ** 2
    bulk_min = (sigma * (1 - 1 / math.sqrt(q))) ** 2
    tw = 1 / math.sqrt(q) * bulk_max ** (2 / 3) * m ** (-2 / 3)
    spikes = int((lam > bulk_max + math.sqrt(tw)).sum())
    # the edges are reported on the scale of the input eigenvalues (as the reference does)
    return MPFit(sigma, bulk_min / w_scale ** 2, bulk_max / w_scale ** 2, spikes, bulk_max / lam_max, w_scale)


def jensen_shannon_distance(p: Tensor, q: Tensor) -> float:
    """Jensen-Shannon distance ``sqrt((KL(p||m) + KL(q||m)) / 2)``, ``m = (p + q) / 2``, natural log.

    Each vector is normalised to sum 1 (as ``scipy.stats.entropy`` does); terms with ``p_i = 0`` are 0.

    Args:
        p: Tensor ``[k]`` of non-negative weights.
        q: Tensor ``[k]``.

    Returns:
        The distance in ``[0, sqrt(ln 2)]``.
    """
    p, q = p.double().reshape(-1), q.double().reshape(-1)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same length, got {p.numel()} and {q.numel()}")
    mid = (p + q) / 2
    pn, qn, mn = p / p.sum(), q / q.sum(), mid / mid.sum()

    def kl(a: Tensor) -> Tensor:
        return torch.where(a > 0, a * torch.log(a / torch.where(a > 0, mn, torch.ones_like(mn))),
                           torch.zeros_like(a)).sum()

    return float(torch.sqrt((kl(pn) + kl(qn)) / 2))
