"""The ARD twins' native passes (``train/_native/ard.c``): the ``"weight"`` estimator's sample and its backward,
the same with the counter-based noise generated inline, the ``"local"`` estimator's sample with inline noise.

:class:`zooscape.sparsify.pop_ard._WeightSample` calls :func:`sample_forward` / :func:`sample_backward` (noise
given) or :func:`sample_forward_rng` / :func:`sample_backward_rng` (noise from the streams' keys, step and tag:
:mod:`zooscape.sparsify.counter_noise`) when :func:`usable` says so (float32 CPU tensors with unit inner stride,
the native kernels built: see :mod:`zooscape.train.native`, switch ``ZOOSCAPE_NATIVE_KERNELS=0``), else its
PyTorch formula, which computes the same function to float32 rounding (the kernel's ``log``/``exp``/``sin``/``cos``
are polynomials of about 1 ulp). :func:`local_sample` is the ``"local"`` estimator's ``mu + sqrt(var + 1e-8) eps``
on the layouts :func:`local_layout` recognises; :func:`philox_normal` the noise alone. An element's result depends
only on its inputs (and its stream's key, step and index), so a twin computes the same in any population.

References: Molchanov, Ashukha & Vetrov (2017); Kingma, Salimans & Welling (2015), section 2.3.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from zooscape.train import native

__all__ = ["KLPass", "available", "local_layout", "local_sample", "philox_normal", "sample_backward",
           "sample_backward_kl", "sample_backward_rng", "sample_forward", "sample_forward_kl", "sample_forward_rng",
           "usable"]

_bound: ctypes.CDLL | None = None
_PLAIN = (Tensor, torch.nn.Parameter)  # (not fake or functional tensors: tracers take the PyTorch formula)


def _lib() -> ctypes.CDLL | None:
    """The kernel library with this module's functions declared, or ``None`` (kernels off or unavailable)."""
    global _bound
    lib = native.library()
    if lib is None:
        return None
    if _bound is not lib:
        p, i64, i, f = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
        lib.zs_ard_sample_forward.argtypes = [p, i64, p, i64, p, i64, p, p, i64, i64, i]
        lib.zs_ard_sample_forward.restype = i
        lib.zs_ard_sample_backward.argtypes = [p, i64, p, i64, p, p, i64, f, p, p, i64, i64, i]
        lib.zs_ard_sample_backward.restype = i
        lib.zs_ard_sample_forward_rng.argtypes = [p, i64, p, i64, p, i64, i64, p, p, p, i64, i64, i]
        lib.zs_ard_sample_forward_rng.restype = i
        lib.zs_ard_sample_backward_rng.argtypes = [p, i64, p, i64, p, p, i64, i64, f, p, p, i64, i64, i]
        lib.zs_ard_sample_backward_rng.restype = i
        lib.zs_ard_local_sample.argtypes = [p, i64, i64, p, p, p, p, i64, i64, i64, i64, i64, i]
        lib.zs_ard_local_sample.restype = i
        lib.zs_ard_sample_forward_kl.argtypes = [p, i64, p, i64, p, i64, i64, f, p, p, p, i64, i64, i]
        lib.zs_ard_sample_forward_kl.restype = i
        lib.zs_ard_sample_backward_kl.argtypes = [p, i64, p, i64, p, p, p, i64, p, i64, i64, i64, i]
        lib.zs_ard_sample_backward_kl.restype = i
        _bound = lib
    return lib


def _rows(t: Tensor) -> Tensor | None:
    """``t`` as an ``[N, K]`` view with unit column stride, or ``None`` when it is not one."""
    if t.dim() < 2 or t.numel() == 0:
        return None
    try:
        v = t.view(t.shape[0], -1)
    except RuntimeError:
        return None
    return v if v.stride(1) == 1 or v.shape[1] == 1 else None


def _need() -> ctypes.CDLL:
    """The kernel library (:func:`_lib`), or a ``RuntimeError`` saying why it is unavailable."""
    lib = _lib()
    if lib is None:
        raise RuntimeError(f"native kernels unavailable: {native.why_not()}")
    return lib


def available() -> bool:
    """Whether the kernels are built and switched on."""
    return _lib() is not None


