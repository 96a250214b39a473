"""Weight-matrix spectra in the style of WeightWatcher 0.7.7 (heavy-tailed self-regularisation).

For each Linear / Conv layer the empirical spectral density (ESD) is the set of eigenvalues
``lambda = sigma^2`` of ``W^T W`` (squared singular values of W). A Conv layer with a ``k_h x k_w`` kernel is
treated as WeightWatcher 0.7.7 does by default (``pool=True``): its ``k_h k_w`` slices ``W[:, :, i, j]`` (each
``out x in``) contribute their eigenvalues to one pooled ESD, and ``min_evals`` is compared with the pooled
count (so all three conv layers of CNN-s are analysed). From the ESD:

- ``alpha``: exponent of a power law ``p(lambda) ~ lambda^-alpha`` fitted to the tail ``lambda >= xmin`` by
  maximum likelihood, ``xmin`` chosen by the Kolmogorov-Smirnov distance with WeightWatcher's rule (including
  its small-sample rule below 20 eigenvalues), and its standard error ``sigma = (alpha - 1) / sqrt(num_tail)``;
- ``alpha_weighted = alpha * log10(lambda_max)``, ``log_norm = log10(sum lambda)`` (= 2 log10 ||W||_F),
  ``log_spectral_norm = log10(lambda_max)``, ``log_alpha_norm = log10(sum lambda^alpha)``,
  ``stable_rank = sum lambda / lambda_max``;
- ``matrix_rank``, ``rank_loss``, ``entropy`` (spectral entropy), a Marchenko-Pastur fit of the bulk
  (``num_spikes``, ``sigma_mp``, ``bulk_min``, ``bulk_max``, ``mp_softrank``) and ``rand_distance`` (Jensen-Shannon
  distance to the ESD of the shuffled weight), as in WeightWatcher's ``details``;
- ``warning`` (WeightWatcher's over-/under-trained thresholds) and ``flags`` for fits on too few eigenvalues,
  which :func:`spectra_summary` leaves out of the alpha means.

The fits themselves (power law, Marchenko-Pastur, rank, entropy) are in :mod:`zooscape.landscape.rmt`.
``tests/landscape/test_landscape_spectra.py`` compares every deterministic column with WeightWatcher 0.7.7 on
the five layers of CNN-s and a dense layer (numbers recorded by ``tests/landscape/fixtures/
weightwatcher_reference.py``). Differences: conv eigenvalues are not rescaled unless ``conv2d_norm=True``
(WeightWatcher's default multiplies them by 1/2; alpha and ranks are unaffected, log norms shift by
``log10 2``); the MP fit uses ``Q = n / m >= 1`` for every conv layer (0.7.7 uses ``m / n`` when a layer has an
even number of wide kernel slices); the KS search is vectorised (milliseconds per layer); randomness comes from
a seed, not numpy's global RNG; no logging or warning side effects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zooscape._deprecate import renamed_kwargs
from zooscape.landscape._hvp import as_generator
from zooscape.landscape.rmt import (
    SMALL_N,
    MPFit,
    PowerLawFit,
    _nan_fit,
    fit_power_law,
    jensen_shannon_distance,
    matrix_rank,
    mp_fit,
    spectral_entropy,
)

__all__ = [
    "LayerSpectrum",
    "MPFit",
    "PowerLawFit",
    "esd",
    "fit_power_law",
    "jensen_shannon_distance",
    "layer_spectrum",
    "matrix_rank",
    "mp_fit",
    "randomized_esd",
    "spectra_summary",
    "spectral_entropy",
    "weight_matrices",
    "weight_spectra",
]

SUMMARY_KEYS = ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "log_alpha_norm", "stable_rank")


def _matrices(weight: Tensor) -> list[Tensor]:
    w = weight.detach()
    if w.ndim == 2:
        return [w]
    if w.ndim in (3, 4):  # Conv1d [out, in, k] / Conv2d [out, in, kh, kw]: one out x in slice per kernel position
        return list(w.reshape(w.shape[0], w.shape[1], -1).permute(2, 0, 1))
    raise ValueError(f"weight must be 2-D (dense) or 3/4-D (conv), got shape {tuple(w.shape)}")


#: WeightWatcher 0.7.7 multiplies the slices of a pooled conv layer by ``sqrt(conv2d_count / 2)`` with
#: ``conv2d_count = 1`` (its ``conv2d_norm``, on by default), i.e. their eigenvalues by 1/2.
CONV2D_NORM_FACTOR = 0.5


def esd(weight: Tensor, *, conv2d_norm: bool = False) -> Tensor:
    """Empirical spectral density: eigenvalues of ``W^T W`` (squared singular values), pooled over conv slices.

    Args:
        weight: Tensor ``[N, M]`` (dense) or ``[out, in, k...]`` (conv).
        conv2d_norm: scale conv eigenvalues by WeightWatcher 0.7.7's ``conv2d_norm`` factor 1/2 (changes the
            log norms by ``log10(1/2)``; alpha and ranks are scale-free).

    Returns:
        Tensor ``[num_evals]`` ascending, float64 (``min(N, M)`` values per matrix/slice).

    References:
        Martin and Mahoney, 2021.
    """
    return torch.sort(_singular_values(weight, conv2d_norm).reshape(-1).pow(2)).values


def _singular_values(weight: Tensor, conv2d_norm: bool) -> Tensor:
    """Singular values ``[num_matrices, m]`` (float64) of each matrix / conv slice."""
    mats = _matrices(weight)
    sv = torch.linalg.svdvals(torch.stack([m.double().cpu() for m in mats]))
    if conv2d_norm and weight.ndim > 2:
        sv = sv * math.sqrt(CONV2D_NORM_FACTOR)
    return sv


@renamed_kwargs(generator="seed")
def randomized_esd(weight: Tensor, *, conv2d_norm: bool = False,
                   seed: int | torch.Generator | None = None) -> Tensor:
    """ESD of the weight with its entries shuffled (each matrix / conv slice permuted on its own).

    Args:
        weight: Tensor ``[N, M]`` or conv ``[out, in, k...]``.
        conv2d_norm: as in :func:`esd`.
        seed: randomness (Generator or seed; default seed 0).

    Returns:
        Tensor ``[num_evals]`` ascending (float64).

    References:
        Martin and Mahoney, 2021; WeightWatcher 0.7.7 (``random_eigenvalues``).
    """
    gen = as_generator(seed)
    mats = _matrices(weight)
    shuffled = torch.stack([m.double().cpu().reshape(-1)[torch.randperm(m.numel(), generator=gen)].reshape(m.shape)
                            for m in mats])
    sv = torch.linalg.svdvals(shuffled)
    if conv2d_norm and weight.ndim > 2:
        sv = sv * math.sqrt(CONV2D_NORM_FACTOR)
    return torch.sort(sv.reshape(-1).pow(2)).values


@dataclass(frozen=True)
class LayerSpectrum:
    """Spectral metrics of one layer's weight (the columns of WeightWatcher's ``details``).

    Attributes:
        name: layer (module) name.
        shape: weight shape.
        num_matrices: 1 for dense layers, ``k_h k_w`` for conv slices.
        n: larger side of each matrix.
        m: smaller side (eigenvalues per matrix).
        eigenvalues: Tensor ``[num_evals]`` ascending (float64), pooled over conv slices.
        skipped: True when the layer has fewer than ``min_evals`` eigenvalues in all (pooled over slices, as
            WeightWatcher 0.7.7 counts them): no fits; excluded from summaries.
        alpha, xmin, ks_distance, num_tail, sigma: the power-law fit (:class:`PowerLawFit`; ``sigma`` is the
            standard error of alpha; NaN when skipped).
        alpha_weighted, log_norm, log_spectral_norm, log_alpha_norm, stable_rank: see module docstring.
        matrix_rank: numerical rank of the pooled singular values (:func:`matrix_rank`).
        rank_loss: ``sum over slices (m - rank)``.
        entropy: :func:`spectral_entropy`.
        num_spikes, sigma_mp, bulk_min, bulk_max, mp_softrank, w_scale: the Marchenko-Pastur fit
            (:func:`mp_fit`; NaN / -1 when not computed).
        rand_distance: Jensen-Shannon distance between the ESD and that of the shuffled weight (NaN when not
            computed); ``ww_softrank``: ``max(randomised ESD) / lambda_max``.
        warning: WeightWatcher's ``"over-trained"`` (alpha < 2), ``"under-trained"`` (alpha > 6) or ``""``.
        flags: reasons the alpha fit is unreliable: ``"few_evals"`` (fewer than 20 eigenvalues: WeightWatcher's
            small-sample rule), ``"small_tail"`` (fewer than ``min_tail`` tail points), ``"fit_failed"``.
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
    sigma: float = float("nan")
    matrix_rank: int = 0
    rank_loss: int = 0
    entropy: float = float("nan")
    num_spikes: int = -1
    sigma_mp: float = float("nan")
    bulk_min: float = float("nan")
    bulk_max: float = float("nan")
    mp_softrank: float = float("nan")
    w_scale: float = float("nan")
    rand_distance: float = float("nan")
    ww_softrank: float = float("nan")
    warning: str = ""
    flags: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, float | int | str | bool]:
        """Scalar fields as a flat dict (for tables and catalogs); ``flags`` joined by commas."""
        out: dict[str, float | int | str | bool] = {
            "name": self.name, "shape": "x".join(map(str, self.shape)), "num_matrices": self.num_matrices,
            "n": self.n, "m": self.m, "num_evals": int(self.eigenvalues.numel())}
        for key in LAYER_KEYS:
            out[key] = getattr(self, key)
        out["flags"] = ",".join(self.flags)
        return out


