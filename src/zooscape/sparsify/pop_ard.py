"""Population versions of the ARD layers: N variational-dropout twins trained as one network.

:class:`PopARDLinear` and :class:`PopARDConv2d` are registered with the population trainer
(:func:`zooscape.train.layers.register_population_layer`), so :func:`zooscape.train.train_population` trains N
twins at once. They draw their noise from each model's own dropout stream (a twin's run does not depend on its
population) and add each model's KL penalty to its loss in the backward pass (:func:`penalized`; for the
``"weight"`` estimator inside :class:`_WeightSample`'s backward). Evaluation and the ``"weight"`` estimator run the
population layers' own forward (native conv + pool kernels included) on the sparse or sampled weight through
their ``effective_weight()`` hook.

References:
    Molchanov, Ashukha & Vetrov (2017); Kingma, Salimans & Welling (2015).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zooscape.train.layers import (
    PopConv2d,
    PopDropout,
    PopLinear,
    _set_grad,
    _SmallGroupedConv,
    register_population_layer,
)

from . import _native_ard
from .ard import (
    _EPS,
    K1,
    K2,
    K3,
    LOG_ALPHA_CLIP,
    ARDControl,
    ARDConv2d,
    ARDLinear,
    kl_approx,
    log_alpha,
    sample_preactivation,
)
from .counter_noise import TAG_LOCAL, TAG_WEIGHT, CounterNoise, CounterStream, local_noise

__all__ = ["KEEP_EPS", "KL_FORWARD", "LOCAL_NATIVE", "MANUAL_PASS", "PopARDConv2d", "PopARDLinear", "penalized",
           "weight_sample", "weight_sample_grads"]


#: Whether the native sample with inline noise writes ``eps`` for the backward (``True``) or the backward generates
#: it again (``False``); measured in ``bench/ard_kernel.py`` (see ``bench/RESULTS.md``).
KEEP_EPS = True

#: Whether the native sample with inline noise also evaluates the KL term's gradient when the penalty's scale is
#: known at the forward (``"kl"`` format: the backward then needs no ``exp``); measured in ``bench/RESULTS.md``
#: (branch ``ardfast``).
KL_FORWARD = True

#: Whether the manual MLP step runs the ``"kl"`` pass through :class:`_native_ard.KLPass` (arguments checked once
#: while the tensors stay the same) instead of :func:`weight_sample` each step; same kernels, same numbers.
MANUAL_PASS = True


def weight_sample(w: Tensor, log_sigma2: Tensor, eps: Tensor | CounterNoise, scale: float | None = None,
                  buffers: list | None = None) -> tuple[Tensor, tuple]:
    """The ``"weight"`` estimator's sample ``w + exp(la/2) |w| eps`` (all ``[N, ...]``), with
    ``la = clip(log sigma^2 - log(w^2 + 1e-8), -10, 10)``, without autograd; returns the sample and what
    :func:`weight_sample_grads` needs.

    ``eps`` is a noise tensor ``[N, ...]`` or a :class:`~zooscape.sparsify.counter_noise.CounterNoise` (what
    :meth:`_PopARDMixin._weight_noise` returns): then the native kernel generates it inline (one pass, the noise
    never stored before the sample), else it is materialised (:meth:`CounterNoise.tensor`, same numbers to float32
    rounding) and the tensor path runs. Native (one pass) when :func:`_native_ard.usable`, else PyTorch.

    ``scale``: the KL penalty's weight the backward will use, when known now. With inline noise (and
    :data:`KL_FORWARD`) the native forward then also evaluates the KL term's gradient, so the backward is one pass
    without transcendental functions (:func:`_native_ard.sample_forward_kl`); :func:`weight_sample_grads` must
    then be given the same ``scale``. ``buffers``: a list the native ``"kl"`` pass keeps its three outputs in and
    writes into again on the next call (no allocation per step; only where nothing holds the previous sample or its
    saved tensors any more, as in the manual MLP step)."""
    if isinstance(eps, CounterNoise):
        if _native_ard.usable(w, log_sigma2) and eps.keys.shape == (w.shape[0], 2):
            if scale is not None and KL_FORWARD and KEEP_EPS:
                out, code, noise = _native_ard.sample_forward_kl(w, log_sigma2, eps.keys, eps.step, eps.tag, scale,
                                                                 tuple(buffers) if buffers else None)
                if buffers is not None:
                    buffers[:] = (out, code, noise)
                return out, ("kl", w, code, noise, float(scale))
            out, la_coded, kept = _native_ard.sample_forward_rng(w, log_sigma2, eps.keys, eps.step, eps.tag,
                                                                 keep_eps=KEEP_EPS)
            if kept is not None:
                return out, ("native", w, la_coded, kept)
            return out, ("rng", w, la_coded, eps)
        eps = eps.tensor(tuple(w.shape[1:]), w.dtype, w.device)
    if _native_ard.usable(w, log_sigma2, eps):  # one pass instead of about eleven
        out, la_coded = _native_ard.sample_forward(w, log_sigma2, eps)
        return out, ("native", w, la_coded, eps)
    t = (w * w).add_(_EPS)
    u = log_sigma2 - torch.log(t)
    la = u.clamp(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)
    inside = la == u  # where the clip passes the gradient (torch.clamp's rule: bounds included)
    noise = torch.exp(0.5 * la).mul_(eps)  # exp(la/2) eps
    return torch.addcmul(w, w.abs(), noise), ("torch", w, t, la, noise, inside)


def weight_sample_grads(saved: tuple, grad: Tensor, scale: float,
                        out: tuple[Tensor | None, Tensor | None] = (None, None)) -> tuple[Tensor, Tensor]:
    """Gradients ``(d/dw, d/dlog_sigma2)`` of ``sum(grad * sample) + scale * sum(KL(la))`` for a sample of
    :func:`weight_sample` (``saved``: its second result); no gradient passes the clip of ``la``. ``out``: tensors
    of the weight's shape the native ``"kl"`` pass may write the two gradients into (it returns them then; other
    paths return new tensors)."""
    if saved[0] == "kl":  # no transcendental function left for the backward
        _, w, code, noise, baked = saved
        if float(scale) != baked:
            raise ValueError(f"the sample was drawn for KL scale {baked}, its gradients asked for scale {scale}")
        return _native_ard.sample_backward_kl(grad, w, code, noise, *out)
    if saved[0] == "native":  # one native pass instead of about eighteen
        _, w, la_coded, eps = saved
        return _native_ard.sample_backward(grad, w, la_coded, eps, scale)
    if saved[0] == "rng":  # the same, generating eps again
        _, w, la_coded, noise = saved
        return _native_ard.sample_backward_rng(grad, w, la_coded, noise.keys, noise.step, noise.tag, scale)
    _, w, t, la, noise, inside = saved
    q = grad * noise
    g_la = (q * w.abs()).mul_(0.5)
    if scale != 0.0:  # d/d la of KL = -k1 k3 s (1 - s) - 0.5 sigmoid(-la), s = sigmoid(k2 + k3 la)
        sig = torch.sigmoid(la * K3 + K2)
        g_la.add_(sig - sig * sig, alpha=-K1 * K3 * scale)
        g_la.add_(torch.sigmoid(-la), alpha=-0.5 * scale)
    g_ls = g_la.mul_(inside)
    g_w = torch.addcmul(grad, q, torch.sign(w)).addcmul_(g_ls, w / t, value=-2.0)
    return g_w, g_ls


class _WeightSample(torch.autograd.Function):
    """The ``"weight"`` estimator of a population layer in one function (:func:`weight_sample`); its backward also
    adds ``scale * dKL/d la`` (the gradient of ``scale * sum KL``, the penalty each model's loss carries), so no
    separate KL graph is built. Written out because the autograd graph of these elementwise steps (forward and
    backward of log alpha, the sample and the KL) cost a small network (MLP) more than its matrix products."""

    @staticmethod
    def forward(ctx, w: Tensor, log_sigma2: Tensor, eps: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        out, ctx.saved = weight_sample(w.detach(), log_sigma2.detach(), eps, scale)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        g_w, g_ls = weight_sample_grads(ctx.saved, grad, ctx.scale)
        return g_w, g_ls, None, None


#: Whether the "local" estimator's sample runs natively with its noise generated inline (where the kernel takes the
#: layout); else the noise is materialised for :func:`sample_preactivation`. Measured in ``bench/RESULTS.md``.
LOCAL_NATIVE = True


class _LocalSample(torch.autograd.Function):
    """``mu + sqrt(var + 1e-8) eps`` in one native pass, ``eps`` generated inline (never stored as a map); the pass
    also keeps ``h = eps / (2 std)``, so the backward is ``(grad, grad * h)``. ``h`` goes into the layer's buffer
    (``pool``) once the pass that last used it has been differentiated (its saved tensors freed: a graph kept with
    ``retain_graph`` keeps its buffer): a fresh map of a population's size (tens of MB) costs more in page faults
    than the pass itself."""

    @staticmethod
    def forward(ctx, mu: Tensor, var: Tensor, noise: CounterNoise, layout: tuple,  # type: ignore[override]
                pool: dict) -> Tensor:
        buf, last = pool.get("h"), pool.get("ctx")
        holder = last() if last is not None else None
        if holder is not None:
            try:
                if holder.saved_tensors:  # still held: that graph was not differentiated yet, or was retained
                    buf = None
            except RuntimeError:  # freed by its backward
                pass
        if buf is not None and (buf.shape != mu.shape or buf.stride() != mu.stride()):
            buf = None
        out, h = _native_ard.local_sample(mu, var, noise.keys, noise.step, noise.tag, layout, buf)
        pool["h"], pool["ctx"] = h, weakref.ref(ctx)
        ctx.save_for_backward(h)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (h,) = ctx.saved_tensors
        return grad, (grad * h if ctx.needs_input_grad[1] else None), None, None, None


class _AddPenalty(torch.autograd.Function):
    """Identity on ``out`` whose backward also sends gradient 1 to ``penalty``: as if ``penalty`` were added to
    the summed loss the trainer differentiates."""

    @staticmethod
    def forward(ctx, out: Tensor, penalty: Tensor) -> Tensor:  # type: ignore[override]
        ctx.shape = penalty.shape
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, grad.new_ones(ctx.shape)


def penalized(out: Tensor, penalty: Tensor) -> Tensor:
    """Return ``out`` unchanged, but make ``loss.sum().backward()`` of any loss computed from it also
    differentiate ``penalty.sum()``.

    The population trainer minimises the sum over members of each member's mean loss, so a layer that returns
    ``penalized(out, p)`` with ``p`` of shape ``[N]`` adds ``p[n]`` to member ``n``'s objective without any change
    to the trainer. ``out`` must reach the loss (the layer's output always does).
    """
    return _AddPenalty.apply(out, penalty)


class _ARDNoise(PopDropout):
    """A no-op dropout child of a population ARD layer: the trainer hands it each model's dropout generator every
    epoch (as to every :class:`~zooscape.train.layers.PopDropout`), and the ARD layer draws its noise from them,
    so a twin's noise does not depend on its population."""

    def __init__(self, n: int) -> None:
        nn.Module.__init__(self)
        self.n, self.p = n, 0.0
        self.generators = None


class _PopARDMixin:
    n: int
    weight: Tensor
    log_sigma2: Tensor
    control: ARDControl
    noise: _ARDNoise

    def _init_ard(self, layers: list[nn.Module]) -> None:
        self.log_sigma2 = nn.Parameter(torch.stack([m.log_sigma2.detach() for m in layers]).contiguous())
        self.control = layers[0].control
        self.noise = _ARDNoise(len(layers))

    def log_alpha(self) -> Tensor:
        """``[N, *weight_shape]``."""
        return log_alpha(self.weight, self.log_sigma2)

    def sparse_weight(self) -> Tensor:
        """``[N, *weight_shape]``: the weight with pruned entries (``log alpha >= threshold``) set to zero.

        Without autograd (evaluation) the result is kept, so the many batches of one evaluation compute it once
        instead of once per batch; it is recomputed after every ``train()``/``eval()`` call (the trainer's
        optimiser writes the weights through its flat buffer, which no version counter of the parameters sees,
        but only in training mode) and whenever ``weight``, ``log_sigma2`` (in place, version counters) or the
        threshold change."""
        w, ls, thr = self.weight, self.log_sigma2, self.control.threshold
        if torch.is_grad_enabled() and (w.requires_grad or ls.requires_grad):
            return torch.where(self.log_alpha() < thr, w, torch.zeros_like(w))
        key = (w.data_ptr(), w._version, ls.data_ptr(), ls._version, thr, w.dtype, w.device)
        cached = getattr(self, "_sparse_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            out = torch.where(self.log_alpha() < thr, w, torch.zeros_like(w))
        self._sparse_cache = (key, out)
        return out

    def train(self, mode: bool = True):  # type: ignore[override]
        self._sparse_cache = None  # see sparse_weight
        return super().train(mode)  # type: ignore[misc]

    def _penalize(self, out: Tensor, la: Tensor) -> Tensor:
        """``out`` carrying each model's KL penalty (``la``: this step's :meth:`log_alpha`, computed once)."""
        scale = float(self.control.penalty_scale)
        if scale == 0.0 or not torch.is_grad_enabled():
            return out
        kl = kl_approx(la).reshape(self.n, -1).sum(1)  # [N]
        return penalized(out, kl * scale)

    def effective_weight(self) -> Tensor:
        """The weight of the running forward pass (sparse in eval mode, sampled by the ``"weight"`` estimator)."""
        w = getattr(self, "_weight_now", None)
        return self.weight if w is None else w

    def _uses_local(self) -> bool:
        return self.training and self.control.estimator == "local"

    def _through_parent(self, parent: type, x: Tensor) -> Tensor:
        """The population layer's own forward (all its fast routes) on this pass's effective weight: the sparse
        weight in eval mode, one weight sample per model (``"weight"`` estimator) in training, penalty added."""
        if self.training:  # the KL penalty's gradient comes with the sample's (see _WeightSample)
            scale = float(self.control.penalty_scale) if torch.is_grad_enabled() else 0.0
            w = _WeightSample.apply(self.weight, self.log_sigma2, self._weight_noise(), scale)
        else:
            w = self.sparse_weight()
        self._weight_now = w
        try:
            return parent.forward(self, x)
        finally:
            self._weight_now = None

    def _stream_noise(self, attr: str, tag: int) -> CounterNoise:
        """This step's noise of the stream ``attr`` (counter word ``tag``): one key per model (``[N, 2]``), drawn
        from model ``n``'s own generator when the epoch's stream starts (as the single layer draws it; fresh keys
        from the global generator when none are set), and the step within the epoch."""
        gens = self.noise.generators
        if gens is None:
            return CounterStream(None, (), self.n, tag).next()
        ident = (id(gens), *map(id, gens))  # the trainer hands new generators every epoch
        stream = getattr(self, attr, None)
        if stream is None or stream.ident != ident:
            stream = CounterStream(list(gens), ident, self.n, tag)
            setattr(self, attr, stream)
        return stream.next()

    def _weight_noise(self) -> CounterNoise:
        """This step's standard normal weight noise, not materialised (:meth:`_stream_noise`):
        :func:`weight_sample` evaluates it inline; ``.tensor(shape)`` materialises it (``[N, *shape]``)."""
        return self._stream_noise("_stream", TAG_WEIGHT)

    def _local_sample(self, mu: Tensor, var: Tensor, dim: int) -> Tensor:
        """The local reparameterisation sample ``mu + sqrt(var + 1e-8) eps`` of N models along ``dim``, ``eps``
        from each model's local stream: generated inline by the native kernel when it takes the layout
        (:func:`_native_ard.local_layout`), else materialised (:func:`local_noise`) for :func:`sample_preactivation`."""
        noise = self._stream_noise("_local_stream", TAG_LOCAL)
        layout = _native_ard.local_layout(mu, self.n, dim) if LOCAL_NATIVE else None
        if layout is not None and var.stride() == mu.stride() and var.dtype == mu.dtype and var.device == mu.device:
            pool = self.__dict__.setdefault("_local_pool", {})
            return _LocalSample.apply(mu, var, noise, layout, pool)
        return sample_preactivation(mu, var, local_noise(noise, tuple(mu.shape), dim, mu))


class PopARDLinear(_PopARDMixin, PopLinear):
    """N :class:`ARDLinear` layers as one population layer (shapes as :class:`~zooscape.train.layers.PopLinear`;
    ``log_sigma2`` is ``[N, out, in]``)."""

    def __init__(self, layers: list[ARDLinear]) -> None:
        super().__init__(layers)
        self._init_ard(layers)
        self._manual: list = []  # the manual step's (penalty scale, saved sample), filled in place (no __setattr__)
        self._manual_buffers: list = []  # the manual step's sample buffers (weight_sample's buffers)
        self._kl_pass: _native_ard.KLPass | None = None  # the manual step's native pass (while it fits)

    def _matmul(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if self.layout == "stacked":
            xb = x.view(self.n, -1, self.in_features)
            out = torch.baddbmm(b.unsqueeze(1), xb, w.transpose(1, 2)) if b is not None else torch.bmm(
                xb, w.transpose(1, 2))
            return out.view(-1, self.out_features)
        lead = x.shape[:-1]
        xb = x.reshape(-1, self.n, self.in_features).transpose(0, 1)
        out = torch.baddbmm(b.unsqueeze(1), xb, w.transpose(1, 2)) if b is not None else torch.bmm(
            xb, w.transpose(1, 2))
        return out.transpose(0, 1).reshape(*lead, self.n * self.out_features)

    # the manual MLP step's layer protocol (zooscape.train.manual_mlp): the "weight" estimator's step without
    # autograd, the same sample (same noise, same order) and the same gradients as _WeightSample's
    def manual_ok(self) -> bool:
        """The manual MLP step trains this layer with the ``"weight"`` estimator (``"local"`` uses autograd)."""
        return self.control.estimator == "weight"

    def manual_weight(self) -> Tensor:
        """In training, this step's weight sample ``[N, out, in]`` (draws the step's noise, as :meth:`forward` would;
        keeps what :meth:`manual_weight_grad` needs and the penalty scale); in eval mode the sparse weight."""
        if not self.training:
            return self.sparse_weight().detach()
        scale = float(self.control.penalty_scale)
        noise, w, ls = self._weight_noise(), self.weight, self.log_sigma2
        if KL_FORWARD and KEEP_EPS and MANUAL_PASS:  # the native pass with its checks made once (same numbers)
            kp = self._kl_pass
            if kp is None or not kp.fits(w, ls, noise.keys, w.grad, ls.grad):
                kp = self._kl_pass = _native_ard.KLPass.make(w, ls, noise.keys, w.grad, ls.grad)
            if kp is not None:
                self._manual[:] = (scale, ("pass", kp))
                return kp.forward(noise.step, noise.tag, scale)
        w, saved = weight_sample(w.detach(), ls.detach(), noise, scale,
                                 self._manual_buffers)  # (the step uses the sample only until its backward)
        self._manual[:] = (scale, saved)
        return w

    def manual_weight_grad(self, grad_w: Tensor) -> None:
        """``dL/dW`` of the last :meth:`manual_weight` sample -> ``weight.grad`` and ``log_sigma2.grad``, each model's
        KL penalty gradient (``penalty_scale * dKL/dlog_sigma2``) included (:func:`weight_sample_grads`)."""
        scale, saved = self._manual
        self._manual.clear()
        if saved[0] == "pass":  # written straight into weight.grad and log_sigma2.grad
            saved[1].backward(grad_w)
            return
        gw_now, gls_now = self.weight.grad, self.log_sigma2.grad
        g_w, g_ls = weight_sample_grads(saved, grad_w, scale, (gw_now, gls_now))
        if g_w is not gw_now:  # (the native pass wrote straight into the gradients, e.g. the flat buffer's views)
            _set_grad(self.weight, g_w)
        if g_ls is not gls_now:
            _set_grad(self.log_sigma2, g_ls)

    def forward(self, x: Tensor) -> Tensor:
        if not self._uses_local():
            return self._through_parent(PopLinear, x)
        if self.shared is not None and self.shared.take():
            x = self.shared.expand(x)  # type: ignore[union-attr]
        la = self.log_alpha()
        mu = self._matmul(x, self.weight, self.bias)
        var = self._matmul(x * x, torch.exp(la) * self.weight * self.weight, None)
        out = self._local_sample(mu, var, 0 if self.layout == "stacked" else mu.dim() - 1)
        return self._penalize(out, la)


class PopARDConv2d(_PopARDMixin, PopConv2d):
    """N :class:`ARDConv2d` layers as one grouped convolution on ``[B, N*C_in, H, W]`` (channel layout);
    ``log_sigma2`` is ``[N, C_out, C_in/groups, kh, kw]``. Evaluation and the ``"weight"`` estimator run
    :class:`~zooscape.train.layers.PopConv2d`'s own forward (native conv + pool kernels included) on the sparse or
    sampled weight; the local reparameterisation runs two grouped convolutions (mean and variance)."""

    def __init__(self, layers: list[ARDConv2d]) -> None:
        super().__init__(layers, strategy="grouped")
        self._init_ard(layers)

    def native_pool_ok(self) -> bool:
        return not self._uses_local() and super().native_pool_ok()

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None, groups: int) -> Tensor:
        w = w.reshape(-1, *w.shape[2:])
        b = b.reshape(-1) if b is not None else None
        if groups > 1 and self._input_grad_as_forward(x, w):  # the population's faster input gradient
            return _SmallGroupedConv.apply(x, w, b, self.padding, groups)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, groups)

    def forward(self, x: Tensor) -> Tensor:
        if getattr(self, "layout", "channel") == "stacked":
            raise ValueError("PopARDConv2d runs in the channel layout only")
        if not self._uses_local():
            return self._through_parent(PopConv2d, x)
        if self.shared is not None and self.shared.take():
            x = self.shared.expand(x)  # type: ignore[union-attr]
        g = self.groups * self.n
        la = self.log_alpha()
        mu = self._conv(x, self.weight, self.bias, g)
        var = self._conv(x * x, torch.exp(la) * self.weight * self.weight, None, g)
        out = self._local_sample(mu, var, 1)
        return self._penalize(out, la)


register_population_layer(ARDLinear, PopARDLinear)
register_population_layer(ARDConv2d, PopARDConv2d)
