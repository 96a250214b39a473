"""Variational dropout with automatic relevance determination (ARD) for Linear and Conv2d layers.

Each weight ``w`` gets a Gaussian posterior ``N(theta, sigma^2)`` with ``alpha = sigma^2 / theta^2``; training
minimises ``CE + kl_weight * KL`` (``KL / n_train`` for the per-sample ELBO) with the local reparameterisation
trick (the pre-activation is sampled from ``N(x theta, x^2 sigma^2)``) or one weight sample per step (see
:data:`ESTIMATORS`), and weights whose ``log alpha`` reaches the threshold are pruned. In eval mode an
ARD layer is the deterministic layer with the pruned weights set to zero.

Constants (Molchanov et al. 2017, as used by the Model Zoos sparsified twins):

- ``LOG_SIGMA2_INIT = -10``: initial ``log sigma^2`` of every weight ("ard_init");
- ``THRESHOLD = 3``: a weight is pruned when ``log alpha >= 3`` (dropout rate ``alpha/(1+alpha) > 0.95``);
- ``log alpha = clip(log sigma^2 - log(theta^2 + 1e-8), -10, 10)``;
- ``KL(q || p) ~= k1 - k1 * sigmoid(k2 + k3 log alpha) + 0.5 log(1 + 1/alpha)`` with
  ``k1, k2, k3 = 0.63576, 1.8732, 1.48695`` (the fit of the negative KL to the log-uniform prior);
- ``kl_weight(epoch) = min(1, kl_scale * epoch / epochs)``, ``kl_scale = 1e-2`` (the twins' ramp).

:func:`to_ard` swaps the Linear/Conv2d leaves of any model for ARD layers (the model's code is not edited, as the
population trainer swaps its layers); :func:`from_ard` returns the deterministic sparse model of the original
classes. The population versions (:mod:`zooscape.sparsify.pop_ard`) let :func:`zooscape.train.train_population`
train N twins at once.

References:
    Molchanov, Ashukha & Vetrov (2017), "Variational Dropout Sparsifies Deep Neural Networks";
    Kingma, Salimans & Welling (2015), "Variational Dropout and the Local Reparameterization Trick";
    Schürholt et al. (2022), "Model Zoos: A Dataset of Diverse Populations of Neural Network Models".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zooscape.train.layers import PopConv2d, PopLinear

from .counter_noise import TAG_LOCAL, TAG_WEIGHT, CounterNoise, CounterStream, local_noise

__all__ = [
    "ESTIMATORS", "K1", "K2", "K3", "LOG_ALPHA_CLIP", "LOG_SIGMA2_INIT", "THRESHOLD", "ARDConv2d", "ARDControl",
    "ARDLinear", "ard_kl", "ard_layers", "from_ard", "kl_approx", "kl_weight",
    "log_alpha", "sample_weight", "sparse_state_dict", "sparsity_ratio", "to_ard",
]

K1, K2, K3 = 0.63576, 1.8732, 1.48695
LOG_SIGMA2_INIT = -10.0
THRESHOLD = 3.0
LOG_ALPHA_CLIP = 10.0
_EPS = 1e-8


def log_alpha(weight: Tensor, log_sigma2: Tensor) -> Tensor:
    """``clip(log sigma^2 - log(theta^2 + 1e-8), -10, 10)``, elementwise; any shape (same for both)."""
    return (log_sigma2 - torch.log(weight * weight + _EPS)).clamp(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)


def kl_approx(la: Tensor) -> Tensor:
    """Molchanov et al.'s approximation of ``KL(q(w | theta, alpha) || p(w))`` (log-uniform prior), elementwise.

    ``KL ~= k1 - k1 * sigmoid(k2 + k3 * la) + 0.5 * log1p(exp(-la))``; tends to 0 as ``la -> inf``.

    Args:
        la: ``log alpha``, any shape.

    Returns:
        the KL of every weight, same shape.
    """
    return K1 - K1 * torch.sigmoid(K2 + K3 * la) + 0.5 * F.softplus(-la)


def kl_weight(epoch: int, epochs: int, kl_scale: float = 1e-2) -> float:
    """The KL weight of ``epoch`` (1-based) of ``epochs``: ``min(1, kl_scale * epoch / epochs)``."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    return min(1.0, kl_scale * max(0, epoch) / epochs)