#: Scalar per-layer outputs (besides name, shape and sizes).
LAYER_KEYS = ("skipped", "alpha", "sigma", "xmin", "ks_distance", "num_tail", "alpha_weighted", "log_norm",
              "log_spectral_norm", "log_alpha_norm", "stable_rank", "matrix_rank", "rank_loss", "entropy",
              "num_spikes", "sigma_mp", "bulk_min", "bulk_max", "mp_softrank", "w_scale", "rand_distance",
              "ww_softrank", "warning")
#: WeightWatcher 0.7.7's ``warning`` thresholds on alpha.
OVER_TRAINED_ALPHA, UNDER_TRAINED_ALPHA = 2.0, 6.0


def _log10(v: float) -> float:
    return math.log10(v) if v > 0 else float("-inf")


@renamed_kwargs(generator="seed")
def layer_spectrum(weight: Tensor, name: str = "", *, min_evals: int = 8, fit: str = "weightwatcher",
                   min_tail: int = 10, conv2d_norm: bool = False, mp: bool = True, randomize: bool = True,
                   seed: int | torch.Generator | None = None) -> LayerSpectrum:
    """ESD and WeightWatcher metrics of one weight tensor.

    Args:
        weight: Tensor ``[N, M]`` or conv ``[out, in, k...]``.
        name: label stored in the result.
        min_evals: layers with fewer eigenvalues in all (pooled over conv slices) are ``skipped``
            (WeightWatcher 0.7.7's default 8).
        fit: power-law rule, ``"weightwatcher"`` or ``"clauset"`` (see :func:`fit_power_law`).
        min_tail: tails shorter than this are flagged ``"small_tail"``; with ``fit="clauset"`` also the
            shortest tail tried.
        conv2d_norm: WeightWatcher's conv scaling (see :func:`esd`); on to reproduce its log norms.
        mp: fit the Marchenko-Pastur bulk (:func:`mp_fit`).
        randomize: compare with the ESD of the shuffled weight (``rand_distance``, ``ww_softrank``).
        seed: randomness of the shuffle (Generator or seed; default seed 0).

    Returns:
        :class:`LayerSpectrum`.

    References:
        Martin and Mahoney, 2021; Martin, Peng and Mahoney, 2021; WeightWatcher 0.7.7.
    """
    if min_tail < 2:
        raise ValueError(f"min_tail must be >= 2, got {min_tail}")
    mats = _matrices(weight)
    n, m = max(mats[0].shape), min(mats[0].shape)
    sv = _singular_values(weight, conv2d_norm)  # [num_matrices, m]
    evals = torch.sort(sv.reshape(-1).pow(2)).values
    lam_max = float(evals[-1]) if evals.numel() else 0.0
    total = float(evals.sum())
    skipped = evals.numel() < min_evals
    nan = float("nan")
    if skipped:
        pl = _nan_fit(fit)
    else:
        pl = fit_power_law(evals, method=fit, min_tail=2 if fit == "weightwatcher" else min_tail)
    alpha = pl.alpha
    flags: list[str] = []
    warning = ""
    if not skipped:
        if evals.numel() < SMALL_N:
            flags.append("few_evals")
        if not math.isfinite(alpha):
            flags.append("fit_failed")
        elif pl.num_tail < min_tail:
            flags.append("small_tail")
        if math.isfinite(alpha):
            warning = "over-trained" if alpha < OVER_TRAINED_ALPHA else \
                "under-trained" if alpha > UNDER_TRAINED_ALPHA else ""
    extra: dict[str, float | int] = {}
    if mp and not skipped and total > 0:
        f = mp_fit(evals, n, m)
        extra.update(num_spikes=f.num_spikes, sigma_mp=f.sigma_mp, bulk_min=f.bulk_min, bulk_max=f.bulk_max,
                     mp_softrank=f.mp_softrank, w_scale=f.w_scale)
    if randomize and not skipped and total > 0:
        rand = randomized_esd(weight, conv2d_norm=conv2d_norm, seed=seed)
        extra.update(rand_distance=jensen_shannon_distance(evals, rand), ww_softrank=float(rand[-1]) / lam_max)
    rank_loss = sum(int(row.numel()) - matrix_rank(row, n) for row in sv)
    return LayerSpectrum(
        name=name, shape=tuple(weight.shape), num_matrices=len(mats), n=n, m=m, eigenvalues=evals, skipped=skipped,
        alpha=alpha, xmin=pl.xmin, ks_distance=pl.ks_distance, num_tail=pl.num_tail,
        alpha_weighted=alpha * _log10(lam_max) if math.isfinite(alpha) else nan,
        log_norm=_log10(total), log_spectral_norm=_log10(lam_max),
        log_alpha_norm=_log10(float(evals.pow(alpha).sum())) if math.isfinite(alpha) else nan,
        stable_rank=total / lam_max if lam_max > 0 else nan, sigma=pl.sigma,
        matrix_rank=matrix_rank(sv, n), rank_loss=rank_loss, entropy=spectral_entropy(sv, n),
        warning=warning, flags=tuple(flags), **extra)  # type: ignore[arg-type]


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


