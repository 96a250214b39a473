"""MNIST-1D: procedurally generated 1-D digit sequences (our vectorised version of the published recipe).

Each sample is one of 10 hand-designed 12-point templates, randomly padded with zeros, stretched to 72
points, scaled, circularly translated, with correlated noise filling the empty background, white noise
added, sheared by a random linear trend and finally linearly interpolated down to 40 points. The data set
is globally standardised (zero mean, unit std) and split 80/20 into train/test as in the reference; our
loader carves a seeded validation set from the train part.

Randomness comes from a private ``numpy.random.Generator`` seeded with ``data_seed``; no global state is
touched and nothing is written to disk. Values are not bit-identical to the reference pickle (different
random streams), but the distribution follows the same algorithm and defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from .files import readonly
from .partition import carve_validation
from .preprocess import build_splits
from .registry import register_dataset
from .splits import DataSplits

__all__ = ["mnist1d_templates", "mnist1d_transform", "make_mnist1d", "interpolate_rows"]

_RAW_TEMPLATES = (
    (5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5),
    (5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5),
    (5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5),
    (5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5),
    (5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5),
    (5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5),
    (5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5),
    (5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5),
    (5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5),
    (5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5),
)


def mnist1d_templates() -> np.ndarray:
    """The 10 MNIST-1D digit templates, whitened, shifted to start at 0 and divided by 6.

    References:
        Greydanus, Kobak (2020/2024), "Scaling down deep learning with MNIST-1D".

    Returns:
        float64 array ``[10, 12]``; row ``c`` is the template of digit ``c``.
    """
    t = np.asarray(_RAW_TEMPLATES, dtype=np.float64)
    t = (t - t.mean(1, keepdims=True)) / t.std(1, keepdims=True)
    t = t - t[:, :1]
    return t / 6.0


def interpolate_rows(x: np.ndarray, lengths: np.ndarray | int, n_out: int) -> np.ndarray:
    """Linearly resample the first ``lengths[i]`` entries of each row to ``n_out`` evenly spaced points.

    Equivalent to ``interp1d(linspace(0, 1, L), x[:L])(linspace(0, 1, n_out))`` row by row, vectorised.

    Args:
        x: array ``[n, m]`` (entries beyond a row's length are ignored).
        lengths: per-row valid length ``[n]`` (each in ``[2, m]``) or one int for all rows.
        n_out: number of output points.

    Returns:
        float64 array ``[n, n_out]``.
    """
    n, m = x.shape
    lengths = np.broadcast_to(np.asarray(lengths, dtype=np.int64), (n,))
    if lengths.min() < 2 or lengths.max() > m:
        raise ValueError(
            f"interpolate_rows: lengths must be in [2, {m}], got [{lengths.min()}, {lengths.max()}]"
        )
    pos = np.arange(n_out)[None, :] * (lengths[:, None] - 1) / (n_out - 1)  # [n, n_out] source coordinates
    lo = np.minimum(np.floor(pos).astype(np.int64), lengths[:, None] - 2)
    w = pos - lo
    rows = np.arange(n)[:, None]
    return x[rows, lo] * (1.0 - w) + x[rows, lo + 1] * w


def mnist1d_transform(
    signals: np.ndarray,
    *,
    pad: np.ndarray,
    scale: np.ndarray,
    shift: np.ndarray,
    corr_noise: np.ndarray,
    iid_noise: np.ndarray,
    shear: np.ndarray,
    final_seq_length: int = 40,
) -> np.ndarray:
    """Apply the deterministic MNIST-1D transformation to templates, given all random draws.

    Per sample ``i``: append ``pad[i]`` zeros (template values get ``+1e-8`` to mark their support), stretch
    to ``m`` points by linear interpolation, multiply by ``scale[i]``, shift circularly by ``shift[i]``,
    replace exact zeros (the background) by ``gaussian_filter(corr_noise[i], sigma=2)``, add ``iid_noise[i]``,
    subtract ``shear[i] * linspace(-0.5, 0.5, m)`` and interpolate to ``final_seq_length`` points.

    References:
        Greydanus, Kobak (2020/2024), "Scaling down deep learning with MNIST-1D".

    Args:
        signals: templates per sample ``[n, t]``.
        pad: zeros appended per sample ``[n]`` (each ``<= m - t``).
        scale: amplitude factors ``[n]``.
        shift: circular shifts ``[n]``.
        corr_noise: unsmoothed background noise ``[n, m]`` (already scaled); ``m`` = working length.
        iid_noise: white noise ``[n, m]`` (already scaled).
        shear: slopes ``[n]``.
        final_seq_length: output length.

    Returns:
        float64 array ``[n, final_seq_length]`` (not yet standardised).
    """
    from scipy.ndimage import gaussian_filter1d  # lazy: scipy.ndimage import is slow

    n, t_len = signals.shape
    m = corr_noise.shape[1]
    if corr_noise.shape != (n, m) or iid_noise.shape != (n, m) or int(np.max(pad)) > m - t_len:
        raise ValueError(
            f"mnist1d_transform: noise must be [{n}, m] with pad <= m - {t_len}; "
            f"got corr {corr_noise.shape}, iid {iid_noise.shape}, max pad {int(np.max(pad))}"
        )
    x = np.zeros((n, m))
    x[:, :t_len] = signals + 1e-8
    x = interpolate_rows(x, t_len + np.asarray(pad), m) * np.asarray(scale)[:, None]
    # circular translation by k: out[j] = x[(j - k) mod m]  (== np.roll per row)
    x = x[np.arange(n)[:, None], (np.arange(m)[None, :] - np.asarray(shift)[:, None]) % m]
    x = np.where(x != 0, x, gaussian_filter1d(corr_noise, sigma=2, axis=-1)) + iid_noise
    x = x - np.asarray(shear)[:, None] * np.linspace(-0.5, 0.5, m)[None, :]
    return interpolate_rows(x, m, final_seq_length)


def make_mnist1d(
    num_samples: int = 5000,
    *,
    padding: Sequence[int] = (36, 60),
    scale_coeff: float = 0.4,
    max_translation: int = 48,
    corr_noise_scale: float = 0.25,
    iid_noise_scale: float = 2e-2,
    shear_scale: float = 0.75,
    final_seq_length: int = 40,
    shuffle_seq: bool = False,
    seed: int = 42,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate the MNIST-1D data set (defaults = the reference's ``get_dataset_args``).

    References:
        Greydanus, Kobak (2020/2024), "Scaling down deep learning with MNIST-1D".

    Args:
        num_samples: total samples; ``num_samples // 10`` per class.
        padding: ``(low, high)``: a uniform number of zeros in ``[low, high]`` is appended to the template.
        scale_coeff: amplitude scale factor ``1 + scale_coeff * (u - 0.5)``.
        max_translation: circular shift uniform in ``{0, ..., max_translation - 1}``.
        corr_noise_scale: std of the Gaussian-smoothed (sigma 2) noise filling the zero background.
        iid_noise_scale: std of white noise added everywhere.
        shear_scale: slope ``shear_scale * (u - 0.5)`` of the subtracted linear trend.
        final_seq_length: output length (40).
        shuffle_seq: apply one fixed random permutation to the positions (the "shuffled" variant).
        seed: generation seed (private generator).

    Returns:
        ``(x float64 [n, final_seq_length] standardised over the whole set, y int64 [n])`` in shuffled order,
        ``n = 10 * (num_samples // 10)``.
    """
    low, high = (int(v) for v in padding)
    if not 0 <= low <= high:
        raise ValueError(f"padding must be (low, high) with 0 <= low <= high, got {padding!r}")
    if num_samples < 10:
        raise ValueError(f"num_samples must be >= 10, got {num_samples}")
    if max_translation < 1 or final_seq_length < 2:
        raise ValueError(
            f"max_translation must be >= 1 and final_seq_length >= 2, "
            f"got {max_translation}, {final_seq_length}"
        )
    rng = np.random.default_rng(seed)
    templates = mnist1d_templates()
    n_classes, t_len = templates.shape
    y = np.repeat(np.arange(n_classes, dtype=np.int64), num_samples // n_classes)
    n, m = len(y), t_len + high
    x = mnist1d_transform(
        templates[y],
        pad=low + np.floor(rng.random(n) * (high - low + 1)).astype(np.int64),
        scale=1.0 + scale_coeff * (rng.random(n) - 0.5),
        shift=rng.integers(0, max_translation, size=n),
        corr_noise=corr_noise_scale * rng.standard_normal((n, m)),
        iid_noise=iid_noise_scale * rng.standard_normal((n, m)),
        shear=shear_scale * (rng.random(n) - 0.5),
        final_seq_length=final_seq_length,
    )
    order = rng.permutation(n)
    x, y = x[order], y[order]
    if shuffle_seq:
        x = x[:, rng.permutation(final_seq_length)]
    x = (x - x.mean()) / x.std()
    return x, y


@lru_cache(maxsize=8)
def _cached_mnist1d(**kwargs) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN003
    return readonly(*make_mnist1d(**kwargs))


@register_dataset("mnist1d")
def load_mnist1d(
    *,
    seed: int,
    num_samples: int = 5000,
    train_split: float = 0.8,
    val_size: int | float = 0.1,
    flat: bool = False,
    data_seed: int = 42,
    padding: Sequence[int] = (36, 60),
    scale_coeff: float = 0.4,
    max_translation: int = 48,
    corr_noise_scale: float = 0.25,
    iid_noise_scale: float = 2e-2,
    shear_scale: float = 0.75,
    shuffle_seq: bool = False,
) -> DataSplits:
    """MNIST-1D, generated in-process: ``[n, 1, 40]`` (or ``[n, 40]`` with ``flat=True``), 10 classes.

    The first ``train_split`` of the generated (shuffled) samples is the training part and the rest the
    test set, as in the reference (defaults: 4000 / 1000); ``val_size`` (int count or fraction of the
    training part, default 0.1 -> 400) is carved from the training part with the split ``seed``.
    ``data_seed`` fixes the generated samples themselves.

    References:
        Greydanus, Kobak (2020/2024), "Scaling down deep learning with MNIST-1D".

    Args:
        seed: split seed (validation carve-out).
        num_samples, padding, scale_coeff, max_translation, corr_noise_scale, iid_noise_scale, shear_scale,
            shuffle_seq: generator settings, see ``make_mnist1d``.
        train_split: fraction of samples in the official training part.
        val_size: validation samples carved from the training part.
        flat: return ``[n, 40]`` instead of ``[n, 1, 40]``.
        data_seed: generation seed.

    Returns:
        The full splits.
    """
    if not 0.0 < float(train_split) < 1.0:
        raise ValueError(f"train_split must be in (0, 1), got {train_split!r}")
    x, y = _cached_mnist1d(
        num_samples=int(num_samples),
        padding=tuple(int(v) for v in padding),
        scale_coeff=float(scale_coeff),
        max_translation=int(max_translation),
        corr_noise_scale=float(corr_noise_scale),
        iid_noise_scale=float(iid_noise_scale),
        shear_scale=float(shear_scale),
        shuffle_seq=bool(shuffle_seq),
        seed=int(data_seed),
    )
    n_train_full = int(len(y) * float(train_split))
    tr, va = carve_validation(y[:n_train_full], n_train_full, val_size, seed)
    parts = {"train": tr, "val": va}
    xs = {k: x[:n_train_full][idx] for k, idx in parts.items()}
    ys = {k: y[:n_train_full][idx] for k, idx in parts.items()}
    xs["test"], ys["test"] = x[n_train_full:], y[n_train_full:]
    if not flat:
        xs = {k: v[:, None, :] for k, v in xs.items()}
    meta = {
        "source": "generated (MNIST-1D algorithm, Greydanus 2020)",
        "data_seed": int(data_seed),
        "n_total": int(len(y)),
    }
    return build_splits("mnist1d", "classification", 10, xs, ys, meta)
