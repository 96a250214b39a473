"""Population ("wide") versions of standard layers.

A population of N models of one architecture runs as one network whose tensors carry the population in the
channel dimension: activations are ``[B, N*C, H, W]`` for convolutional maps and ``[B, N*F]`` for features, where
the block ``[:, n*C:(n+1)*C]`` belongs to model ``n``. Every parameter is stored stacked, with the model axis first
(a Linear weight is ``[N, out, in]``), so model ``n``'s state dict is ``{k: v[n]}``.

Because channels of different models never mix, the gradient of the *sum* of the models' losses gives each model
exactly its own gradient; container code (Sequential, residual blocks, ``torch.flatten(x, 1)``) runs unchanged.
Elementwise modules (activations), pooling and ``Flatten`` need no population version.

This module is one piece on purpose (about 600 lines): :data:`POP_LAYERS` maps every supported leaf
module to its population version, and they share the layout helpers and the ``_PopLayer`` base; split across
modules, the registry would have to import every layer family and each family the base, for no reader's gain.

References:
    The grouped-layer formulation of model ensembles follows "wide" ensembling as in Wen et al., 2020
    (BatchEnsemble) and the independent-ensemble special case of grouped convolutions (Krizhevsky et al., 2012).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _flags, native


def _stack(tensors: list[Tensor]) -> Tensor:
    return torch.stack([t.detach() for t in tensors]).contiguous()


def to_channel_layout(x: Tensor, n: int) -> Tensor:
    """``[N*B, C, ...]`` (stacked layout) -> ``[B, N*C, ...]`` (channel layout)."""
    b = x.shape[0] // n
    return x.reshape(n, b, *x.shape[1:]).transpose(0, 1).reshape(b, n * x.shape[1], *x.shape[2:])


def to_stacked_layout(x: Tensor, n: int) -> Tensor:
    """``[B, N*C, ...]`` (channel layout) -> ``[N*B, C, ...]`` (stacked layout)."""
    b = x.shape[0]
    return x.reshape(b, n, x.shape[1] // n, *x.shape[2:]).transpose(0, 1).reshape(n * b, x.shape[1] // n,
                                                                                 *x.shape[2:])


class SharedInput:
    """Marks the next population layer's input as shared by every model (``[B, ...]`` instead of the population
    layout), set by :meth:`zooscape.train.Population.forward_shared`.

    The first population layer that runs takes the mark: a Linear or (ungrouped) Conv2d then applies all N models'
    weights to the shared input as one dense layer (no N-fold copy of the input; for a first convolution with few
    input channels this is one large GEMM instead of N small ones); any other layer expands the input to the
    population layout and goes on as usual.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.pending = False
        self.layout = "channel"
        self.channels_last = False

    def take(self) -> bool:
        if self.pending:
            self.pending = False
            return True
        return False

    def expand(self, x: Tensor) -> Tensor:
        """``[B, ...]`` shared input -> the population layout (``[B, N*C, ...]`` or ``[N*B, ...]``)."""
        b = x.shape[0]
        if self.layout == "stacked":
            return x.unsqueeze(0).expand(self.n, *x.shape).reshape(self.n * b, *x.shape[1:])
        if x.dim() == 1:
            return x.unsqueeze(1).expand(b, self.n)
        wide = x.unsqueeze(1).expand(b, self.n, *x.shape[1:]).reshape(b, self.n * x.shape[1], *x.shape[2:])
        if wide.dim() == 4 and self.channels_last:
            wide = wide.contiguous(memory_format=torch.channels_last)
        return wide


class _PopLayer(nn.Module):
    """Base of the population layers: holds the population's :class:`SharedInput` marker."""

    shared: SharedInput | None = None

    def _enter(self, x: Tensor) -> Tensor:
        """Expand a shared input if this layer is the first to see it (layers without a dense shared path)."""
        if self.shared is not None and self.shared.take():
            return self.shared.expand(x)
        return x


