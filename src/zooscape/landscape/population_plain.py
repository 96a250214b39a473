"""A twice-differentiable population forward for Hessian products, built from plain batched GEMMs.

The trainer's population layers (:mod:`zooscape.train.layers`) evaluate N models with grouped convolutions and
stacked Linears in the layouts training is fastest in. Their second derivatives are what a Hessian-vector product
runs, and there oneDNN's grouped-convolution double backward is slower per model than one model's (bench/RESULTS.md).
:class:`PlainPopulationNet` evaluates the same N models for the Hessian only, with plain ops whose first and
second derivatives are batched GEMMs, ordinary per-model convolutions and cheap elementwise/reduction kernels:

- activations are kept *model- and channel-major, sample-minor*: ``[N, F, B]`` for features and
  ``[N, C, B, H, W]`` for images, so a Linear is one ``bmm`` ``[N, out, in] @ [N, in, B]`` whose bias gradient is
  a contiguous row sum, and a later Conv2d is one ordinary (ungrouped) convolution per model;
- the first parametrised layer takes the input shared by every model densely: one ``[N out, in]`` GEMM (Linear) or
  one ``[N C_out, C k k] @ [C k k, B H' W']`` GEMM over the input's im2col, computed once (Conv2d; its second
  derivative is GEMMs too, where a convolution's weight double backward is a convolution with an image-sized
  kernel), so neither the batch nor its im2col is copied N times;
- pools (2d, max/avg/adaptive) run on ``[N C, B, H, W]`` views, elementwise activations on anything, eval-mode
  BatchNorm is a per-(model, channel) affine map, eval-mode Dropout the identity.

Only models that are a chain of their leaf modules in registration order (``nn.Sequential``, zooscape's MLP and
Model Zoos CNNs) made of those layers are accepted (:func:`plain_population_net` returns ``None`` otherwise), and
the built network is checked once against the population's own forward before it is used.

References: Pearlmutter, 1994 (fast exact multiplication by the Hessian); Chellapilla, Puri and Simard, 2006
(convolution as im2col + GEMM).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zooscape.train import _flags
from zooscape.train.population import Population, _outputs_agree

__all__ = ["HESSIAN_LAYERS", "PlainPopulationNet", "has_plain_form", "hessian_forward", "plain_population_net"]

#: The ``layers`` choices of :func:`hessian_forward` (and the population Hessian operator).
HESSIAN_LAYERS = ("auto", "plain", "population")

#: Parameter-free modules applied elementwise (any layout).
_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.Softplus, nn.Identity,
                nn.Hardtanh, nn.ReLU6, nn.Mish, nn.SELU, nn.CELU)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

Step = Callable[[dict[str, Tensor], Tensor, bool], tuple[Tensor, bool]]


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class PlainPopulationNet:
    """N models of one architecture as plain batched GEMMs, for Hessian-vector products (see the module doc).

    Call it with the stacked tensors ``{name: [N, *shape]}`` (the models' parameter and buffer names, optionally
    prefixed ``"net."`` as a :class:`~zooscape.train.Population`'s are; missing names are taken from ``fixed``) and
    a batch ``x`` ``[B, *in]`` shared by every model; it returns ``[B, N, K]``.

    References:
        Pearlmutter, 1994; Chellapilla, Puri and Simard, 2006 (im2col).

    Args:
        steps: the chain of layer functions (built by :func:`plain_population_net`).
        fixed: stacked tensors the call does not pass (held-fixed parameters, BatchNorm running statistics).
        size: N.
    """

    def __init__(self, steps: Sequence[Step], fixed: dict[str, Tensor], size: int) -> None:
        self.steps = list(steps)
        self.fixed = fixed
        self.size = size

    def __call__(self, tensors: dict[str, Tensor], x: Tensor) -> Tensor:
        lookup = {**self.fixed, **{k[4:] if k.startswith("net.") else k: v for k, v in tensors.items()}}
        h, shared = x, True
        for step in self.steps:
            h, shared = step(lookup, h, shared)
        if shared:  # no parametrised layer: every model computes the same function
            h = h.reshape(h.shape[0], -1).t().unsqueeze(0).expand(self.size, -1, -1)
        if h.dim() != 3:
            raise ValueError(f"the plain population network must end in features [N, K, B], got {tuple(h.shape)}")
        return h.permute(2, 0, 1)  # [B, N, K]


def _linear(prefix: str, m: nn.Linear) -> Step:
    def step(t: dict[str, Tensor], h: Tensor, shared: bool) -> tuple[Tensor, bool]:
        w = t[prefix + "weight"]  # [N, out, in]
        b = t.get(prefix + "bias") if m.bias is not None else None
        n, out, fan_in = w.shape
        if shared:  # h [B, in]: one dense GEMM [N out, in] @ [in, B]
            flat = w.reshape(n * out, fan_in)
            y = (flat @ h.t() if b is None else torch.addmm(b.reshape(n * out, 1), flat, h.t()))
            return y.view(n, out, h.shape[0]), False
        y = torch.bmm(w, h) if b is None else torch.baddbmm(b.unsqueeze(2), w, h)  # [N, out, B]
        return y, False
    return step


def _conv2d(prefix: str, m: nn.Conv2d) -> Step:
    kw = {"kernel_size": m.kernel_size, "padding": m.padding, "stride": m.stride, "dilation": m.dilation}
    cache: dict[str, tuple[Tensor, Tensor, int, int]] = {}

    def step(t: dict[str, Tensor], h: Tensor, shared: bool) -> tuple[Tensor, bool]:
        w = t[prefix + "weight"]  # [N, C_out, C_in, kh, kw]
        b = t.get(prefix + "bias") if m.bias is not None else None
        n, c_out = w.shape[:2]
        if shared:  # h [B, C, H, W] (constant): its im2col once, one GEMM [N C_out, C k k] @ [C k k, B H' W']
            hit = cache.get("x")
            if hit is None or hit[0] is not h:
                hw = [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in
                      zip(h.shape[-2:], m.kernel_size, m.stride, m.padding, m.dilation)]
                cols = F.unfold(h, **kw).transpose(0, 1).reshape(-1, h.shape[0] * hw[0] * hw[1])
                cache["x"] = hit = (h, cols, *hw)
            _, cols, h_out, w_out = hit
            mat = w.reshape(n * c_out, -1)
            y = mat @ cols if b is None else torch.addmm(b.reshape(n * c_out, 1), mat, cols)
            return y.view(n, c_out, h.shape[0], h_out, w_out), False
        # h [N, C, B, H, W]: one ungrouped convolution per model (oneDNN's grouped double backward is slower)
        ys = [F.conv2d(h[i].transpose(0, 1), w[i], None if b is None else b[i], m.stride, m.padding, m.dilation)
              for i in range(n)]
        return torch.stack([y.transpose(0, 1) for y in ys]), False
    return step


def _batchnorm(prefix: str, m: nn.modules.batchnorm._BatchNorm) -> Step:
    def step(t: dict[str, Tensor], h: Tensor, shared: bool) -> tuple[Tensor, bool]:
        mean, var = t[prefix + "running_mean"], t[prefix + "running_var"]  # [N, C]
        scale = torch.rsqrt(var + m.eps)
        if m.affine:
            scale = scale * t[prefix + "weight"]
            shift = t[prefix + "bias"] - mean * scale
        else:
            shift = -mean * scale
        n, c = scale.shape
        if shared:  # [B, C, ...] -> [N, C, B, ...]
            h = h.transpose(0, 1).unsqueeze(0).expand(n, *h.transpose(0, 1).shape)
        shape = (n, c, *([1] * (h.dim() - 2)))  # images [N, C, B, H, W], features [N, F, B]
        return torch.addcmul(shift.view(shape), h, scale.view(shape)), False
    return step


def _pool(m: nn.Module) -> Step:
    def step(t: dict[str, Tensor], h: Tensor, shared: bool) -> tuple[Tensor, bool]:
        if shared:
            return m(h), True
        n, c = h.shape[:2]
        y = m(h.reshape(n * c, *h.shape[2:]))  # [N, C, B, H, W] as N C images of B channels (pools are per channel)
        return y.view(n, c, *y.shape[1:]), False
    return step


def _flatten(m: nn.Flatten) -> Step:
    def step(t: dict[str, Tensor], h: Tensor, shared: bool) -> tuple[Tensor, bool]:
        if shared:
            return m(h), True
        if h.dim() == 3:
            return h, False
        n, b = h.shape[0], h.shape[2]  # [N, C, B, H, W] -> [N, C H W, B]
        return h.movedim(2, -1).reshape(n, -1, b), False
    return step


def _elementwise(m: nn.Module) -> Step:
    def step(t: dict[str, Tensor], h: Tensor, shared: bool) -> tuple[Tensor, bool]:
        return m(h), shared
    return step


def _identity(t: dict[str, Tensor], h: Tensor, shared: bool) -> tuple[Tensor, bool]:
    return h, shared


def _leaf_step(prefix: str, m: nn.Module) -> Step | None:
    if type(m) is nn.Linear:
        return _linear(prefix, m)
    if type(m) is nn.Conv2d:
        ok = (m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)
              and _pair(m.dilation) == (1, 1))
        return _conv2d(prefix, m) if ok else None
    if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return _batchnorm(prefix, m) if m.track_running_stats and m.running_mean is not None else None
    if type(m) in _POOLS:
        return _pool(m)
    if type(m) is nn.Flatten:
        return _flatten(m) if m.start_dim == 1 and m.end_dim == -1 else None
    if type(m) in (nn.Dropout, nn.Dropout1d, nn.Dropout2d):
        return _identity  # evaluated in eval mode
    if type(m) in _ELEMENTWISE:
        return _elementwise(m)
    return None


def plain_population_net(template: nn.Module, stacked: dict[str, Tensor], size: int) -> PlainPopulationNet | None:
    """The :class:`PlainPopulationNet` of ``template``'s architecture, or ``None`` when it has a leaf this module
    has no plain form for (the caller keeps the trainer's population layers then).

    The network is assumed to apply its leaf modules one after the other in registration order; the caller must
    check it once against a reference forward (:class:`~zooscape.landscape.population.PopulationHessianOperator`
    compares it with the population's on two samples).

    Args:
        template: one model of the architecture (its structure, not its values, is read).
        stacked: every stacked parameter and buffer ``{name: [N, *shape]}`` (names as the template's).
        size: N.

    Returns:
        :class:`PlainPopulationNet` or ``None``.
    """
    steps = []
    for name, m in template.named_modules():
        if list(m.children()):
            if any(True for _ in m.parameters(recurse=False)):
                return None
            continue
        step = _leaf_step(f"{name}." if name else "", m)
        if step is None:
            return None
        steps.append(step)
    if not steps:
        return None
    return PlainPopulationNet(steps, dict(stacked), size)


def has_plain_form(model: nn.Module) -> bool:
    """Whether every leaf of ``model`` has a plain population form (:func:`plain_population_net` builds a network;
    the one-time check against the population's forward still decides whether it is used).

    Args:
        model: one model of the architecture.

    Returns:
        bool.
    """
    return plain_population_net(model, {}, 1) is not None


class _SharedCall(nn.Module):
    """Calls :meth:`Population.forward_shared` (for :func:`functional_call`, which calls ``forward``)."""

    def __init__(self, pop: Population) -> None:
        super().__init__()
        self.pop = pop

    def forward(self, x: Tensor) -> Tensor:
        return self.pop.forward_shared(x)


def hessian_forward(pop: Population, x: Tensor, layers: str = "auto") -> tuple[Callable[..., Tensor], str]:
    """The forward a population Hessian differentiates twice: ``f(tensors, x [B, *in]) -> [B, N, K]``.

    ``tensors`` are stacked parameters ``{"net." + name: [N, *shape]}``. ``"plain"`` is :class:`PlainPopulationNet`
    (checked once against the population's forward on two samples of ``x``); ``"population"`` the trainer's layers
    through :meth:`Population.forward_shared` (the first layer dense on the shared batch); ``"auto"`` the plain
    network where the architecture has one and it agrees, else the population's layers.

    Args:
        pop: an eval-mode :class:`~zooscape.train.Population` (its parameters and buffers are read, not copied).
        x: inputs ``[B, *in]`` (two samples are used for the check).
        layers: ``"auto"``, ``"plain"`` or ``"population"``.

    Returns:
        ``(forward, chosen)`` with ``chosen`` ``"plain"`` or ``"population"``.
    """
    from torch.func import functional_call

    if layers not in HESSIAN_LAYERS:
        raise ValueError(f"layers must be one of {HESSIAN_LAYERS}, got {layers!r}")
    if layers != "population":
        stacked = {**dict(pop.net.named_parameters()), **dict(pop.net.named_buffers())}
        plain = plain_population_net(pop.template, {k: v.detach() for k, v in stacked.items()}, pop.size)
        ok = False
        if plain is not None:
            try:
                with torch.no_grad(), _flags.override(native_kernels=False):
                    ok = _outputs_agree(plain({}, x[:2]), pop.forward_shared(x[:2]))
            except (RuntimeError, ValueError, KeyError, IndexError):
                ok = False
        if ok:
            return plain, "plain"
        if layers == "plain":
            raise ValueError(f"{pop.template_class.__name__} has no plain population network for the Hessian "
                             "(a leaf without a plain form, or a forward that is not its leaves in order)")
    call = _SharedCall(pop)

    def forward(tensors: dict[str, Tensor], xb: Tensor) -> Tensor:
        return functional_call(call, {"pop." + k: v for k, v in tensors.items()}, (xb,), strict=False)
    return forward, "population"
