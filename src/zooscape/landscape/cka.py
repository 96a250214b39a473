"""Centred kernel alignment (CKA) between representations, full-data and minibatch.

- :func:`cka` compares two representation matrices ``[n, p1]`` and ``[n, p2]`` of the same n inputs with a linear
  or RBF kernel, with the biased HSIC (Kornblith et al., 2019) or the unbiased one (``debiased=True``).
- :class:`MinibatchCKA` accumulates the unbiased HSIC over batches (Nguyen, Raghu and Kornblith, 2021), so
  representations of many inputs never need to be held at once; it compares every layer of one model with every
  layer of another in one pass.
- :func:`layer_features` reads representations at named layers with forward hooks that are always removed;
  :func:`cka_heatmap` builds the layer-by-layer CKA matrix of two models.

All HSIC arithmetic is in float64. A constant representation (zero variance, e.g. a dead ReLU layer) has no
defined CKA and gives NaN rather than an error, so a population-wide sweep is not interrupted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from zooscape.landscape._hvp import eval_mode, model_device

__all__ = [
    "BANDWIDTHS",
    "MinibatchCKA",
    "cka",
    "cka_heatmap",
    "default_layers",
    "gram_linear",
    "gram_rbf",
    "hsic_biased",
    "hsic_unbiased",
    "layer_features",
]

KERNELS = ("linear", "rbf")


def _as_matrix(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape [n, features...], got {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1).double()


def gram_linear(x: Tensor) -> Tensor:
    """Linear kernel matrix ``X X^T``.

    Args:
        x: Tensor ``[n, p]`` (or ``[n, ...]``, flattened).

    Returns:
        Tensor ``[n, n]`` (float64).

    References:
        Kornblith, Norouzi, Lee and Hinton, 2019.
    """
    x = _as_matrix(x, "x")
    return x @ x.T


BANDWIDTHS = ("all_pairs", "distinct_pairs")


def _median_all(d2: Tensor) -> Tensor:
    """numpy.median of all entries: the mean of the two middle values for an even count."""
    flat = d2.reshape(-1)
    k = flat.numel()
    hi = torch.kthvalue(flat, k // 2 + 1).values
    if k % 2:
        return hi
    return (torch.kthvalue(flat, k // 2).values + hi) / 2


def gram_rbf(x: Tensor, threshold: float = 1.0, bandwidth: str = "all_pairs") -> Tensor:
    """RBF kernel matrix ``exp(-d_ij^2 / (2 sigma^2))`` with ``sigma^2 = threshold^2 * median(d^2)``.

    Two rules for the median of the squared distances ``d^2``:

    - ``"all_pairs"`` (default, Kornblith et al.'s reference notebook): ``numpy.median`` over all ``n^2``
      entries of the distance matrix, the zero diagonal included; for an even count the two middle values are
      averaged. Published RBF-CKA numbers use this rule.
    - ``"distinct_pairs"``: ``torch.median`` over the ``n (n - 1) / 2`` distinct pairs ``i < j``, which returns
      the *lower* of the two middle values for an even count. Without the zeros the bandwidth is not biased
      down for small n (zooscape's rule before 2026-12).

    Args:
        x: Tensor ``[n, p]`` (or ``[n, ...]``, flattened).
        threshold: bandwidth as a fraction of the median distance.
        bandwidth: ``"all_pairs"`` or ``"distinct_pairs"``.

    Returns:
        Tensor ``[n, n]`` (float64); all NaN when the median squared distance is 0 (e.g. all points coincide).

    References:
        Kornblith, Norouzi, Lee and Hinton, 2019 (``gram_rbf`` of their CKA notebook).
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    if bandwidth not in BANDWIDTHS:
        raise ValueError(f"bandwidth must be one of {BANDWIDTHS}, got {bandwidth!r}")
    x = _as_matrix(x, "x")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"the RBF kernel needs at least 2 samples, got {n}")
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    d2.fill_diagonal_(0)
    if bandwidth == "all_pairs":
        med = _median_all(d2)
    else:
        iu = torch.triu_indices(n, n, 1)
        med = d2[iu[0], iu[1]].median()
    if float(med) <= 0:
        return torch.full_like(d2, float("nan"))
    return torch.exp(-d2 / (2 * threshold ** 2 * med))


def _center(k: Tensor) -> Tensor:
    """``H K H`` with ``H = I - 11^T / n``, for a batch of kernels ``[..., n, n]``."""
    k = k - k.mean(dim=-1, keepdim=True)
    return k - k.mean(dim=-2, keepdim=True)


def hsic_biased(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741
    """Biased HSIC estimator ``tr(K H L H) / (n - 1)^2``.

    Args:
        k: kernel Tensor ``[n, n]`` (or ``[a, n, n]``).
        l: kernel Tensor ``[n, n]`` (or ``[b, n, n]``).

    Returns:
        Scalar tensor (or ``[a, b]`` for stacked kernels).

    References:
        Gretton, Bousquet, Smola and Schoelkopf, 2005.
    """
    n = k.shape[-1]
    kc, lc = _center(k.double()), _center(l.double())
    if kc.ndim == 2 and lc.ndim == 2:
        return (kc * lc).sum() / (n - 1) ** 2
    return torch.einsum("aij,bij->ab", kc.reshape(-1, n, n), lc.reshape(-1, n, n)) / (n - 1) ** 2


def hsic_unbiased(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741
    """Unbiased HSIC estimator (HSIC_1) on kernels with their diagonals zeroed.

    ``[tr(K~L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3))``.

    Args:
        k: kernel Tensor ``[n, n]`` (or ``[a, n, n]``), n >= 4.
        l: kernel Tensor ``[n, n]`` (or ``[b, n, n]``).

    Returns:
        Scalar tensor (or ``[a, b]`` for stacked kernels).

    References:
        Song, Smola, Gretton, Bedo and Borgwardt, 2012; Nguyen, Raghu and Kornblith, 2021.
    """
    n = k.shape[-1]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs n >= 4 samples, got n={n}")
    stacked = k.ndim == 3 or l.ndim == 3
    kt = k.double().reshape(-1, n, n).clone()
    lt = l.double().reshape(-1, n, n).clone()
    kt.diagonal(dim1=1, dim2=2).zero_()
    lt.diagonal(dim1=1, dim2=2).zero_()
    k1 = kt.sum(-1)  # [a, n]  K~ 1
    l1 = lt.sum(-1)  # [b, n]
    tr = torch.einsum("aij,bij->ab", kt, lt)
    ksum, lsum = k1.sum(-1), l1.sum(-1)
    cross = k1 @ l1.T  # 1^T K~ L~ 1 (both symmetric)
    out = (tr + ksum[:, None] * lsum[None, :] / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross) / (n * (n - 3))
    return out if stacked else out[0, 0]


def _kernel(x: Tensor, kernel: str, threshold: float, bandwidth: str = "all_pairs") -> Tensor:
    if kernel == "linear":
        return gram_linear(x)
    if kernel == "rbf":
        return gram_rbf(x, threshold, bandwidth)
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def _ratio(num: Tensor, kk: Tensor, ll: Tensor) -> Tensor:
    den = torch.sqrt(kk.clamp_min(0) * ll.clamp_min(0))
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.full_like(num, float("nan")))


def cka(x: Tensor, y: Tensor, *, kernel: str = "linear", debiased: bool = False,
        threshold: float = 1.0, bandwidth: str = "all_pairs") -> Tensor:
    """Centred kernel alignment between two representations of the same n inputs.

    ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``; invariant to orthogonal maps, isotropic scaling and
    translation of either representation, not to general linear maps. For the linear kernel and
    ``debiased=False`` it is computed from features as ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on centred
    features when that is cheaper than the ``n x n`` Gram matrices.

    Args:
        x: Tensor ``[n, p1]`` (trailing dims flattened).
        y: Tensor ``[n, p2]``.
        kernel: ``"linear"`` or ``"rbf"``.
        debiased: use the unbiased HSIC estimator (needs n >= 4; removes the finite-sample bias towards 1
            that biased CKA shows when features outnumber samples).
        threshold: RBF bandwidth relative to the median pairwise distance.
        bandwidth: RBF median rule, ``"all_pairs"`` (Kornblith et al.'s notebook; default) or
            ``"distinct_pairs"`` (see :func:`gram_rbf`).

    Returns:
        Scalar float64 tensor in [0, 1] (debiased CKA may be slightly negative); NaN for a constant
        representation.

    References:
        Kornblith, Norouzi, Lee and Hinton, 2019.
    """
    xm, ym = _as_matrix(x, "x"), _as_matrix(y, "y")
    n = xm.shape[0]
    if ym.shape[0] != n:
        raise ValueError(f"x and y must describe the same inputs: {n} vs {ym.shape[0]} rows")
    if n < 2:
        raise ValueError(f"CKA needs at least 2 samples, got {n}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "linear" and not debiased and max(xm.shape[1], ym.shape[1]) < n:
        xc, yc = xm - xm.mean(0), ym - ym.mean(0)
        num = (yc.T @ xc).pow(2).sum()
        return _ratio(num, (xc.T @ xc).pow(2).sum(), (yc.T @ yc).pow(2).sum())
    if bandwidth not in BANDWIDTHS:
        raise ValueError(f"bandwidth must be one of {BANDWIDTHS}, got {bandwidth!r}")
    k, l = _kernel(xm, kernel, threshold, bandwidth), _kernel(ym, kernel, threshold, bandwidth)  # noqa: E741
    hsic = hsic_unbiased if debiased else hsic_biased
    return _ratio(hsic(k, l), hsic(k, k), hsic(l, l))


class MinibatchCKA:
    """Minibatch CKA accumulated with the unbiased HSIC, for every pair of (x-layer, y-layer).

    ``CKA_ab = sum_i HSIC_1(K_ia, L_ib) / sqrt(sum_i HSIC_1(K_ia, K_ia) sum_i HSIC_1(L_ib, L_ib))`` over
    batches i. Feed the same inputs to both sides of each :meth:`update`.

    Args:
        num_x: number of representations on the x side (layers of model A).
        num_y: number of representations on the y side (layers of model B).
        kernel: ``"linear"`` or ``"rbf"`` (the RBF bandwidth is set per batch).
        threshold: RBF bandwidth relative to the median pairwise distance.
        bandwidth: RBF median rule (see :func:`gram_rbf`).

    References:
        Nguyen, Raghu and Kornblith, 2021.
    """

    def __init__(self, num_x: int = 1, num_y: int = 1, *, kernel: str = "linear", threshold: float = 1.0,
                 bandwidth: str = "all_pairs") -> None:
        if num_x < 1 or num_y < 1:
            raise ValueError(f"num_x and num_y must be >= 1, got {num_x}, {num_y}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if bandwidth not in BANDWIDTHS:
            raise ValueError(f"bandwidth must be one of {BANDWIDTHS}, got {bandwidth!r}")
        self.kernel, self.threshold, self.bandwidth = kernel, threshold, bandwidth
        self.num_x, self.num_y = num_x, num_y
        self.xy = torch.zeros(num_x, num_y, dtype=torch.float64)
        self.xx = torch.zeros(num_x, dtype=torch.float64)
        self.yy = torch.zeros(num_y, dtype=torch.float64)
        self.num_batches = 0
        self.num_samples = 0

    def update(self, xs: Tensor | Sequence[Tensor], ys: Tensor | Sequence[Tensor]) -> None:
        """Add one batch: representations of the same b >= 4 inputs.

        Args:
            xs: one Tensor ``[b, ...]`` or a list of ``num_x`` of them.
            ys: one Tensor ``[b, ...]`` or a list of ``num_y`` of them.
        """
        xs = [xs] if isinstance(xs, Tensor) else list(xs)
        ys = [ys] if isinstance(ys, Tensor) else list(ys)
        if len(xs) != self.num_x or len(ys) != self.num_y:
            raise ValueError(f"expected {self.num_x} x and {self.num_y} y representations, "
                             f"got {len(xs)} and {len(ys)}")
        sizes = {t.shape[0] for t in xs + ys}
        if len(sizes) != 1:
            raise ValueError(f"all representations of a batch must have the same number of rows, got {sorted(sizes)}")
        b = sizes.pop()
        if b < 4:
            raise ValueError(f"minibatch CKA needs batches of >= 4 samples (unbiased HSIC), got {b}")
        k = torch.stack([_kernel(_as_matrix(t, "xs"), self.kernel, self.threshold, self.bandwidth).cpu() for t in xs])
        l = torch.stack([_kernel(_as_matrix(t, "ys"), self.kernel, self.threshold, self.bandwidth).cpu() for t in ys])  # noqa: E741
        self.xy += hsic_unbiased(k, l)
        self.xx += torch.diagonal(hsic_unbiased(k, k))
        self.yy += torch.diagonal(hsic_unbiased(l, l))
        self.num_batches += 1
        self.num_samples += b

    def compute(self) -> Tensor:
        """The CKA matrix, Tensor ``[num_x, num_y]`` (float64)."""
        if self.num_batches == 0:
            raise ValueError("no batch was added (call update first)")
        return _ratio(self.xy, self.xx[:, None], self.yy[None, :])


_SKIP = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Flatten)


def default_layers(model: nn.Module) -> list[str]:
    """Names of the representations compared by default: every leaf module except dropout, identity and
    flatten, then ``""`` (the model's output, e.g. logits).

    Args:
        model: the network.

    Returns:
        list of module names (as in ``model.named_modules()``).
    """
    names = [n for n, m in model.named_modules() if n and not any(True for _ in m.children())
             and not isinstance(m, _SKIP)]
    return names + [""]


def _batch_features(model: nn.Module, x: Tensor, layers: Sequence[str]) -> list[Tensor]:
    modules = dict(model.named_modules())
    for name in layers:
        if name not in modules:
            raise KeyError(f"layer {name!r} is not a module of the model (known: {sorted(modules)[:10]}...)")
    store: dict[str, Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            if not isinstance(output, Tensor):
                raise ValueError(f"layer {name!r} returned {type(output).__name__}, not a tensor")
            if name in store:
                raise ValueError(f"layer {name!r} ran twice in one forward pass (shared module): ambiguous")
            store[name] = output.detach()
        return hook

    try:
        for name in dict.fromkeys(layers):
            if name != "":
                handles.append(modules[name].register_forward_hook(make_hook(name)))
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, Tensor):
        raise ValueError(f"the model returned {type(out).__name__}, not a tensor")
    store[""] = out.detach()
    return [store[n].reshape(store[n].shape[0], -1) for n in layers]


def layer_features(model: nn.Module, x: Tensor, layers: Sequence[str] | None = None, *,
                   batch_size: int = 256, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Representations of ``x`` at named layers (module outputs, flattened), in eval mode without gradients.

    Forward hooks are removed afterwards, even on error; the model's train/eval flags are restored.

    Args:
        model: the network.
        x: inputs ``[n, ...]``.
        layers: module names; ``""`` is the model output (default: :func:`default_layers`).
        batch_size: inputs per forward pass.
        device: compute device (default: the model's).

    Returns:
        dict layer name -> Tensor ``[n, features]`` (on CPU).
    """
    layers = default_layers(model) if layers is None else list(layers)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = model_device(model) if device is None else torch.device(device)
    parts: list[list[Tensor]] = [[] for _ in layers]
    with eval_mode(model), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            feats = _batch_features(model, x[start:start + batch_size].to(device), layers)
            for i, f in enumerate(feats):
                parts[i].append(f.cpu())
    return {name: torch.cat(p) for name, p in zip(layers, parts)}


def _chunks(n: int, batch_size: int) -> Iterable[slice]:
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < 4:  # merge a tail too small for the unbiased HSIC
        starts.pop()
    for i, s in enumerate(starts):
        yield slice(s, starts[i + 1] if i + 1 < len(starts) else n)


def cka_heatmap(model_a: nn.Module, model_b: nn.Module, x: Tensor, *, layers_a: Sequence[str] | None = None,
                layers_b: Sequence[str] | None = None, batch_size: int = 256, kernel: str = "linear",
                threshold: float = 1.0, bandwidth: str = "all_pairs",
                device: torch.device | str | None = None) -> Tensor:
    """Layer-by-layer minibatch CKA between two models on the same inputs (one pass over ``x``).

    Args:
        model_a: first network (rows).
        model_b: second network (columns); may be ``model_a`` itself.
        x: inputs ``[n, ...]``, n >= 4.
        layers_a: module names of model A (``""`` = output; default :func:`default_layers`).
        layers_b: module names of model B (default :func:`default_layers`).
        batch_size: inputs per batch (>= 4; a final remainder of < 4 inputs joins the previous batch).
        kernel: ``"linear"`` or ``"rbf"``.
        threshold: RBF bandwidth relative to the median distance.
        bandwidth: RBF median rule (see :func:`gram_rbf`).
        device: compute device (default: each model's own).

    Returns:
        Tensor ``[len(layers_a), len(layers_b)]`` (float64).

    References:
        Kornblith et al., 2019; Nguyen, Raghu and Kornblith, 2021.
    """
    layers_a = default_layers(model_a) if layers_a is None else list(layers_a)
    layers_b = default_layers(model_b) if layers_b is None else list(layers_b)
    if not layers_a or not layers_b:
        raise ValueError("layers_a and layers_b must not be empty")
    if batch_size < 4:
        raise ValueError(f"batch_size must be >= 4 (unbiased HSIC), got {batch_size}")
    if x.shape[0] < 4:
        raise ValueError(f"x must hold at least 4 inputs, got {x.shape[0]}")
    acc = MinibatchCKA(len(layers_a), len(layers_b), kernel=kernel, threshold=threshold,
                       bandwidth=bandwidth)
    dev_a = model_device(model_a) if device is None else torch.device(device)
    dev_b = model_device(model_b) if device is None else torch.device(device)
    with eval_mode(model_a), eval_mode(model_b), torch.no_grad():
        for sl in _chunks(x.shape[0], batch_size):
            fa = _batch_features(model_a, x[sl].to(dev_a), layers_a)
            fb = _batch_features(model_b, x[sl].to(dev_b), layers_b)
            acc.update(fa, fb)
    return acc.compute()