class PopLinear(_PopLayer):
    """N independent ``nn.Linear`` layers: ``[B, N*in] -> [B, N*out]`` (channel layout) or
    ``[N*B, in] -> [N*B, out]`` (stacked layout, used by networks without convolutions).

    Args:
        layers: the N source layers (same shape).
    """

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.n = len(layers)
        self.in_features = layers[0].in_features
        self.out_features = layers[0].out_features
        self.weight = nn.Parameter(_stack([m.weight for m in layers]))  # [N, out, in]
        self.bias = nn.Parameter(_stack([m.bias for m in layers])) if layers[0].bias is not None else None
        self.layout = "channel"

    def effective_weight(self) -> Tensor:
        """The weight ``[N, out, in]`` this forward pass uses: ``self.weight`` (a hook for subclasses whose
        weight is computed, e.g. sampled or masked)."""
        return self.weight

    # the manual MLP step's layer protocol (zooscape.train.manual_mlp): a layer whose forward is x W^T + b for a
    # weight W it may compute (sampled, masked) opts in by overriding these three; the step never sees how W is made
    def manual_ok(self) -> bool:
        """Whether the manual MLP step may train this layer (plain :class:`PopLinear` only; subclasses opt in)."""
        return type(self) is PopLinear

    def manual_weight(self) -> Tensor:
        """The weight ``[N, out, in]`` this layer's forward uses now, detached (one call per step, in layer order:
        a sampling subclass draws its noise here, as its forward would)."""
        return self.weight.detach()

    def manual_weight_grad(self, grad_w: Tensor) -> None:
        """Take ``dL/dW`` ``[N, out, in]`` of the weight :meth:`manual_weight` returned and write the gradients of
        this layer's weight parameters into their ``.grad`` (overwritten; may be views into the flat buffer)."""
        _set_grad(self.weight, grad_w)

    def forward(self, x: Tensor) -> Tensor:
        if self.shared is not None and self.shared.take():
            return self._forward_shared(x)
        weight = self.effective_weight()
        if self.layout == "stacked":
            xb = x.view(self.n, -1, self.in_features)
            if self.bias is not None:
                out = torch.baddbmm(self.bias.unsqueeze(1), xb, weight.transpose(1, 2))
            else:
                out = torch.bmm(xb, weight.transpose(1, 2))
            return out.view(-1, self.out_features)
        lead = x.shape[:-1]
        xb = x.reshape(-1, self.n, self.in_features).transpose(0, 1)  # [N, B, in]
        if self.bias is not None:
            out = torch.baddbmm(self.bias.unsqueeze(1), xb, weight.transpose(1, 2))
        else:
            out = torch.bmm(xb, weight.transpose(1, 2))
        return out.transpose(0, 1).reshape(*lead, self.n * self.out_features)

    def _forward_shared(self, x: Tensor) -> Tensor:
        """All N layers on one shared input ``[..., in]``: one dense ``[N*out, in]`` product."""
        w = self.effective_weight().reshape(self.n * self.out_features, self.in_features)
        out = F.linear(x, w, self.bias.reshape(-1) if self.bias is not None else None)  # [..., N*out]
        if self.layout == "stacked":
            b = out.shape[0]
            return out.view(b, self.n, self.out_features).transpose(0, 1).reshape(self.n * b, self.out_features)
        return out


def _set_grad(param: nn.Parameter, grad: Tensor) -> None:
    """Write ``grad`` into ``param.grad`` in place (it may be a view into the flat buffer), or set it."""
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.copy_(grad)


def _rows_times(src: Tensor, wt: Tensor, b: Tensor | None) -> Tensor:
    """``src @ wt + b`` as one GEMM for ``src`` ``[..., K]`` (any strides), ``wt`` ``[K, M]``: the rows are copied
    once into a contiguous buffer with the bias as an extra column of ones (``addmm`` would first copy the bias
    into the whole output). Returns ``[prod(...), M]``."""
    k = src.shape[-1]
    rows = src.new_empty(*src.shape[:-1], k + (b is not None))
    rows[..., :k] = src
    if b is not None:
        rows[..., k] = 1.0
        wt = torch.cat([wt, b.unsqueeze(0)], 0)
    return rows.view(-1, rows.shape[-1]) @ wt