#: Gradient estimators of the training forward pass (:class:`ARDControl` ``estimator``):
#:
#: - ``"local"`` (the single ARD layers' default): the local reparameterisation trick (Kingma, Salimans &
#:   Welling 2015), used by Molchanov et al. (2017) and the Model Zoos twins: every pre-activation is sampled from
#:   ``N(x theta, x^2 alpha theta^2)``, independent noise per sample; two convolutions/products per layer plus a
#:   full-resolution noise map.
#: - ``"weight"``: one weight sample ``w = theta + sqrt(alpha) |theta| eps`` (``eps ~ N(0, 1)`` per weight) per
#:   model and step, shared by the batch, then the ordinary layer on it (the "direct" estimator Kingma et al. 2015
#:   compare against, section 2.3: unbiased, with a higher gradient variance because the batch shares the noise).
#:   One convolution per layer, through the population's fastest routes (native conv + pool kernels), so a twin
#:   costs about what a zoo model costs: the default of :func:`~zooscape.sparsify.train_twins` (docs/sparsify.md).
ESTIMATORS = ("local", "weight")


@dataclass
class ARDControl:
    """What every ARD layer of a run shares: the threshold, the current KL penalty scale and the estimator.

    ``penalty_scale`` is ``kl_weight`` (``kl_weight / n_train`` for the per-sample ELBO): a layer in training mode
    adds ``penalty_scale * KL`` to its model's (mean per sample) loss. Zero (the default) trains without the
    penalty. ``estimator``: ``"local"`` (local reparameterisation) or ``"weight"`` (one weight sample per step), see
    :data:`ESTIMATORS`.
    """

    threshold: float = THRESHOLD
    penalty_scale: float = 0.0
    estimator: str = "local"

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")


