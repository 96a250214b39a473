"""Weight-matrix spectra in the style of WeightWatcher (heavy-tailed self-regularisation).

For each Linear / Conv layer the empirical spectral density (ESD) is the set of eigenvalues
``lambda = sigma^2`` of ``W^T W`` (squared singular values of W). A Conv layer with a ``k_h x k_w`` kernel is
treated as WeightWatcher does: its ``k_h k_w`` slices ``W[:, :, i, j]`` (each ``out x in``) contribute their
eigenvalues to one pooled ESD. From the ESD:

- ``alpha``: exponent of a power law ``p(lambda) ~ lambda^-alpha`` fitted to the tail ``lambda >= xmin`` by
  maximum likelihood, with ``xmin`` chosen to minimise the Kolmogorov-Smirnov distance (Clauset et al.);
- ``alpha_weighted = alpha * log10(lambda_max)``, ``log_norm = log10(sum lambda)`` (= 2 log10 ||W||_F),
  ``log_spectral_norm = log10(lambda_max)``, ``log_alpha_norm = log10(sum lambda^alpha)``,
  ``stable_rank = sum lambda / lambda_max``.

Differences from WeightWatcher: no rescaling of Conv eigenvalues (WeightWatcher's ``conv2d_norm`` multiplies
them by a version-dependent factor; ``alpha`` is unaffected, the log norms shift by a constant); the KS search
over ``xmin`` is vectorised (milliseconds instead of seconds per layer); no logging or warning side effects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "LayerSpectrum",
    "PowerLawFit",
    "esd",
    "fit_power_law",
    "layer_spectrum",
    "spectra_summary",
    "weight_matrices",
    "weight_spectra",
]

_SPREAD = 1e-8  # smallest mean log-spread ln(x / xmin) of a tail that counts as a distribution, not rounding
SUMMARY_KEYS = ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "log_alpha_norm", "stable_rank")


@dataclass(frozen=True)
class PowerLawFit:
    """A continuous power-law fit ``p(x) = (alpha - 1) / xmin (x / xmin)^-alpha`` for ``x >= xmin``.

    Attributes:
        alpha: the exponent (NaN when no fit is possible, e.g. all eigenvalues equal).
        xmin: lower end of the fitted tail.
        ks_distance: Kolmogorov-Smirnov distance between the tail and the fit.
        num_tail: number of eigenvalues in the tail.
    """

    alpha: float
    xmin: float
    ks_distance: float
    num_tail: int


def _ks_for_candidates(x: Tensor, cand: Tensor, min_tail: int, block: int = 256) -> tuple[Tensor, Tensor]:
    """alpha and KS distance for every candidate start index in ``cand`` of the ascending sample ``x``."""
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
        alpha = torch.where(ok, 1 + m / safe, torch.full_like(m, float("nan")))
        k = (pos[None, :] - j[:, None]).to(x.dtype)  # rank within the tail
        inside = k >= 0
        ratio = torch.exp(logx[None, :] - logx[j][:, None])
        model_cdf = 1 - ratio.pow(1 - alpha[:, None])
        diff = torch.maximum((model_cdf - (k + 1) / m[:, None]).abs(), (model_cdf - k / m[:, None]).abs())
        diff = torch.where(inside, diff, torch.zeros_like(diff))
        d = diff.max(dim=1).values
        alphas[s:s + block] = alpha
        dists[s:s + block] = torch.where(ok, d, torch.full_like(d, float("inf")))
    return alphas, dists


def fit_power_law(eigenvalues: Tensor, *, xmin: float | None = None, min_tail: int = 2) -> PowerLawFit:
    """Fit a power law to the tail of a positive sample (an ESD), choosing ``xmin`` by minimal KS distance.

    ``alpha = 1 + m / sum_{x_i >= xmin} ln(x_i / xmin)`` (continuous MLE, m tail points); every distinct sample
    value with at least ``min_tail`` points at or above it is tried as ``xmin`` unless ``xmin`` is given.

    Args:
        eigenvalues: Tensor ``[n]``; non-positive values are ignored.
        xmin: fixed lower cut-off (default: chosen by KS distance).
        min_tail: fewest tail points a candidate ``xmin`` may leave (>= 2).

    Returns:
        :class:`PowerLawFit` (alpha NaN when fewer than ``min_tail`` positive values or all equal).

    References:
        Clauset, Shalizi and Newman, 2009; Martin and Mahoney, 2021 (WeightWatcher).
    """
    if min_tail < 2:
        raise ValueError(f"min_tail must be >= 2, got {min_tail}")
    x = eigenvalues.detach().double().reshape(-1).cpu()
    x = torch.sort(x[x > 0]).values
    n = x.shape[0]
    nan = PowerLawFit(float("nan"), float("nan"), float("nan"), 0)
    if n < min_tail:
        return nan
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
            return PowerLawFit(float("nan"), float(xmin), float("nan"), m)
        alpha = 1 + m / denom
        cdf = 1 - (tail / xmin).pow(1 - alpha)
        k = torch.arange(m, dtype=x.dtype)
        d = float(torch.maximum((cdf - (k + 1) / m).abs(), (cdf - k / m).abs()).max())
        return PowerLawFit(alpha, float(xmin), d, m)
    first = torch.ones(n, dtype=torch.bool)
    first[1:] = x[1:] != x[:-1]
    cand = torch.nonzero(first).reshape(-1)
    cand = cand[n - cand >= min_tail]
    if cand.numel() == 0:
        return nan
    alphas, dists = _ks_for_candidates(x, cand, min_tail)
    if not bool(torch.isfinite(dists).any()):
        return nan
    best = int(torch.argmin(dists))
    j = int(cand[best])
    return PowerLawFit(float(alphas[best]), float(x[j]), float(dists[best]), n - j)


def _matrices(weight: Tensor) -> list[Tensor]:
    w = weight.detach()
    if w.ndim == 2:
        return [w]
    if w.ndim in (3, 4):  # Conv1d [out, in, k] / Conv2d [out, in, kh, kw]: one out x in slice per kernel position
        return list(w.reshape(w.shape[0], w.shape[1], -1).permute(2, 0, 1))
    raise ValueError(f"weight must be 2-D (dense) or 3/4-D (conv), got shape {tuple(w.shape)}")


def esd(weight: Tensor) -> Tensor:
    """Empirical spectral density: eigenvalues of ``W^T W`` (squared singular values), pooled over conv slices.

    Args:
        weight: Tensor ``[N, M]`` (dense) or ``[out, in, k...]`` (conv).

    Returns:
        Tensor ``[num_evals]`` ascending, float64 (``min(N, M)`` values per matrix/slice).

    References:
        Martin and Mahoney, 2021.
    """
    mats = _matrices(weight)
    sv = torch.cat([torch.linalg.svdvals(m.double().cpu()) for m in mats])
    return torch.sort(sv.pow(2)).values


@dataclass(frozen=True)
class LayerSpectrum:
    """Spectral metrics of one layer's weight.

    Attributes:
        name: layer (module) name.
        shape: weight shape.
        num_matrices: 1 for dense layers, ``k_h k_w`` for conv slices.
        n: larger side of each matrix.
        m: smaller side (eigenvalues per matrix).
        eigenvalues: Tensor ``[num_evals]`` ascending (float64).
        skipped: True when ``m < min_evals`` (no power-law fit; excluded from summaries, as in WeightWatcher).
        alpha, xmin, ks_distance, num_tail: the power-law fit (NaN when skipped).
        alpha_weighted, log_norm, log_spectral_norm, log_alpha_norm, stable_rank: see module docstring.
    """

    name: str
    shape: tuple[int, ...]
    num_matrices: int
    n: int
    m: int
    eigenvalues: Tensor
    skipped: bool
    alpha: float
    xmin: float
    ks_distance: float
    num_tail: int
    alpha_weighted: float
    log_norm: float
    log_spectral_norm: float
    log_alpha_norm: float
    stable_rank: float

    def as_dict(self) -> dict[str, float | int | str | bool]:
        """Scalar fields as a flat dict (for tables and catalogs)."""
        return {"name": self.name, "shape": "x".join(map(str, self.shape)), "num_matrices": self.num_matrices,
                "n": self.n, "m": self.m, "num_evals": int(self.eigenvalues.numel()), "skipped": self.skipped,
                "alpha": self.alpha, "xmin": self.xmin, "ks_distance": self.ks_distance,
                "num_tail": self.num_tail, "alpha_weighted": self.alpha_weighted, "log_norm": self.log_norm,
                "log_spectral_norm": self.log_spectral_norm, "log_alpha_norm": self.log_alpha_norm,
                "stable_rank": self.stable_rank}


def _log10(v: float) -> float:
    return math.log10(v) if v > 0 else float("-inf")


def layer_spectrum(weight: Tensor, name: str = "", *, min_evals: int = 10, min_tail: int = 2) -> LayerSpectrum:
    """ESD and WeightWatcher metrics of one weight tensor.

    Args:
        weight: Tensor ``[N, M]`` or conv ``[out, in, k...]``.
        name: label stored in the result.
        min_evals: layers whose matrices have fewer than this many eigenvalues each are marked ``skipped``.
        min_tail: passed to :func:`fit_power_law`.

    Returns:
        :class:`LayerSpectrum`.

    References:
        Martin and Mahoney, 2021; Martin, Peng and Mahoney, 2021.
    """
    mats = _matrices(weight)
    n, m = max(mats[0].shape), min(mats[0].shape)
    evals = esd(weight)
    lam_max = float(evals[-1]) if evals.numel() else 0.0
    total = float(evals.sum())
    skipped = m < min_evals
    fit = PowerLawFit(float("nan"), float("nan"), float("nan"), 0) if skipped else \
        fit_power_law(evals, min_tail=min_tail)
    alpha = fit.alpha
    nan = float("nan")
    return LayerSpectrum(
        name=name, shape=tuple(weight.shape), num_matrices=len(mats), n=n, m=m, eigenvalues=evals, skipped=skipped,
        alpha=alpha, xmin=fit.xmin, ks_distance=fit.ks_distance, num_tail=fit.num_tail,
        alpha_weighted=alpha * _log10(lam_max) if math.isfinite(alpha) else nan,
        log_norm=_log10(total), log_spectral_norm=_log10(lam_max),
        log_alpha_norm=_log10(float(evals.pow(alpha).sum())) if math.isfinite(alpha) else nan,
        stable_rank=total / lam_max if lam_max > 0 else nan)


_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


def weight_matrices(model: nn.Module | Mapping[str, Tensor],
                    layers: Sequence[str] | None = None) -> dict[str, Tensor]:
    """The weights analysed by :func:`weight_spectra`.

    Args:
        model: a module (its Linear, Conv1d and Conv2d layers) or a state dict (its ``*.weight`` tensors of
            2, 3 or 4 dimensions).
        layers: restrict to these layer names (module names, or state-dict keys without ``.weight``).

    Returns:
        dict layer name -> weight tensor (detached).
    """
    if isinstance(model, nn.Module):
        found = {n: m.weight.detach() for n, m in model.named_modules()
                 if isinstance(m, _LAYER_TYPES) and isinstance(getattr(m, "weight", None), Tensor)}
    elif isinstance(model, Mapping):
        found = {k[:-len(".weight")] if k.endswith(".weight") else k: v.detach() for k, v in model.items()
                 if (k.endswith(".weight") or k == "weight") and isinstance(v, Tensor) and v.ndim in (2, 3, 4)}
    else:
        raise TypeError(f"model must be an nn.Module or a state dict, got {type(model).__name__}")
    if layers is not None:
        missing = [n for n in layers if n not in found]
        if missing:
            raise KeyError(f"layers not found (or not Linear/Conv): {missing}; available: {sorted(found)}")
        found = {n: found[n] for n in layers}
    return found


def weight_spectra(model: nn.Module | Mapping[str, Tensor], *, layers: Sequence[str] | None = None,
                   min_evals: int = 10, min_tail: int = 2) -> list[LayerSpectrum]:
    """Per-layer weight spectra of a model or state dict.

    Args:
        model: an ``nn.Module`` or a state dict.
        layers: restrict to these layers (default: every Linear/Conv weight).
        min_evals: see :func:`layer_spectrum`.
        min_tail: see :func:`fit_power_law`.

    Returns:
        list of :class:`LayerSpectrum`, in model order.

    References:
        Martin and Mahoney, 2021.
    """
    return [layer_spectrum(w, name, min_evals=min_evals, min_tail=min_tail)
            for name, w in weight_matrices(model, layers).items()]


def spectra_summary(spectra: Sequence[LayerSpectrum]) -> dict[str, float]:
    """Model-level averages over the non-skipped layers (WeightWatcher's summary).

    Args:
        spectra: output of :func:`weight_spectra`.

    Returns:
        dict with the mean ``alpha``, ``alpha_weighted``, ``log_norm``, ``log_spectral_norm``,
        ``log_alpha_norm``, ``stable_rank`` (NaN when every layer was skipped) and ``num_layers`` used.
    """
    used = [s for s in spectra if not s.skipped]
    out: dict[str, float] = {}
    for key in SUMMARY_KEYS:
        vals = [getattr(s, key) for s in used if math.isfinite(getattr(s, key))]
        out[key] = sum(vals) / len(vals) if vals else float("nan")
    out["num_layers"] = float(len(used))
    return out
