"""Per-sample output Gram matrices ``J J^T`` of a population by per-layer factorisation (no ``P``-sized Jacobian).

A model's per-sample gradient along an output direction ``u`` (``[K]``) is ``J^T u``. For a layer ``z = W a + b``
its weight part is ``delta a^T`` summed over the layer's positions ``t`` (a Linear has one, a Conv2d one per output
pixel of its unfolded input), where ``delta = dz`` for that direction. So the inner product of the gradients of two
directions ``u``, ``v`` is a sum over layers of small terms (Goodfellow, 2015; the "ghost norm" of Li et al., 2022,
and BackPACK's ``BatchGrad``/``BatchL2``, Dangel, Kunstner and Hennig, 2020)::

    <g_u, g_v>_layer = sum_{t,s} (a_t . a_s + 1{bias}) (delta_u,t . delta_v,s)            (ghost form)
                     = <delta_u^T A, delta_v^T A>                                        (per-sample gradients)

whichever is cheaper (a Linear on one position: ``(a.a + 1)(delta_u . delta_v)``; a convolution with many output
pixels: the small per-sample weight gradients ``[C_out, C_in*k*k]``). An eval-mode BatchNorm is an affine map per
channel, and GroupNorm and LayerNorm are per-sample normalisations followed by one: their per-sample gradients are
``sum_t delta_t * xhat_t`` and ``sum_t delta_t``.

Every ``delta`` comes from backpropagating the M directions through the stacked population (samples and models are
independent in eval mode, so a batched backward gives every sample's and model's own), with no parameter gradient
formed: one vmapped backward for Linear-only networks, one backward per direction on channels-last tensors for
convolutional ones (vmap runs convolution and pooling backward direction by direction, and oneDNN's grouped
convolution backward is ~2.7x faster on channels-last).

:func:`factor_layers` says whether a population is covered (Linear, ungrouped Conv2d with numeric padding,
BatchNorm with running statistics, GroupNorm, LayerNorm; every differentiated parameter in one of them, each layer
called once); :func:`~zooscape.landscape.population_fisher.population_fisher_trace_estimate` falls back to the
Jacobian path otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zooscape.train.layers import (
    PopBatchNorm,
    PopConv2d,
    PopGroupNorm,
    PopLayerNorm,
    PopLinear,
    to_channel_layout,
)
from zooscape.train.population import Population

__all__ = ["FACTOR_ELEMENTS", "FactorGrams", "NotFactorable", "factor_layers"]

#: Entries of output gradients (M directions x every layer's output) and of the convolutions' per-sample weight
#: gradients (or ghost products) held at once by :class:`FactorGrams` (64 MiB in float32); the batch is cut into
#: sample chunks to stay below it.
FACTOR_ELEMENTS = 1 << 24


class NotFactorable(RuntimeError):
    """The factorisation does not apply to this population (the caller falls back to the Jacobian path)."""


def factor_layers(pop: Population, names: Sequence[str]) -> list[tuple[str, nn.Module]] | None:
    """The population's parameter layers if the factorisation covers them all, else ``None``.

    Covered: :class:`~zooscape.train.layers.PopLinear`, :class:`~zooscape.train.layers.PopConv2d` (groups 1,
    numeric padding, the channel layout), :class:`~zooscape.train.layers.PopBatchNorm` in eval mode with running
    statistics, :class:`~zooscape.train.layers.PopGroupNorm` and :class:`~zooscape.train.layers.PopLayerNorm` --
    exactly those types (a subclass may compute its weight otherwise) -- and ``names`` (the differentiated
    parameters) must be every parameter of those layers. A BatchNorm normalising with batch statistics (training
    mode or no running statistics) mixes the samples, so it is not covered even without parameters.

    Args:
        pop: an eval-mode population.
        names: differentiated parameter names (relative to ``pop.net``).

    Returns:
        ``[(module path, module), ...]`` in module order, or ``None``.
    """
    found: list[tuple[str, nn.Module]] = []
    covered: set[str] = set()
    for path, m in pop.net.named_modules():
        if isinstance(m, PopBatchNorm) and (m.training or not m.track_running_stats):
            return None  # batch statistics mix the samples: the per-sample (vmapped) path differs
        own = [n for n, _ in m.named_parameters(recurse=False)]
        if not own:
            continue
        if type(m) not in (PopLinear, PopConv2d, PopBatchNorm, PopGroupNorm, PopLayerNorm):
            return None
        if type(m) is PopConv2d and (m.groups != 1 or not isinstance(m.padding, tuple)
                                     or getattr(m, "layout", "channel") != "channel"):
            return None
        found.append((path, m))
        covered.update(f"{path}.{n}" if path else n for n in own)
    return found if covered == set(names) else None


def _ghost_is_cheaper(t: int, d_in: int, d_out: int, m: int) -> bool:
    """Whether the ghost form (``T x T`` input and output-gradient products) of a layer with T positions takes fewer
    multiply-adds than forming its M per-sample weight gradients ``[D_out, D_in]``."""
    return t * t * d_in + m * m * t * t * d_out < m * d_out * t * d_in + m * m * d_out * d_in


def _form_entries(t: int, d_in: int, d_out: int, m: int) -> int:
    """Entries per sample and model that the cheaper form of :func:`_ghost_is_cheaper` holds at once."""
    return m * m * t * t + t * t if _ghost_is_cheaper(t, d_in, d_out, m) else m * d_out * d_in


def _weight_gram(a: Tensor, d: Tensor, bias: bool, form: str | None = None) -> Tensor:
    """Inner products of the per-sample gradients of a layer ``z_t = W a_t (+ b)`` along M directions: weight part
    ``sum_t d[:, m, :, t] a[:, t]^T`` and bias part ``sum_t d[:, m, :, t]``.

    Args:
        a: layer inputs ``[B, T, D_in]``.
        d: output gradients ``[B, M, D_out, T]``.
        bias: whether the layer has a bias.
        form: ``"ghost"``, ``"dense"`` or ``None`` (default: whichever takes fewer multiply-adds).

    Returns:
        ``[B, M, M]``.
    """
    bsz, m, d_out, t = d.shape
    d_in = a.shape[2]
    if t == 1 and form is None:
        aa = (a[:, 0] * a[:, 0]).sum(1)
        if bias:
            aa = aa + 1.0
        dd = d[..., 0]
        return aa[:, None, None] * (dd @ dd.transpose(1, 2))
    if form == "ghost" or (form is None and _ghost_is_cheaper(t, d_in, d_out, m)):
        aa = a @ a.transpose(1, 2)  # [B, T, T]
        if bias:
            aa = aa + 1.0
        dd = d.transpose(2, 3).reshape(bsz, m * t, d_out)
        dd = (dd @ dd.transpose(1, 2)).view(bsz, m, t, m, t)
        return torch.einsum("bmtqs,bts->bmq", dd, aa)
    dd = d.reshape(bsz, m * d_out, t)
    g = (dd @ a).view(bsz, m, d_out * d_in)  # per-sample weight gradients
    gram = g @ g.transpose(1, 2)
    if bias:
        gb = dd.sum(2).view(bsz, m, d_out)
        gram = gram + gb @ gb.transpose(1, 2)
    return gram


class FactorGrams:
    """Per-sample Gram matrices of a population's parameter gradients along output directions.

    For inputs ``x`` ``[b, *in]`` (shared by the N models) and M output directions ``u`` ``[M, b, N, K]``,
    :meth:`__call__` returns each sample's and model's ``[M, M]`` matrix ``<J^T u_i, J^T u_j>``
    (``J`` the ``[K, P]`` Jacobian of that sample's outputs for that model's parameters): with the identity
    directions the output Gram matrix ``J J^T``, with label draws' output gradients the squared gradient norms
    on its diagonal. See the module docstring for the per-layer forms.

    Args:
        pop: an eval-mode population with plain layers (see :func:`zooscape.landscape.population._build`).
        layers: :func:`factor_layers` of ``pop``.
        budget: most entries of output gradients and per-sample weight gradients (or ghost products) held at once
            (default :data:`FACTOR_ELEMENTS`).

    References:
        Goodfellow, 2015 (efficient per-example gradient computations); Dangel, Kunstner and Hennig, 2020
        (BackPACK); Li et al., 2022 (ghost clipping).
    """

    def __init__(self, pop: Population, layers: list[tuple[str, nn.Module]], budget: int = FACTOR_ELEMENTS):
        self.pop, self.layers, self.budget = pop, layers, int(budget)
        self._per_sample: int | None = None  # output-gradient entries per sample and direction
        self._shapes: list[tuple[int, int, int]] = []  # (positions, inputs, outputs) of the convolutions
        convolutional = any(isinstance(m, PopConv2d) for _, m in layers)
        # convolutions: channels-last tensors (oneDNN's grouped convolution backward ~2.7x faster, as in training)
        # and one backward per direction; Linear-only networks: one vmapped backward
        self.channels_last = convolutional and pop.size >= 2
        self.batched = not convolutional
        self._k = 0

    def _forward(self, x: Tensor) -> tuple[Tensor, list[tuple[nn.Module, Tensor, Tensor, int, int]]]:
        """Outputs ``[b, N, K]`` with their graph, and each layer's (module, input, output, versions)."""
        seen: list[tuple[nn.Module, Tensor, Tensor, int, int]] = []

        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            seen.append((module, inputs[0], output, inputs[0]._version, output._version))

        keep = self.pop.channels_last
        handles = [m.register_forward_hook(hook) for _, m in self.layers]
        try:
            xr = x.detach().requires_grad_(True)  # the graph reaches every layer's output (no parameter needs grad)
            xx = xr.unsqueeze(1).expand(x.shape[0], self.pop.size, *x.shape[1:])
            self.pop.channels_last = self.channels_last
            with torch.enable_grad():
                out = self.pop(xx)
        finally:
            self.pop.channels_last = keep
            for h in handles:
                h.remove()
        order = [id(m) for m, *_ in seen]
        if sorted(order) != sorted(id(m) for _, m in self.layers) or any(
                a._version != va or z._version != vz for _, a, z, va, vz in seen):
            raise NotFactorable("a parameter layer ran other than once, or its input/output was modified in place")
        return out, seen

    def num_outputs(self, x: Tensor) -> int:
        """K, from one forward of ``x[:1]`` that also checks the layers run as :func:`factor_layers` assumed
        (raises :class:`NotFactorable` otherwise)."""
        if self._per_sample is None:  # output entries of one sample (every layer, all N models), and K
            with torch.no_grad():
                out, seen = self._forward(x[:1])
            self._per_sample = sum(z.numel() for _, _, z, _, _ in seen) + out.numel()
            self._shapes = [(z.shape[-2] * z.shape[-1], mod.weight[0, 0].numel(), mod.weight.shape[1])
                            for mod, _, z, _, _ in seen if isinstance(mod, PopConv2d)]
            self._k = int(out.shape[-1])
        return self._k

    def __call__(self, x: Tensor, directions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(outputs [b, N, K], grams [b, N, M, M])``; ``directions`` ``[M, b, N, K]`` (default: the identity,
        ``M = K``)."""
        b, k = x.shape[0], self.num_outputs(x)
        m = directions.shape[0] if directions is not None else k
        per_sample = m * (self._per_sample or 1) + self.pop.size * sum(_form_entries(*sh, m) for sh in self._shapes)
        step = max(1, self.budget // per_sample)
        outs, grams = [], []
        for i in range(0, b, step):
            u = directions[:, i:i + step] if directions is not None else None
            out, gram = self._chunk(x[i:i + step], u)
            outs.append(out)
            grams.append(gram)
        return torch.cat(outs), torch.cat(grams)

    def _chunk(self, x: Tensor, u: Tensor | None) -> tuple[Tensor, Tensor]:
        b, n = x.shape[0], self.pop.size
        out, seen = self._forward(x)
        k = out.shape[-1]
        if u is None:
            u = torch.eye(k, dtype=out.dtype, device=out.device)[:, None, None, :].expand(k, b, n, k)
        m = u.shape[0]
        zs = [z for _, _, z, _, _ in seen]
        u = u.to(out.dtype)
        if self.batched:  # one vmapped backward of the M directions (fast for Linear layers)
            deltas = list(torch.autograd.grad(out, zs, grad_outputs=u, is_grads_batched=True, allow_unused=True))
        else:  # M plain backward passes: vmap runs convolution and pooling backward per direction (slower)
            per = [torch.autograd.grad(out, zs, grad_outputs=u[i], retain_graph=i < m - 1, allow_unused=True)
                   for i in range(m)]
            deltas = [None if per[0][j] is None else [p[j] for p in per] for j in range(len(zs))]
            del per
        gram = out.new_zeros(n * b, m, m)
        for i, ((module, a, _, _, _), dz) in enumerate(zip(seen, deltas)):
            if dz is None:
                continue
            if isinstance(module, PopConv2d):
                gram += _conv_gram(module, a.detach(), list(dz), n, b, shared=i == 0 and _is_shared(a, n))
            else:
                gram += _layer_gram(module, a.detach(), dz if isinstance(dz, Tensor) else torch.stack(dz), n, b)
        return out.detach(), gram.view(n, b, m, m).transpose(0, 1)


def _is_shared(a: Tensor, n: int) -> bool:
    """Whether the channel-layout input ``a`` ``[b, N*C, ...]`` is the same for every model (the population's
    input, as the first parameter layer sees it)."""
    wide = a.reshape(a.shape[0], n, -1)
    return bool((wide == wide[:, :1]).all())


def _conv_gram(module: PopConv2d, a: Tensor, dz: list[Tensor], n: int, b: int, shared: bool) -> Tensor:
    """A convolution's term of the Gram matrices, ``[N*b, M, M]``, from the per-sample weight gradients
    ``unfold(a) [C_in*k*k, L] @ delta [L, C_out]`` of each model and direction (the ghost form where cheaper).

    Args:
        module: the population convolution (groups 1, channel layout).
        a: its input ``[b, N*C_in, H, W]``.
        dz: M output gradients ``[b, N*C_out, H', W']`` (channels-last memory avoids a copy).
        n: N. b: samples.
        shared: ``a`` is the same for every model: unfold and multiply it once for all N models.
    """
    m = len(dz)
    kh, kw = module.weight.shape[-2:]
    c_out, c_in = module.weight.shape[1], module.weight.shape[2]
    h, w = dz[0].shape[-2:]
    t = h * w
    d_in = c_in * kh * kw
    bias = module.bias is not None
    rows = [g.permute(0, 2, 3, 1).reshape(b, t, n * c_out) for g in dz]  # views for channels-last memory
    src = a[:, :c_in] if shared else a
    cols = F.unfold(src, (kh, kw), module.dilation, module.padding, module.stride)  # [b, (N*)C_in*k*k, L]
    if _ghost_is_cheaper(t, d_in, c_out, m):
        if shared:
            cols = cols.repeat(1, n, 1)
        aa = cols.view(b, n, d_in, t).transpose(0, 1).reshape(n * b, d_in, t).transpose(1, 2)
        d = torch.stack([r.view(b, t, n, c_out) for r in rows], dim=3)  # [b, L, N, M, C_out]
        dd = d.permute(2, 0, 3, 4, 1).reshape(n * b, m, c_out, t)
        return _weight_gram(aa, dd, bias)
    if shared:  # one product per direction for all N models: [b, D, L] @ [b, L, N*C_out]
        g = torch.stack([cols @ r for r in rows], dim=2)  # [b, D, M, N*C_out]
        g = g.view(b, d_in, m, n, c_out).permute(3, 0, 2, 1, 4)
    else:
        cols = cols.view(b, n, d_in, t)
        d = torch.stack([r.view(b, t, n, c_out) for r in rows], dim=3)  # [b, L, N, M, C_out]
        g = torch.stack([cols[:, i] @ d[:, :, i].reshape(b, t, m * c_out) for i in range(n)])  # [N, b, D, M*C]
        g = g.view(n, b, d_in, m, c_out).permute(0, 1, 3, 2, 4)
    g = g.reshape(n * b, m, d_in * c_out)
    gram = g @ g.transpose(1, 2)
    if bias:
        gb = torch.stack([r.sum(1) for r in rows], 1).view(b, m, n, c_out).permute(2, 0, 1, 3).reshape(n * b, m, c_out)
        gram = gram + gb @ gb.transpose(1, 2)
    return gram


def _layer_gram(module: nn.Module, a: Tensor, dz: Tensor, n: int, b: int) -> Tensor:
    """A Linear or normalisation layer's term of the Gram matrices, ``[N*b, M, M]`` (rows model-major), from its input
    ``a`` and the M directions' output gradients ``dz`` ``[M, *z.shape]``."""
    m = dz.shape[0]
    if isinstance(module, PopLinear):
        d_in, d_out = module.in_features, module.out_features
        if getattr(module, "layout", "channel") == "stacked":  # [N*b*T, in]
            aa = a.reshape(n * b, -1, d_in)
            dd = dz.reshape(m, n * b, -1, d_out).permute(1, 0, 3, 2)
        else:  # [b, *T, N*in]
            aa = a.reshape(b, -1, n, d_in).permute(2, 0, 1, 3).reshape(n * b, -1, d_in)
            dd = dz.reshape(m, b, -1, n, d_out).permute(3, 1, 0, 4, 2).reshape(n * b, m, d_out, -1)
        return _weight_gram(aa, dd, module.bias is not None)
    if isinstance(module, PopLayerNorm):
        return _affine_gram(*_layer_norm_factors(module, a, dz, n, b), module.bias is not None)
    # BatchNorm (eval mode: running statistics) and GroupNorm: per channel y = xhat * w + b
    c = module.weight.shape[1]
    if getattr(module, "layout", "channel") == "stacked":  # [N*b, C, *sp]
        a = to_channel_layout(a, n)
        dd = dz.reshape(m, n, b, c, -1).permute(1, 2, 0, 4, 3)
    else:  # [b, N*C, *sp]
        dd = dz.reshape(m, b, n, c, -1).permute(2, 1, 0, 4, 3)
    if isinstance(module, PopGroupNorm):
        xhat = F.group_norm(a, n * module.num_groups, None, None, module.eps)
        xhat = xhat.reshape(b, n, c, -1).permute(1, 0, 3, 2)  # [N, b, T, C]
    else:
        x = a.reshape(b, n, c, -1).permute(1, 0, 3, 2)
        xhat = (x - module.running_mean[:, None, None, :]) * torch.rsqrt(
            module.running_var[:, None, None, :] + module.eps)  # [N, b, T, C]
    return _affine_gram(xhat, dd, True)


def _layer_norm_factors(module: PopLayerNorm, a: Tensor, dz: Tensor, n: int, b: int) -> tuple[Tensor, Tensor]:
    """A LayerNorm's normalised input ``[N, b, T, E]`` and output gradients ``[N, b, M, T, E]`` (E elements of its
    normalised shape, T positions sharing the weight) in each of :class:`PopLayerNorm`'s layouts."""
    m, e = dz.shape[0], module.weight[0].numel()
    if getattr(module, "layout", "channel") == "stacked":  # [N*b, ..., *shape]
        xhat = F.layer_norm(a, module.shape, None, None, module.eps).reshape(n, b, -1, e)
        return xhat, dz.reshape(m, n, b, -1, e).permute(1, 2, 0, 3, 4)
    if len(module.shape) == 1:  # [b, ..., N*F]
        xs = a.reshape(b, -1, n, e)
        xhat = F.layer_norm(xs, module.shape, None, None, module.eps).permute(2, 0, 1, 3)
        return xhat, dz.reshape(m, b, -1, n, e).permute(3, 1, 0, 2, 4)
    xs = a.reshape(b, n, *module.shape)  # [b, N*C, H, W] normalised over (C, H, W)
    xhat = F.layer_norm(xs, module.shape, None, None, module.eps).reshape(b, n, 1, e).transpose(0, 1)
    return xhat, dz.reshape(m, b, n, 1, e).permute(2, 1, 0, 3, 4)


def _affine_gram(xhat: Tensor, dd: Tensor, bias: bool) -> Tensor:
    """Gram term of an elementwise affine map ``y = xhat * w (+ b)`` whose weight is shared over T positions:
    per-sample gradients ``sum_t delta_t * xhat_t`` (and ``sum_t delta_t``). ``xhat`` ``[N, b, T, E]``, ``dd``
    ``[N, b, M, T, E]``; returns ``[N*b, M, M]``."""
    n, b, m = dd.shape[:3]
    g = (dd * xhat[:, :, None]).sum(3)  # [N, b, M, E]
    if bias:
        g = torch.cat([g, dd.sum(3)], dim=3)
    g = g.reshape(n * b, m, -1)
    return g @ g.transpose(1, 2)