class _ARDMixin:
    """Shared parts of :class:`ARDLinear` and :class:`ARDConv2d`."""

    weight: Tensor
    log_sigma2: Tensor
    control: ARDControl
    generator: torch.Generator | None

    def log_alpha(self) -> Tensor:
        """``log alpha`` of every weight (the weight's shape)."""
        return log_alpha(self.weight, self.log_sigma2)

    def mask(self) -> Tensor:
        """``True`` where a weight is kept (``log alpha < threshold``); the weight's shape."""
        return self.log_alpha() < self.control.threshold

    def kl(self) -> Tensor:
        """Sum of :func:`kl_approx` over this layer's weights (scalar)."""
        return kl_approx(self.log_alpha()).sum()

    def sparse_weight(self) -> Tensor:
        """The weight with pruned entries set to zero."""
        return torch.where(self.mask(), self.weight, torch.zeros_like(self.weight))

    def _counter_noise(self, attr: str, tag: int) -> CounterNoise:
        """This step's noise of the stream ``attr`` (:class:`CounterStream`, counter word ``tag``): a key drawn from
        ``self.generator`` when the stream starts, then one step per call, as the population layer draws it (assign
        a new generator object to restart the stream); a fresh key from the global generator when it is ``None``."""
        gen = self.generator
        if gen is None:
            return CounterStream(None, (), 1, tag).next()
        stream = getattr(self, attr, None)
        if stream is None or stream.ident != (id(gen),):
            stream = CounterStream([gen], (id(gen),), 1, tag)
            setattr(self, attr, stream)
        return stream.next()

    def sampled_weight(self) -> Tensor:
        """One draw of the weight ``theta + sqrt(alpha) |theta| eps`` (the ``"weight"`` estimator); the weight's
        shape. ``eps`` is counter-based noise (:mod:`zooscape.sparsify.counter_noise`) from ``self.generator``'s
        weight stream (see :meth:`_counter_noise`)."""
        w = self.weight
        eps = self._counter_noise("_stream", TAG_WEIGHT).tensor(tuple(w.shape), w.dtype, w.device)[0]
        return sample_weight(w, self.log_alpha(), eps)

    def _noise(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """Standard normal pre-activation noise of ``shape`` (``"local"`` estimator) from ``self.generator``'s local
        stream; 4-D maps run over ``[B, H, W, C]`` (as the population layer's, so that a twin's noise does not
        depend on its population; :func:`~zooscape.sparsify.counter_noise.local_noise`)."""
        noise = self._counter_noise("_local_stream", TAG_LOCAL)
        return local_noise(noise, shape, 1 if len(shape) == 4 else len(shape) - 1, like)


class ARDLinear(_ARDMixin, nn.Linear):
    """``nn.Linear`` with variational dropout (ARD): adds the parameter ``log_sigma2`` (``[out, in]``).

    Training mode: ``y = x theta^T + b + sqrt(x^2 (alpha theta^2)^T + 1e-8) * eps``, ``eps ~ N(0, 1)`` per output
    (local reparameterisation). Eval mode: ``F.linear(x, sparse_weight, b)``. Shapes as ``nn.Linear``.

    References:
        Molchanov et al. (2017), "Variational Dropout Sparsifies Deep Neural Networks".
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 log_sigma2_init: float = LOG_SIGMA2_INIT, control: ARDControl | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.log_sigma2 = nn.Parameter(torch.full_like(self.weight, float(log_sigma2_init)))
        self.control = control if control is not None else ARDControl()
        self.generator = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return F.linear(x, self.sparse_weight(), self.bias)
        if self.control.estimator == "weight":
            return F.linear(x, self.sampled_weight(), self.bias)
        mu = F.linear(x, self.weight, self.bias)
        var = F.linear(x * x, torch.exp(self.log_alpha()) * self.weight * self.weight)
        return sample_preactivation(mu, var, self._noise(tuple(mu.shape), mu))


class ARDConv2d(_ARDMixin, nn.Conv2d):
    """``nn.Conv2d`` with variational dropout (ARD): adds ``log_sigma2`` (the weight's shape
    ``[C_out, C_in/groups, kh, kw]``). Training: mean ``conv(x, theta)`` plus noise with variance
    ``conv(x^2, alpha theta^2) + 1e-8``; eval: ``conv(x, sparse_weight)``. Shapes as ``nn.Conv2d``.

    References:
        Molchanov et al. (2017); Kingma et al. (2015) (local reparameterisation).
    """

    def __init__(self, *args, log_sigma2_init: float = LOG_SIGMA2_INIT, control: ARDControl | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(f"ARDConv2d supports padding_mode='zeros' only, got {self.padding_mode!r}")
        self.log_sigma2 = nn.Parameter(torch.full_like(self.weight, float(log_sigma2_init)))
        self.control = control if control is not None else ARDControl()
        self.generator = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return self._conv_forward(x, self.sparse_weight(), self.bias)
        if self.control.estimator == "weight":
            return self._conv_forward(x, self.sampled_weight(), self.bias)
        mu = self._conv_forward(x, self.weight, self.bias)
        var = self._conv_forward(x * x, torch.exp(self.log_alpha()) * self.weight * self.weight, None)
        return sample_preactivation(mu, var, self._noise(tuple(mu.shape), mu))


ARD_LAYERS = (ARDLinear, ARDConv2d)


class _Sample(torch.autograd.Function):
    """``mu + sqrt(var + 1e-8) * noise`` in two passes, with a two-pass backward (``d/dvar = g * noise / (2 std)``);
    the composite of elementwise operations it replaces made a third of a population ARD step."""

    @staticmethod
    def forward(ctx, mu: Tensor, var: Tensor, noise: Tensor) -> Tensor:  # type: ignore[override]
        std = (var + _EPS).sqrt_()
        ctx.save_for_backward(std, noise)
        return torch.addcmul(mu, std, noise)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        std, noise = ctx.saved_tensors
        gvar = None
        if ctx.needs_input_grad[1]:
            gvar = (grad * noise).div_(std).mul_(0.5)
        return grad, gvar, None


def sample_preactivation(mu: Tensor, var: Tensor, noise: Tensor) -> Tensor:
    """The local reparameterisation sample ``mu + sqrt(var + 1e-8) * noise`` (all the same shape)."""
    return _Sample.apply(mu, var, noise)


def sample_weight(weight: Tensor, la: Tensor, noise: Tensor) -> Tensor:
    """One weight sample of the ``"weight"`` estimator: ``theta + exp(la / 2) |theta| * noise`` (all the same
    shape; ``la`` = :func:`log_alpha`), i.e. ``N(theta, alpha theta^2)`` per weight (Kingma et al. 2015, sec. 2.3)."""
    return torch.addcmul(weight, weight.abs() * torch.exp(0.5 * la), noise)


def ard_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ARD layer of ``model`` (single models and populations)."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, ARD_LAYERS) or (isinstance(m, (PopLinear, PopConv2d)) and hasattr(m, "log_sigma2"))]


def to_ard(model: nn.Module, *, log_sigma2_init: float = LOG_SIGMA2_INIT, threshold: float = THRESHOLD,
           control: ARDControl | None = None, estimator: str = "local") -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` and ``nn.Conv2d`` leaves are ARD layers holding the same weights.

    The model's class and code are unchanged (leaves are swapped by attribute), so any registry model works. All
    swapped layers share one :class:`ARDControl`.

    Args:
        model: the source model (not modified).
        log_sigma2_init: initial ``log sigma^2`` of every weight (Model Zoos: -10).
        threshold: prune at ``log alpha >= threshold`` (3).
        control: the shared control object (a new one by default, with ``threshold`` and ``estimator``).
        estimator: the training forward's gradient estimator, ``"local"`` or ``"weight"`` (:data:`ESTIMATORS`).

    Returns:
        the ARD model; its state dict is the source's plus ``<layer>.log_sigma2`` entries.
    """
    control = control if control is not None else ARDControl(threshold=float(threshold), estimator=estimator)
    # the Linear/Conv2d leaves are replaced below, so they are not copied (about half of the copy's time)
    new = copy.deepcopy(model, {id(m): m for m in model.modules() if type(m) in (nn.Linear, nn.Conv2d)})
    swapped = 0
    for parent in list(new.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                layer: nn.Module = ARDLinear(child.in_features, child.out_features, child.bias is not None,
                                             log_sigma2_init=log_sigma2_init, control=control,
                                             device=child.weight.device, dtype=child.weight.dtype)
            elif type(child) is nn.Conv2d:
                layer = ARDConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                  child.padding, child.dilation, child.groups, child.bias is not None,
                                  child.padding_mode, log_sigma2_init=log_sigma2_init, control=control,
                                  device=child.weight.device, dtype=child.weight.dtype)
            else:
                continue
            with torch.no_grad():
                layer.weight.copy_(child.weight)
                if child.bias is not None:
                    layer.bias.copy_(child.bias)
            layer.train(child.training)
            setattr(parent, name, layer)
            swapped += 1
    if swapped == 0:
        raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to make variational")
    return new


def from_ard(model: nn.Module) -> nn.Module:
    """The deterministic sparse model: every ARD layer back to ``nn.Linear``/``nn.Conv2d`` with its pruned weights
    set to zero (the state dict then has the source model's keys)."""
    new = copy.deepcopy(model)
    for parent in list(new.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ARDLinear):
                plain: nn.Module = nn.Linear(child.in_features, child.out_features, child.bias is not None,
                                             device=child.weight.device, dtype=child.weight.dtype)
            elif isinstance(child, ARDConv2d):
                plain = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                  child.padding, child.dilation, child.groups, child.bias is not None,
                                  child.padding_mode, device=child.weight.device, dtype=child.weight.dtype)
            else:
                continue
            with torch.no_grad():
                plain.weight.copy_(child.sparse_weight())
                if child.bias is not None:
                    plain.bias.copy_(child.bias)
            plain.train(child.training)
            setattr(parent, name, plain)
    return new