def usable(*tensors: Tensor) -> bool:
    """Whether the kernels can take these ``[N, ...]`` tensors (float32, CPU, same shape, rows of unit stride, not
    under a tracer or compiler) and are available."""
    t0 = tensors[0]
    if any(type(t) not in _PLAIN or t.dtype != torch.float32 or t.device.type != "cpu" or t.shape != t0.shape
           or _rows(t) is None for t in tensors):
        return False
    if torch.compiler.is_compiling() or torch.utils._python_dispatch._get_current_dispatch_mode() is not None:
        return False
    return _lib() is not None


def sample_forward(w: Tensor, log_sigma2: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """``w + |w| exp(la/2) eps`` with ``la = clip(log_sigma2 - log(w^2 + 1e-8), -10, 10)``; all ``[N, ...]``
    float32 (:func:`usable`). Returns the sample (a new contiguous tensor of that shape) and ``la`` coded for
    :func:`sample_backward` (a clipped value stored as +-10.5)."""
    lib = _need()
    rw, rl, re = _rows(w), _rows(log_sigma2), _rows(eps)
    out = torch.empty(w.shape, dtype=w.dtype)
    lac = torch.empty(w.shape, dtype=w.dtype)
    n, k = rw.shape
    lib.zs_ard_sample_forward(rw.data_ptr(), rw.stride(0), rl.data_ptr(), rl.stride(0), re.data_ptr(), re.stride(0),
                              out.data_ptr(), lac.data_ptr(), n, k, max(1, torch.get_num_threads()))
    return out, lac


def sample_backward(grad: Tensor, w: Tensor, la_coded: Tensor, eps: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Gradients ``(d/dw, d/dlog_sigma2)`` of ``sum(grad * sample) + scale * sum(KL(la))`` (the KL approximation
    of Molchanov et al. 2017; no gradient through the clip of ``la``); ``la_coded`` from :func:`sample_forward`,
    shapes as there."""
    lib = _need()
    grad = grad if _rows(grad) is not None else grad.contiguous()
    rg, rw, re = _rows(grad), _rows(w), _rows(eps)
    gw = torch.empty(w.shape, dtype=w.dtype)
    gls = torch.empty(w.shape, dtype=w.dtype)
    n, k = rw.shape
    lib.zs_ard_sample_backward(rg.data_ptr(), rg.stride(0), rw.data_ptr(), rw.stride(0), la_coded.data_ptr(),
                               re.data_ptr(), re.stride(0), float(scale), gw.data_ptr(), gls.data_ptr(), n, k,
                               max(1, torch.get_num_threads()))
    return gw, gls


def _keys(keys: Tensor, n: int) -> Tensor:
    """``keys`` as a contiguous ``[n, 2]`` int64 CPU tensor (checked)."""
    if keys.shape != (n, 2) or keys.dtype != torch.int64 or keys.device.type != "cpu":
        raise ValueError(f"keys must be an int64 CPU tensor of shape ({n}, 2), got {tuple(keys.shape)} "
                         f"{keys.dtype} on {keys.device}")
    return keys.contiguous()


def philox_normal(keys: Tensor, step: int, numel: int, tag: int) -> Tensor | None:
    """Counter-based standard normals ``[N, numel]`` float32 (:mod:`zooscape.sparsify.counter_noise`; ``keys``
    ``[N, 2]`` int64 on the CPU), or ``None`` when the kernels are unavailable."""
    lib = _lib()
    if lib is None or type(keys) not in _PLAIN or torch.compiler.is_compiling():
        return None
    k = _keys(keys, keys.shape[0])
    out = torch.empty(k.shape[0], numel, dtype=torch.float32)  # (the local kernel's noise-only mode, one row each)
    lib.zs_ard_local_sample(k.data_ptr(), int(step), int(tag), None, None, out.data_ptr(), None, k.shape[0], numel,
                            numel, numel, numel, max(1, torch.get_num_threads()))
    return out


def sample_forward_rng(w: Tensor, log_sigma2: Tensor, keys: Tensor, step: int, tag: int,
                       keep_eps: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`sample_forward` with ``eps`` generated inline from the counter streams ``keys`` (``[N, 2]`` int64) at
    ``step`` (:mod:`zooscape.sparsify.counter_noise`): returns the sample, ``la`` coded, and ``eps`` (``[N, ...]``,
    written in the same pass) when ``keep_eps``, else ``None`` (the backward then generates it again)."""
    lib = _need()
    rw, rl = _rows(w), _rows(log_sigma2)
    n, k = rw.shape
    kk = _keys(keys, n)
    out = torch.empty(w.shape, dtype=w.dtype)
    lac = torch.empty(w.shape, dtype=w.dtype)
    eps = torch.empty(w.shape, dtype=w.dtype) if keep_eps else None
    lib.zs_ard_sample_forward_rng(rw.data_ptr(), rw.stride(0), rl.data_ptr(), rl.stride(0), kk.data_ptr(), int(step),
                                  int(tag), out.data_ptr(), lac.data_ptr(), eps.data_ptr() if eps is not None else None,
                                  n, k, max(1, torch.get_num_threads()))
    return out, lac, eps


def sample_backward_rng(grad: Tensor, w: Tensor, la_coded: Tensor, keys: Tensor, step: int, tag: int,
                        scale: float) -> tuple[Tensor, Tensor]:
    """:func:`sample_backward` with ``eps`` generated again from ``(keys, step, tag)`` (as
    :func:`sample_forward_rng` with ``keep_eps=False`` generated it)."""
    lib = _need()
    grad = grad if _rows(grad) is not None else grad.contiguous()
    rg, rw = _rows(grad), _rows(w)
    gw = torch.empty(w.shape, dtype=w.dtype)
    gls = torch.empty(w.shape, dtype=w.dtype)
    n, k = rw.shape
    kk = _keys(keys, n)
    lib.zs_ard_sample_backward_rng(rg.data_ptr(), rg.stride(0), rw.data_ptr(), rw.stride(0), la_coded.data_ptr(),
                                   kk.data_ptr(), int(step), int(tag), float(scale), gw.data_ptr(), gls.data_ptr(),
                                   n, k, max(1, torch.get_num_threads()))
    return gw, gls


def sample_forward_kl(w: Tensor, log_sigma2: Tensor, keys: Tensor, step: int, tag: int, scale: float,
                      buffers: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`sample_forward_rng` in the ``"kl"`` format: the pass also evaluates the KL penalty's gradient, so that
    :func:`sample_backward_kl` needs no ``exp``. Returns the sample, ``code`` (``scale * dKL/d la`` where the clip
    of ``la`` passes the gradient, ``+inf`` where it does not) and the noise ``exp(la/2) eps``, each ``[N, ...]``
    contiguous (shapes and keys as :func:`sample_forward_rng`): written into ``buffers`` (three contiguous float32
    CPU tensors of ``w``'s shape, returned again) when they fit, else new tensors."""
    lib = _need()
    rw, rl = _rows(w), _rows(log_sigma2)
    n, k = rw.shape
    kk = _keys(keys, n)
    if buffers is not None and all(type(b) in _PLAIN and b.shape == w.shape and b.dtype == torch.float32
                                   and b.device.type == "cpu" and b.is_contiguous() for b in buffers):
        out, code, noise = buffers
    else:
        out, code, noise = (torch.empty(w.shape, dtype=w.dtype) for _ in range(3))
    lib.zs_ard_sample_forward_kl(rw.data_ptr(), rw.stride(0), rl.data_ptr(), rl.stride(0), kk.data_ptr(), int(step),
                                 int(tag), float(scale), out.data_ptr(), code.data_ptr(), noise.data_ptr(), n, k,
                                 max(1, torch.get_num_threads()))
    return out, code, noise


def _out_rows(t: Tensor | None, shape: torch.Size) -> Tensor | None:
    """``t`` as ``[N, K]`` rows to write into (float32 CPU, ``shape``, unit column stride), else ``None``."""
    if t is None or type(t) not in _PLAIN or t.shape != shape or t.dtype != torch.float32 or t.device.type != "cpu":
        return None
    return _rows(t)


def sample_backward_kl(grad: Tensor, w: Tensor, code: Tensor, noise: Tensor, out_w: Tensor | None = None,
                       out_ls: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Gradients ``(d/dw, d/dlog_sigma2)`` as :func:`sample_backward` (the KL penalty's ``scale`` as given to
    :func:`sample_forward_kl`) from :func:`sample_forward_kl`'s ``code`` and ``noise``: one pass without
    transcendental functions. ``out_w``/``out_ls``: tensors of ``w``'s shape to write the gradients into (e.g. views
    into a flat gradient buffer; rows of unit stride, else a new tensor is returned instead)."""
    lib = _need()
    grad = grad if _rows(grad) is not None else grad.contiguous()
    rg, rw = _rows(grad), _rows(w)
    ow, ol = _out_rows(out_w, w.shape), _out_rows(out_ls, w.shape)
    if ow is None:
        out_w = torch.empty(w.shape, dtype=w.dtype)
        ow = out_w.view(rw.shape)
    if ol is None:
        out_ls = torch.empty(w.shape, dtype=w.dtype)
        ol = out_ls.view(rw.shape)
    n, k = rw.shape
    lib.zs_ard_sample_backward_kl(rg.data_ptr(), rg.stride(0), rw.data_ptr(), rw.stride(0), code.data_ptr(),
                                  noise.data_ptr(), ow.data_ptr(), ow.stride(0), ol.data_ptr(), ol.stride(0), n, k,
                                  max(1, torch.get_num_threads()))
    return out_w, out_ls


class KLPass:
    """One layer's native ``"kl"`` sample and backward (:func:`sample_forward_kl`, :func:`sample_backward_kl`: the
    same kernels, the same numbers) with their arguments checked once, for a caller that samples the same tensors
    every step (the manual MLP step: weights, ``log sigma^2`` and gradients are views into the trainer's flat
    buffers, keys change once per epoch). While :meth:`fits` says so, a step is one ctypes call each way into
    buffers the pass keeps (the previous step's sample is overwritten). Make it with :meth:`make`."""

    def __init__(self, lib: ctypes.CDLL, w: Tensor, log_sigma2: Tensor, keys: Tensor, grad_w: Tensor,
                 grad_ls: Tensor) -> None:
        self.lib, self.keys, self.shape = lib, keys, w.shape
        self.key = self._key(w, log_sigma2, grad_w, grad_ls)
        rw, rl, gw, gl = _rows(w), _rows(log_sigma2), _rows(grad_w), _rows(grad_ls)
        self.n, self.k = rw.shape
        self.out, self.code, self.noise = (torch.empty(w.shape, dtype=w.dtype) for _ in range(3))
        self.fwd_args = (rw.data_ptr(), rw.stride(0), rl.data_ptr(), rl.stride(0), keys.data_ptr())
        self.fwd_out = (self.out.data_ptr(), self.code.data_ptr(), self.noise.data_ptr(), self.n, self.k)
        self.bwd_args = (rw.data_ptr(), rw.stride(0), self.code.data_ptr(), self.noise.data_ptr(), gw.data_ptr(),
                         gw.stride(0), gl.data_ptr(), gl.stride(0), self.n, self.k)

    @staticmethod
    def _key(w: Tensor, log_sigma2: Tensor, grad_w: Tensor, grad_ls: Tensor) -> tuple:
        return (w.data_ptr(), w.stride(), log_sigma2.data_ptr(), log_sigma2.stride(), grad_w.data_ptr(),
                grad_w.stride(), grad_ls.data_ptr(), grad_ls.stride())

    @classmethod
    def make(cls, w: Tensor, log_sigma2: Tensor, keys: Tensor, grad_w: Tensor | None,
             grad_ls: Tensor | None) -> KLPass | None:
        """A pass for these tensors (``w``, ``log_sigma2`` and the gradients ``grad_w``, ``grad_ls`` it writes into
        all of one shape, :func:`usable`, gradients distinct from the inputs; ``keys`` ``[N, 2]`` int64 CPU,
        contiguous), or ``None`` where the kernels cannot take them."""
        if grad_w is None or grad_ls is None or not usable(w, log_sigma2, grad_w, grad_ls):
            return None
        if (type(keys) not in _PLAIN or keys.shape != (w.shape[0], 2) or keys.dtype != torch.int64
                or keys.device.type != "cpu" or not keys.is_contiguous()):
            return None
        ptrs = {t.data_ptr() for t in (w, log_sigma2, grad_w, grad_ls)}
        if len(ptrs) < 4:
            return None
        return cls(_lib(), w, log_sigma2, keys, grad_w, grad_ls)

    def fits(self, w: Tensor, log_sigma2: Tensor, keys: Tensor, grad_w: Tensor | None,
             grad_ls: Tensor | None) -> bool:
        """Whether this pass still applies to these tensors (same memory and strides, same keys object, same
        kernel library, no dispatch mode)."""
        return (keys is self.keys and grad_w is not None and grad_ls is not None and _bound is self.lib
                and native.library() is self.lib and self._key(w, log_sigma2, grad_w, grad_ls) == self.key
                and torch.utils._python_dispatch._get_current_dispatch_mode() is None)

    def forward(self, step: int, tag: int, scale: float) -> Tensor:
        """This step's sample ``[N, ...]`` (the pass's buffer), ``scale``: the KL penalty's weight."""
        self.lib.zs_ard_sample_forward_kl(*self.fwd_args, int(step), int(tag), float(scale), *self.fwd_out,
                                          max(1, torch.get_num_threads()))
        return self.out

    def backward(self, grad: Tensor) -> None:
        """Writes ``d/dw`` and ``d/dlog_sigma2`` of the last :meth:`forward` into the gradients it was made for;
        ``grad``: ``dL/d sample`` ``[N, ...]``."""
        if grad.shape != self.shape or grad.dtype != torch.float32 or grad.device.type != "cpu":
            raise ValueError(f"gradient {tuple(grad.shape)} {grad.dtype} does not match the sample "
                             f"{tuple(self.shape)} float32 cpu")
        grad = grad if grad.is_contiguous() else grad.contiguous()
        self.lib.zs_ard_sample_backward_kl(grad.data_ptr(), self.k, *self.bwd_args, max(1, torch.get_num_threads()))


def local_layout(mu: Tensor, n: int, dim: int) -> tuple[int, int, int, int] | None:
    """How model ``n``'s pre-activations lie in a population's ``mu`` (``N`` models along ``dim``), as
    ``(numel, C, ldr, ldm)`` (elements per model; its stream's rows of ``C`` elements, ``ldr`` apart; models ``ldm``
    apart), or ``None`` when the kernel does not take this layout: channels-last ``[B, N*C, H, W]`` maps (stream
    order ``[B, H, W, C]``), contiguous ``[..., N*C]`` (channel layout) or ``[N*B, C]`` (stacked, ``dim`` 0)."""
    if type(mu) not in _PLAIN or mu.dtype != torch.float32 or mu.device.type != "cpu" or mu.numel() == 0:
        return None
    if torch.compiler.is_compiling() or torch.utils._python_dispatch._get_current_dispatch_mode() is not None:
        return None
    if _lib() is None:
        return None
    if mu.dim() == 4 and dim == 1 and mu.is_contiguous(memory_format=torch.channels_last):
        b, nc, h, w = mu.shape
        return b * h * w * (nc // n), nc // n, nc, nc // n
    if not mu.is_contiguous():
        return None
    if dim == mu.dim() - 1:
        c = mu.shape[-1] // n
        return mu.numel() // n, c, mu.shape[-1], c
    if dim == 0 and mu.dim() == 2:
        per = mu.numel() // n
        return per, per, per, per
    return None


def local_sample(mu: Tensor, var: Tensor | None, keys: Tensor, step: int, tag: int,
                 layout: tuple[int, int, int, int], h: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The local reparameterisation sample ``mu + sqrt(var + 1e-8) eps`` with ``eps`` generated inline (model
    ``n``'s from ``keys[n]``, ``step``, ``tag``; :mod:`zooscape.sparsify.counter_noise`), and ``h = eps / (2 std)``
    (``d out / d var``); with ``var`` ``None``: ``eps`` alone in ``mu``'s layout (``h`` ``None``). ``layout`` from
    :func:`local_layout`; ``var`` must have ``mu``'s strides; ``h``: a buffer of ``mu``'s shape and strides to write
    ``h`` into (a new one by default)."""
    lib = _need()
    numel, c, ldr, ldm = layout
    kk = _keys(keys, keys.shape[0])
    out = torch.empty_like(mu)
    if var is not None and var.stride() != mu.stride():
        raise ValueError(f"var strides {var.stride()} differ from mu's {mu.stride()}")
    if var is None:
        h = None
    elif h is None:
        h = torch.empty_like(mu)
    elif h.shape != mu.shape or h.stride() != mu.stride() or h.dtype != mu.dtype or h.device != mu.device:
        raise ValueError(f"h buffer {tuple(h.shape)} {h.stride()} does not match mu {tuple(mu.shape)} {mu.stride()}")
    lib.zs_ard_local_sample(kk.data_ptr(), int(step), int(tag), mu.data_ptr() if var is not None else None,
                            var.data_ptr() if var is not None else None, out.data_ptr(),
                            h.data_ptr() if h is not None else None, kk.shape[0], numel, c, ldr, ldm,
                            max(1, torch.get_num_threads()))
    return out, h