@renamed_kwargs(generator="seed")
def weight_spectra(model: nn.Module | Mapping[str, Tensor], *, layers: Sequence[str] | None = None,
                   min_evals: int = 8, fit: str = "weightwatcher", min_tail: int = 10, conv2d_norm: bool = False,
                   mp: bool = True, randomize: bool = True,
                   seed: int | torch.Generator | None = None) -> list[LayerSpectrum]:
    """Per-layer weight spectra of a model or state dict.

    Args:
        model: an ``nn.Module`` or a state dict.
        layers: restrict to these layers (default: every Linear/Conv weight).
        min_evals, fit, min_tail, conv2d_norm, mp, randomize: see :func:`layer_spectrum`.
        seed: randomness of the shuffles (one seed for all layers; default seed 0).

    Returns:
        list of :class:`LayerSpectrum`, in model order.

    References:
        Martin and Mahoney, 2021.
    """
    gen = as_generator(seed)
    return [layer_spectrum(w, name, min_evals=min_evals, fit=fit, min_tail=min_tail, conv2d_norm=conv2d_norm,
                           mp=mp, randomize=randomize, seed=gen)
            for name, w in weight_matrices(model, layers).items()]


#: Summary keys derived from the alpha fit: averaged over unflagged layers only.
ALPHA_KEYS = ("alpha", "alpha_weighted", "log_alpha_norm")