def sparse_state_dict(state: dict[str, Tensor], threshold: float = THRESHOLD) -> dict[str, Tensor]:
    """An ARD state dict -> the deterministic sparse model's state dict (``log_sigma2`` entries dropped, weights
    with ``log alpha >= threshold`` zeroed). Works on single-model state dicts (``[out, in]`` weights)."""
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if k.endswith(".log_sigma2"):
            continue
        ls = state.get(k[: -len("weight")] + "log_sigma2") if k.endswith("weight") else None
        if ls is not None:
            v = torch.where(log_alpha(v, ls) < threshold, v, torch.zeros_like(v))
        out[k] = v
    return out


def ard_kl(model: nn.Module) -> Tensor:
    """Sum of the KL terms of every ARD layer of a single model (scalar)."""
    layers = [m for _, m in ard_layers(model) if isinstance(m, ARD_LAYERS)]
    if not layers:
        raise ValueError("the model has no ARD layers (use to_ard)")
    return torch.stack([m.kl() for m in layers]).sum()


@torch.no_grad()
def sparsity_ratio(model: nn.Module | dict[str, Tensor], threshold: float = THRESHOLD) -> float:
    """Fraction of prunable weights that are pruned (biases and normalisation parameters are not counted).

    For an ARD model: the weights of its ARD layers with ``log alpha >= threshold``. For a plain model: the exact
    zeros among the weights of its Linear/Conv layers. For a state dict: ``*.weight`` entries that have a
    ``log_sigma2`` partner (ARD) or, if none has, every ``*.weight`` with two or more dimensions.
    """
    if isinstance(model, dict):
        ard = [k for k in model if k.endswith(".log_sigma2")]
        if ard:
            pairs = [(model[k[: -len("log_sigma2")] + "weight"], model[k]) for k in ard]
            pruned = sum(int((log_alpha(w, ls) >= threshold).sum()) for w, ls in pairs)
            total = sum(w.numel() for w, _ in pairs)
        else:
            ws = [v for k, v in model.items() if k.endswith("weight") and v.dim() >= 2]
            pruned, total = sum(int((w == 0).sum()) for w in ws), sum(w.numel() for w in ws)
        return pruned / total if total else 0.0
    layers = [m for m in model.modules() if isinstance(m, ARD_LAYERS)]
    if layers:
        pruned = sum(int((~m.mask()).sum()) for m in layers)
        total = sum(m.weight.numel() for m in layers)
    else:
        ws = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
        pruned, total = sum(int((w == 0).sum()) for w in ws), sum(w.numel() for w in ws)
    return pruned / total if total else 0.0