class _SmallGroupedConv(torch.autograd.Function):
    """Grouped stride-1 convolution whose input gradient is computed as a forward convolution.

    ``grad_input = conv2d(pad(grad_output, k - 1 - p), W')`` with ``W'`` the kernel flipped in space and with
    input/output channels swapped within each group. Weight and bias gradients come from
    ``aten.convolution_backward`` as usual. Every operation used is differentiable, so double backward works.

    Used by :mod:`zooscape.sparsify.ard`'s population layers (:meth:`PopConv2d._input_grad_as_forward` says
    when); :class:`PopConv2d`'s own forward no longer takes it: with channels-last inputs it measured 0.38-0.82x
    of PyTorch's backward on the population shapes of ``bench/conv_routes.py``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, padding: tuple[int, int], groups: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, w)
        ctx.padding, ctx.groups, ctx.has_bias = padding, groups, b is not None
        return F.conv2d(x, w, b, 1, padding, 1, groups)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, w = ctx.saved_tensors
        gx = gw = gb = None
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if need_w or need_b:
            _, gw, gb = torch.ops.aten.convolution_backward(
                grad, x, w, [w.shape[0]] if ctx.has_bias else None, (1, 1), ctx.padding, (1, 1), False, (0, 0),
                ctx.groups, (False, need_w, need_b and ctx.has_bias))
        if need_x:
            g = ctx.groups
            o, c, kh, kw = w.shape[0] // g, w.shape[1], w.shape[2], w.shape[3]
            wt = w.view(g, o, c, kh, kw).transpose(1, 2).flip(-1, -2).reshape(g * c, o, kh, kw)
            ph, pw = kh - 1 - ctx.padding[0], kw - 1 - ctx.padding[1]
            gx = F.conv2d(F.pad(grad, (pw, pw, ph, ph)), wt, None, 1, 0, 1, g)
        return gx, gw, gb, None, None


class PopConv2d(_PopLayer):
    """N independent ``nn.Conv2d`` layers on ``[B, N*C_in, H, W]``.

    One grouped convolution with ``N*groups`` groups computes the N convolutions; the population feeds it
    channels-last (NHWC) tensors, on which oneDNN's grouped convolutions and pooling run several times faster than
    on NCHW (measured in ``bench/RESULTS.md``). Two faster routes where they apply (each measured against the
    grouped convolution in ``bench/conv_routes.py``; routes that did not pay were removed, see
    ``docs/architecture.md``):

    - a convolution followed by a 2x2 max-pool runs through the native conv + pool kernels
      (:mod:`zooscape.train.native`, switch ``native_kernels``), in training and evaluation, shared input included;
    - on a shared batch (evaluation, channels-last), the first convolution of all N models is one im2col GEMM
      (pooled in the same pass when a 2x2 max-pool follows and no gradient is needed).

    Args:
        layers: the N source convolutions (same configuration).
        strategy: ``"auto"`` or ``"grouped"`` (the same: kept for callers of the former API; the opt-in
            ``"rowconv"`` route was removed).
    """

    def __init__(self, layers: list[nn.Conv2d], strategy: str = "auto"):
        super().__init__()
        m = layers[0]
        if m.padding_mode != "zeros":
            raise ValueError(f"population training supports padding_mode='zeros' only, got {m.padding_mode!r}")
        if strategy not in ("auto", "grouped"):
            raise ValueError(f"unknown convolution strategy {strategy!r} (the 'rowconv' route was removed; use "
                             "'auto')")
        self.n = len(layers)
        self.stride, self.padding, self.dilation = m.stride, m.padding, m.dilation
        self.groups = m.groups
        self.weight = nn.Parameter(_stack([c.weight for c in layers]))  # [N, Cout, Cin/g, k, k]
        self.bias = nn.Parameter(_stack([c.bias for c in layers])) if m.bias is not None else None
        self.fused_pool: FusedPool | None = None  # set by Population when a 2x2 max-pool follows
        self.fused_relu: FusedPool | None = None  # ... and when a ReLU follows that pool
        self.native_allowed = True  # cleared by Population when its check of the native path fails

    def effective_weight(self) -> Tensor:
        """The weight ``[N, C_out, C_in/groups, k, k]`` this forward pass uses: ``self.weight`` (a hook for
        subclasses whose weight is computed, e.g. sampled or masked; it must return the same tensor throughout
        one forward pass)."""
        return self.weight

    def _input_grad_as_forward(self, x: Tensor, w: Tensor) -> bool:
        """Whether :class:`_SmallGroupedConv` applies (few channels per model, stride 1, channels-last CPU input
        that needs a gradient); asked by subclasses that measured it faster for their layers."""
        if not (self.training and torch.is_grad_enabled() and x.requires_grad and x.device.type == "cpu"):
            return False
        kh, kw = w.shape[-2:]
        return (self.stride == (1, 1) and self.dilation == (1, 1)
                and isinstance(self.padding, tuple) and self.padding[0] <= kh - 1 and self.padding[1] <= kw - 1
                and w.shape[1] <= 16 and w.shape[0] // (self.groups * self.n) <= 16 and x.dim() == 4
                and x.is_contiguous(memory_format=torch.channels_last))

    def native_pool_ok(self) -> bool:
        """Whether this layer's configuration suits the native conv + 2x2 max-pool kernels
        (:mod:`zooscape.train.native`): a fused pool follows, groups 1, stride 1, no padding or dilation, square
        kernel, and the population's check of the native path passed (or has not run yet). The input decides the
        rest (see ``_native_pooled``)."""
        w = self.weight
        return (self.fused_pool is not None and _flags.current().native_kernels and self.native_allowed
                and self.groups == 1 and self.stride == (1, 1) and self.dilation == (1, 1) and self.padding == (0, 0)
                and w.shape[-1] == w.shape[-2] and getattr(self, "layout", "channel") == "channel")

    def _native_pooled(self, x: Tensor, shared: bool) -> Tensor | None:
        """Convolution + the following 2x2 max-pool through the native kernels, or ``None`` if they do not apply
        (not float32 on the CPU, kernels unavailable, an input that needs a gradient but is not channels-last
        with a multiple of 8 channels per model)."""
        weight = self.effective_weight()
        if not self.native_pool_ok() or not native.supports(x, weight):
            return None
        if x.requires_grad and torch.is_grad_enabled() and (shared or not native.supports_input_grad(x, weight)):
            return None
        relu = self.fused_relu is not None
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (
                self.bias is not None and self.bias.requires_grad)):
            out = native.ConvPool2x2.apply(x, weight, self.bias, shared, relu)
        else:
            out, _ = native.conv_pool_forward(x, weight, self.bias, shared=shared, indices=False, relu=relu)
        self.fused_pool.pending = True  # type: ignore[union-attr]
        if relu:
            self.fused_relu.pending = True  # type: ignore[union-attr]
        return out

    def forward(self, x: Tensor) -> Tensor:
        if self.shared is not None and self.shared.take():
            if self.groups == 1:
                out = self._native_pooled(x, shared=True)
                if out is None and self._gemm_shared_ok(x):
                    out = self._forward_shared(x)
                if out is not None:
                    return out
            x = self.shared.expand(x)
        if getattr(self, "layout", "channel") == "stacked":
            return to_stacked_layout(self._forward(to_channel_layout(x, self.n)), self.n)
        out = self._native_pooled(x, shared=False)
        return out if out is not None else self._forward(x)

    def _forward_shared_pooled(self, cols: Tensor, wt: Tensor, b: Tensor | None, h_out: int, w_out: int) -> Tensor:
        """Convolution + 2x2 max-pool on a shared batch: the im2col rows are ordered by position in the pool window,
        one GEMM gives the four window positions' outputs, and three elementwise maxima pool them
        (exact: max is exact and propagates NaN as ``max_pool2d`` does)."""
        bsz, ckk = cols.shape[0], cols.shape[1]
        h2, w2 = h_out // 2, w_out // 2
        m = bsz * h2 * w2
        out = _rows_times(cols.view(bsz, ckk, h2, 2, w2, 2).permute(3, 5, 0, 2, 4, 1), wt, b).view(4, m, -1)
        pooled = torch.maximum(out[0], out[1])
        torch.maximum(pooled, out[2], out=pooled)
        torch.maximum(pooled, out[3], out=pooled)
        self.fused_pool.pending = True  # type: ignore[union-attr]
        out = pooled.view(bsz, h2, w2, -1).permute(0, 3, 1, 2)
        if getattr(self, "layout", "channel") == "stacked":
            return to_stacked_layout(out, self.n)
        return out

    def _gemm_shared_ok(self, x: Tensor) -> bool:
        """Whether the im2col-GEMM route applies to a shared batch ``x``: channels-last population tensors (its
        output's memory order), a 4-d input and numeric padding."""
        return (self.shared is not None and self.shared.channels_last and x.dim() == 4
                and isinstance(self.padding, tuple))

    def _forward_shared(self, x: Tensor) -> Tensor:
        """All N convolutions on one shared input ``[B, C, H, W]`` as one GEMM, giving the population layout
        ``[B, N*C_out, H', W']`` (channels-last memory) directly: im2col of the shared batch (small: few input
        channels) times ``[C*k*k, N*C_out]``."""
        w = self.effective_weight().reshape(-1, *self.weight.shape[2:])
        b = self.bias.reshape(-1) if self.bias is not None else None
        bsz = x.shape[0]
        kh, kw = self.weight.shape[-2:]
        cols = F.unfold(x, (kh, kw), self.dilation, self.padding, self.stride)  # [B, C*k*k, L]
        h_out = (x.shape[2] + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        w_out = cols.shape[-1] // h_out
        wt = w.reshape(w.shape[0], -1).t()  # [C*k*k, N*C_out]
        if self.fused_pool is not None and h_out % 2 == 0 and w_out % 2 == 0 and not torch.is_grad_enabled():
            # (without autograd only: maximum's gradient splits ties, max_pool2d's picks one input)
            return self._forward_shared_pooled(cols, wt, b, h_out, w_out)
        out = _rows_times(cols.transpose(1, 2), wt, b).view(bsz, h_out, w_out, -1).permute(0, 3, 1, 2)
        if getattr(self, "layout", "channel") == "stacked":
            return to_stacked_layout(out, self.n)
        return out

    def _forward(self, x: Tensor) -> Tensor:
        w = self.effective_weight().reshape(-1, *self.weight.shape[2:])
        b = self.bias.reshape(-1) if self.bias is not None else None
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups * self.n)


class PopBatchNorm(_PopLayer):
    """N independent BatchNorm layers (1d or 2d): per-channel statistics are per model and channel.

    Args:
        layers: the N source ``nn.BatchNorm1d``/``nn.BatchNorm2d`` layers.
    """

    def __init__(self, layers: list[nn.modules.batchnorm._BatchNorm]):
        super().__init__()
        m = layers[0]
        self.n = len(layers)
        self.eps, self.momentum = m.eps, m.momentum
        self.affine, self.track_running_stats = m.affine, m.track_running_stats
        if m.affine:
            self.weight = nn.Parameter(_stack([b.weight for b in layers]))
            self.bias = nn.Parameter(_stack([b.bias for b in layers]))
        else:
            self.weight = self.bias = None
        if m.track_running_stats:
            self.register_buffer("running_mean", _stack([b.running_mean for b in layers]))
            self.register_buffer("running_var", _stack([b.running_var for b in layers]))
            self.register_buffer("num_batches_tracked", _stack([b.num_batches_tracked for b in layers]))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def reset_running_stats(self) -> None:
        """Every member's running mean to 0, running variance to 1 and batch counter to 0 (as ``_BatchNorm``)."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def forward(self, x: Tensor) -> Tensor:
        x = self._enter(x)
        use_batch = self.training or not self.track_running_stats
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked[0])
        rm = self.running_mean.view(-1) if self.running_mean is not None else None
        rv = self.running_var.view(-1) if self.running_var is not None else None
        w = self.weight.reshape(-1) if self.weight is not None else None
        b = self.bias.reshape(-1) if self.bias is not None else None
        if getattr(self, "layout", "channel") == "stacked":
            y = F.batch_norm(to_channel_layout(x, self.n), rm, rv, w, b, use_batch, momentum, self.eps)
            return to_stacked_layout(y, self.n)
        return F.batch_norm(x, rm, rv, w, b, use_batch, momentum, self.eps)


class PopGroupNorm(_PopLayer):
    """N independent ``nn.GroupNorm`` layers as one GroupNorm with ``N*groups`` groups."""

    def __init__(self, layers: list[nn.GroupNorm]):
        super().__init__()
        m = layers[0]
        self.n, self.num_groups, self.eps = len(layers), m.num_groups, m.eps
        if m.affine:
            self.weight = nn.Parameter(_stack([g.weight for g in layers]))
            self.bias = nn.Parameter(_stack([g.bias for g in layers]))
        else:
            self.weight = self.bias = None

    def forward(self, x: Tensor) -> Tensor:
        x = self._enter(x)
        w = self.weight.reshape(-1) if self.weight is not None else None
        b = self.bias.reshape(-1) if self.bias is not None else None
        if getattr(self, "layout", "channel") == "stacked":
            y = F.group_norm(to_channel_layout(x, self.n), self.n * self.num_groups, w, b, self.eps)
            return to_stacked_layout(y, self.n)
        return F.group_norm(x, self.n * self.num_groups, w, b, self.eps)


class PopLayerNorm(_PopLayer):
    """N independent ``nn.LayerNorm`` layers over the trailing feature dims of ``[B, N*F]`` or ``[B, N*C, ...]``."""

    def __init__(self, layers: list[nn.LayerNorm]):
        super().__init__()
        m = layers[0]
        self.n, self.shape, self.eps = len(layers), tuple(m.normalized_shape), m.eps
        if m.elementwise_affine:
            self.weight = nn.Parameter(_stack([g.weight for g in layers]))
            self.bias = nn.Parameter(_stack([g.bias for g in layers])) if m.bias is not None else None
        else:
            self.weight = self.bias = None

    def forward(self, x: Tensor) -> Tensor:
        x = self._enter(x)
        k = len(self.shape)
        if getattr(self, "layout", "channel") == "stacked":
            y = F.layer_norm(x, self.shape, None, None, self.eps).view(self.n, -1, *self.shape)
            if self.weight is not None:
                y = y * self.weight.unsqueeze(1)
                if self.bias is not None:
                    y = y + self.bias.unsqueeze(1)
            return y.view(x.shape)
        if k == 1:  # features in the last dim: [..., N*F]
            lead = x.shape[:-1]
            xs = x.reshape(*lead, self.n, self.shape[0])
            y = F.layer_norm(xs, self.shape, None, None, self.eps)
            if self.weight is not None:
                y = y * self.weight
                if self.bias is not None:
                    y = y + self.bias
            return y.reshape(*lead, self.n * self.shape[0])
        # normalised over (C, H, W): x is [B, N*C, H, W]
        b = x.shape[0]
        xs = x.reshape(b, self.n, *self.shape)
        y = F.layer_norm(xs, self.shape, None, None, self.eps)
        if self.weight is not None:
            y = y * self.weight
            if self.bias is not None:
                y = y + self.bias
        return y.reshape(x.shape)


class PopDropout(_PopLayer):
    """N independent dropout layers whose masks come from each model's own generator.

    Before each training step the trainer calls :meth:`set_generators` with one ``torch.Generator`` per model, so a
    model's masks do not depend on which population it trains in.
    """

    def __init__(self, layers: list[nn.Dropout]):
        super().__init__()
        self.n, self.p = len(layers), float(layers[0].p)
        self.generators: list[torch.Generator] | None = None

    def set_generators(self, generators: list[torch.Generator] | None) -> None:
        self.generators = generators

    def forward(self, x: Tensor) -> Tensor:
        x = self._enter(x)
        if not self.training or self.p == 0.0:
            return x
        if self.generators is None:
            raise RuntimeError("PopDropout in training mode needs per-model generators (set_generators)")
        if getattr(self, "layout", "channel") == "stacked":
            b, per = x.shape[0] // self.n, x[0].numel()
            masks = torch.stack([torch.rand(b, per, generator=g, device=g.device) for g in self.generators], 0)
        else:
            b, per = x.shape[0], x[0].numel() // self.n
            masks = torch.stack([torch.rand(b, per, generator=g, device=g.device) for g in self.generators], 1)
        keep = (masks >= self.p).to(x.dtype).reshape(x.shape).to(x.device)
        return x * keep / (1.0 - self.p)


class FusedPool(nn.Module):
    """Stands in for a 2x2 ``MaxPool2d`` whose input comes from a :class:`PopConv2d` (or for a ``ReLU`` right
    after that pool).

    When that convolution pools its own output (and applies the ReLU) it sets ``pending`` and this module passes
    its input through; otherwise it is the original module. The convolution pools itself on a shared batch
    (evaluation, see :class:`SharedInput`: the max over the four GEMMs of a pool window, no full-resolution pass
    and no argmax indices; the ReLU then runs as usual) and, with the native kernels
    (:mod:`zooscape.train.native`), in training and evaluation, ReLU included.
    """

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool
        self.pending = False

    def forward(self, x: Tensor) -> Tensor:
        if self.pending:
            self.pending = False
            return x
        return self.pool(x)


def is_pool2x2(m: nn.Module) -> bool:
    """Whether ``m`` is ``MaxPool2d(2)`` with stride 2, no padding/dilation/ceil mode/indices."""
    def pair(v: object) -> tuple:
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    return (type(m) is nn.MaxPool2d and pair(m.kernel_size) == (2, 2) and pair(m.stride or m.kernel_size) == (2, 2)
            and pair(m.padding) == (0, 0) and pair(m.dilation) == (1, 1) and not m.ceil_mode
            and not m.return_indices)


POP_LAYERS = (PopLinear, PopConv2d, PopBatchNorm, PopGroupNorm, PopLayerNorm, PopDropout)

_ELEMENTWISE = (
    nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus, nn.Identity, nn.Flatten,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
    nn.Hardtanh, nn.ReLU6, nn.Mish,
)


_REGISTERED: list[tuple[type[nn.Module], Callable[[list[nn.Module]], nn.Module]]] = []


def register_population_layer(cls: type[nn.Module], factory: Callable[[list[nn.Module]], nn.Module]) -> None:
    """Give leaf modules of type ``cls`` (and its subclasses) a population version: :func:`widen_module` returns
    ``factory(layers)`` for them, checked before the built-in types (so a subclass of ``nn.Linear`` with extra
    parameters can have its own). The factory's module should subclass one of :data:`POP_LAYERS` (the population
    sets ``layout`` and ``shared`` on those) and hold every state-dict entry of ``cls`` stacked on a leading model
    axis. A later registration for the same ``cls`` replaces the earlier one."""
    _REGISTERED[:] = [(c, f) for c, f in _REGISTERED if c is not cls]
    _REGISTERED.insert(0, (cls, factory))


def widen_module(layers: list[nn.Module]) -> nn.Module | None:
    """Return the population version of N corresponding leaf modules, or ``None`` if none is needed.

    Raises:
        TypeError: for a leaf module type that has parameters and no population version.
    """
    m = layers[0]
    for cls, factory in _REGISTERED:
        if isinstance(m, cls):
            return factory(layers)
    if isinstance(m, nn.Linear):
        return PopLinear(layers)
    if isinstance(m, nn.Conv2d):
        return PopConv2d(layers)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return PopBatchNorm(layers)
    if isinstance(m, nn.GroupNorm):
        return PopGroupNorm(layers)
    if isinstance(m, nn.LayerNorm):
        return PopLayerNorm(layers)
    if isinstance(m, nn.Dropout):
        return PopDropout(layers)
    if isinstance(m, _ELEMENTWISE):
        return None
    if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)):
        raise TypeError(
            f"population training does not support layer type {type(m).__name__} (it holds parameters or "
            "buffers); supported: Linear, Conv2d, BatchNorm1d/2d, GroupNorm, LayerNorm, Dropout and parameter-free"
            " modules"
        )
    return None