def spectra_summary(spectra: Sequence[LayerSpectrum], *, include_flagged: bool = False) -> dict[str, float]:
    """Model-level averages (WeightWatcher's ``get_summary``), honest about unreliable fits.

    The norm metrics (``log_norm``, ``log_spectral_norm``, ``stable_rank``, ``mp_softrank``) are averaged over
    every layer that was not skipped, as WeightWatcher does. The alpha metrics (``alpha``, ``alpha_weighted``,
    ``log_alpha_norm``) are averaged only over layers without ``flags`` (unless ``include_flagged``), because a
    fit on a handful of eigenvalues can dominate the mean (a 10-eigenvalue classifier can double it).
    ``alpha_se`` is the standard error of the mean alpha from the layers' ``sigma``:
    ``sqrt(sum sigma_i^2) / k``.

    Args:
        spectra: output of :func:`weight_spectra`.
        include_flagged: average the alpha metrics over flagged layers too (WeightWatcher's summary).

    Returns:
        dict with the means above (NaN when no layer qualifies), ``alpha_se``, ``num_layers`` (layers analysed,
        i.e. not skipped), ``num_alpha_layers`` (layers in the alpha means) and ``num_flagged``.
    """
    used = [s for s in spectra if not s.skipped]
    fitted = [s for s in used if include_flagged or not s.flags]
    out: dict[str, float] = {}
    for key in SUMMARY_KEYS + ("mp_softrank",):
        pool = fitted if key in ALPHA_KEYS else used
        vals = [getattr(s, key) for s in pool if math.isfinite(getattr(s, key))]
        out[key] = sum(vals) / len(vals) if vals else float("nan")
    sig = [s.sigma for s in fitted if math.isfinite(s.alpha) and math.isfinite(s.sigma)]
    out["alpha_se"] = math.sqrt(sum(v * v for v in sig)) / len(sig) if sig else float("nan")
    out["num_layers"] = float(len(used))
    out["num_alpha_layers"] = float(len([s for s in fitted if math.isfinite(s.alpha)]))
    out["num_flagged"] = float(len([s for s in used if s.flags]))
    return out
