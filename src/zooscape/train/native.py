"""Native CPU kernels for the population trainer: convolution + 2x2 max-pool (+ ReLU), and Adam's step.

Model-Zoos-style CNNs (CNN-s: ``Conv2d(1, 8, 5)``, ``MaxPool2d(2)``, ReLU, ``Conv2d(8, 6, 5)``, ...) run in a
population as N tiny convolutions per layer. oneDNN computes these at a fraction of the CPU's peak and then
writes, pools, and in the backward pass zero-fills and scatters a full-resolution map. The C kernels in
``_native/convpool.c`` (AVX2 + FMA) compute the convolution, the pool and an optional ReLU in registers (forward)
and the weight, bias and input gradients straight from the pooled gradient and the pool's window indices
(backward); ``_native/adam.c`` does a population's whole Adam/AdamW step in one pass. They are compiled with the
system C compiler at install time or on first use (a few seconds) into a cache directory and called through
``ctypes``; if the CPU lacks AVX2/FMA (or is not x86-64 Linux), no compiler is found, or the build fails,
:func:`available` is ``False`` and the population uses its PyTorch path, which computes the same function.

Switch: ``ZOOSCAPE_NATIVE_KERNELS=0`` turns the kernels off (all switches: :mod:`zooscape.train._flags`).
Cache: ``kernels/`` in ``$ZOOSCAPE_CACHE_DIR``, else
``$XDG_CACHE_HOME/zooscape``, else ``~/.cache/zooscape``; it must be private (owned by the user, mode 0700), every
library is verified (size + SHA-256 recorded at build time) before it is loaded, and the key covers everything that
changes the binary (:mod:`zooscape.train._native.cache`; ``docs/security.md``). ``zooscape doctor`` says whether
the kernels are on, the cache directory, its check and the key; ``zooscape doctor --build-kernels`` builds them
(``make venv`` does, after installing). Under ``torch.compile``, export, fx or fake tensors the conv + pool kernels
are the ``torch.library`` custom op ``zooscape::conv_pool2x2`` (see :class:`ConvPool2x2`).

The pool follows ``torch.nn.functional.max_pool2d`` (first maximum of the window in row-major order wins, NaN
propagates); the convolution sums bias, then taps in ``(c, ky, kx)`` order, so results agree with oneDNN's to
float32 rounding. References: the population ("wide") formulation of :mod:`zooscape.train.layers`; Adam: Kingma &
Ba, 2015; AdamW: Loshchilov & Hutter, 2019.
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .. import __version__
from . import _flags
from ._native import cache as _cache
from ._native.cache import CacheInfo

_FLAGS = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fPIC", "-shared", "-pthread"]
_ABI = 5
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_path: Path | None = None
_info: CacheInfo | None = None
_tried = False
_failed = False
_why_not: str | None = None


class _Unsupported(RuntimeError):
    """The kernels are switched off or not meant for this machine (no warning)."""


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty if unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _platform_reason() -> str | None:
    """Why this machine cannot run the kernels (``None`` if it can): they are x86-64 AVX2 + FMA code for Linux.
    Everywhere else (aarch64, ppc64le, macOS, Windows, an x86-64 CPU without AVX2/FMA) the population takes its
    PyTorch path, which computes the same function; no compiler is run."""
    machine = platform.machine().lower()
    if not sys.platform.startswith("linux"):
        return f"the kernels are built for Linux only, not {sys.platform} ({machine or 'unknown machine'})"
    if machine not in ("x86_64", "amd64"):
        return f"the kernels are x86-64 (AVX2/FMA) code; this machine is {machine or 'unknown'}"
    missing = sorted({"avx2", "fma"} - _cpu_flags())
    if missing:
        return f"the CPU lacks {'/'.join(m.upper() for m in missing)} (x86-64 without AVX2/FMA)"
    return None


def _cpu_has_avx2_fma() -> bool:
    """Whether this is an x86-64 Linux machine whose CPU has AVX2 and FMA (see :func:`_platform_reason`)."""
    return _platform_reason() is None


def _cache_dir() -> Path:
    env = _flags.current().cache_dir
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "zooscape"


def _cache_candidates() -> list[Path]:
    """Directories the library may live in, in order (each must be private: see :mod:`._native.cache`)."""
    try:
        first = [_cache_dir() / "kernels"]
    except RuntimeError:  # no home directory
        first = []
    return [*first, Path(tempfile.gettempdir()) / f"zooscape-{os.getuid()}"]


def _variants() -> list[tuple[str, list[str]]]:
    """Builds to try, in order: with OpenMP (which then shares PyTorch's libgomp and its threads), else with
    pthreads."""
    variants = [("openmp", [*_FLAGS, "-fopenmp"]), ("pthreads", _FLAGS)]
    if not _flags.current().native_openmp:  # (the pthreads build, for tests)
        variants = [("pthreads", _FLAGS)]
    return variants


def _compiler_or_none() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _compiler() -> str:
    cc = _compiler_or_none()
    if not cc:
        raise RuntimeError("no C compiler found (set CC)")
    return cc


def _build(cc: str) -> tuple[ctypes.CDLL, CacheInfo]:
    """The compiled library, loaded from the private cache after verification, compiling it if needed."""
    return _cache.load(_cache_candidates(), cc, _variants(), version=__version__, abi=_ABI)


def library() -> ctypes.CDLL | None:
    """The compiled kernel library, building it on first call; ``None`` when unavailable (see :func:`why_not`)
    or switched off (the ``native_kernels`` switch of :mod:`zooscape.train._flags`, asked at every call)."""
    global _lib, _lib_path, _info, _tried, _failed, _why_not
    if not _flags.current().native_kernels:
        return None
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        try:
            reason = _platform_reason()
            if reason is not None:
                raise _Unsupported(reason)
            lib, info = _build(_compiler())
            if lib.zs_convpool_abi() != _ABI:
                raise RuntimeError("stale kernel library")
            p, i64p, i = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.c_int
            lib.zs_convpool_forward.argtypes = [p, i64p, i, i, i, i, i, i, i, p, p, p, p, i, i]
            lib.zs_convpool_forward.restype = ctypes.c_int
            lib.zs_convpool_backward.argtypes = [p, i64p, i, i, i, i, i, i, i, p, p, p, p, p, i]
            lib.zs_convpool_backward.restype = ctypes.c_int
            lib.zs_convpool_backward_full.argtypes = [p, i64p, i, i, i, i, i, i, i, p, p, p, p, p, p, i]
            lib.zs_convpool_backward_full.restype = ctypes.c_int
            f, i64 = ctypes.c_float, ctypes.c_int64
            lib.zs_adam_step.argtypes = [p, p, p, p, i64, i64, i64, p, p, f, f, f, f, f, f, f, i, i, i]
            lib.zs_adam_step.restype = ctypes.c_int
            _lib, _lib_path, _info = lib, Path(info.library or ""), info
        except _Unsupported as e:  # switched off, or a CPU the kernels are not for: quietly the PyTorch path
            _why_not = str(e)
        except Exception as e:  # a failed build: the PyTorch path computes the same function, but say so
            _why_not, _failed = str(e), True
            warnings.warn(f"zooscape: native kernels unavailable, using the PyTorch path ({e})", stacklevel=2)
        _tried = True
    return _lib


def build_failed() -> bool:
    """Whether the kernels are unavailable because building or loading them failed (as opposed to switched off or
    not meant for this machine); builds on first call, like :func:`available`."""
    return library() is None and _failed


def cache_info() -> CacheInfo:
    """Where the kernel library was loaded from: the cache directory, its ownership/mode check, the directories
    rejected before it, the cache key and what it hashes (see :mod:`zooscape.train._native.cache`). Before a load
    (or when the kernels are off, unsupported or failed) what a load would find, without creating anything."""
    if _info is not None:
        return _info
    reason = _platform_reason()
    if reason is not None:  # no cache on a machine the kernels are not for (and no uid on Windows)
        return CacheInfo(check=f"not used: {reason}")
    return _cache.describe(_cache_candidates(), _compiler_or_none(), _variants()[0], version=__version__, abi=_ABI)


def available() -> bool:
    """Whether the native kernels can be used in this process."""
    return library() is not None


def library_path() -> str | None:
    """Where the loaded kernel library lives (``None`` when the kernels are unavailable or not loaded yet)."""
    return str(_lib_path) if _lib_path is not None else None


def why_not() -> str | None:
    """Why :func:`available` is ``False`` (``None`` if it is ``True`` or was not asked yet)."""
    if not _flags.current().native_kernels:
        return "turned off by ZOOSCAPE_NATIVE_KERNELS=0 (the native_kernels switch)"
    return _why_not


def supports(x: Tensor, weight: Tensor) -> bool:
    """Whether the kernels handle this input ``[B, G*C, H, W]`` and ``[G, O, C, k, k]`` weight (float32 on the
    CPU, square kernel, at least one pooled output). An input that needs a gradient must also satisfy
    :func:`supports_input_grad`."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and weight.dim() == 5 and weight.shape[-1] == weight.shape[-2]
            and x.dim() == 4 and x.shape[2] >= weight.shape[-1] + 1 and x.shape[3] >= weight.shape[-1] + 1
            and available())


def supports_input_grad(x: Tensor, weight: Tensor) -> bool:
    """Whether :class:`ConvPool2x2` can also return the input gradient: input channels per model a multiple of 8
    (the SIMD lanes of that kernel), contiguous in memory (channels-last input), kernel size at most 8."""
    return (weight.shape[2] % 8 == 0 and weight.shape[-1] <= 8 and x.stride(1) == 1
            and x.shape[1] == weight.shape[0] * weight.shape[2])


def _strides(x: Tensor, groups: int, c: int) -> ctypes.Array:
    """Element strides of x ``[B, G*C, H, W]`` (or a shared ``[B, C, H, W]`` when ``groups`` is 0) as
    ``(batch, model, channel, row, column)``."""
    s0, s1, s2, s3 = x.stride()
    return (ctypes.c_int64 * 5)(s0, c * s1 if groups else 0, s1, s2, s3)


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("native convolution kernel: out of memory for its per-thread buffers")


def _threads() -> int:
    return max(1, torch.get_num_threads())


def conv_pool_forward(x: Tensor, weight: Tensor, bias: Tensor | None, *, shared: bool = False,
                      indices: bool = True, relu: bool = False) -> tuple[Tensor, Tensor | None]:
    """``max_pool2d(conv2d(x_g, W_g, b_g), 2)`` for G models at once (stride 1, no padding), optionally followed by
    a ReLU.

    Args:
        x: ``[B, G*C, H, W]`` (any strides), or ``[B, C, H, W]`` shared by all models if ``shared``.
        weight: ``[G, O, C, k, k]``; bias: ``[G, O]`` or ``None``.
        indices: also return the winning window position (0..3) of every output, for the backward pass.
        relu: apply ``relu`` to the pooled output (a ReLU module right after the pool, fused).

    Returns:
        ``(out, idx)``: ``out`` ``[B, G*O, H', W']`` in channels-last memory order with ``H' = (H-k+1)//2``,
        ``idx`` a ``uint8`` tensor ``[B, H', W', G*O]`` or ``None``.
    """
    lib = library()
    if lib is None:
        raise RuntimeError(f"native kernels unavailable: {_why_not}")
    g, o, c, k, _ = weight.shape
    bsz, _, h, w = x.shape
    if x.shape[1] != (c if shared else g * c):
        raise ValueError(f"x has {x.shape[1]} channels, expected {c if shared else g * c}")
    h2, w2 = (h - k + 1) // 2, (w - k + 1) // 2
    op = (o + 7) // 8 * 8  # output channels are SIMD lanes: weights and bias zero-padded to a multiple of 8
    wt = weight.new_zeros(g, c, k, k, op)
    wt[..., :o] = weight.detach().permute(0, 2, 3, 4, 1)  # [G, C, k, k, O(p)]
    bt = None
    if bias is not None:
        bt = bias.new_zeros(g, op)
        bt[:, :o] = bias.detach()
    out = x.new_empty(bsz, h2, w2, g * o)
    idx = torch.empty(bsz, h2, w2, g * o, dtype=torch.uint8) if indices else None
    xd = x.detach()
    _check(lib.zs_convpool_forward(xd.data_ptr(), _strides(xd, 0 if shared else g, c), bsz, g, c, h, w, k, o,
                                   wt.data_ptr(), bt.data_ptr() if bt is not None else None, out.data_ptr(),
                                   idx.data_ptr() if idx is not None else None, int(relu), _threads()))
    return out.permute(0, 3, 1, 2), idx


def _act(act: Tensor | None) -> Tensor | None:
    """A fused ReLU's forward output ``[B, G*O, H', W']`` as the kernels read it: ``[B, H', W', G*O]``."""
    return act.permute(0, 2, 3, 1).contiguous() if act is not None else None


def conv_pool_backward(x: Tensor, weight_shape: torch.Size, grad_out: Tensor, idx: Tensor, *, shared: bool = False,
                       bias: bool = True, act: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Weight and bias gradients of :func:`conv_pool_forward` given ``grad_out`` ``[B, G*O, H', W']`` and the
    forward's indices (``x`` and ``shared`` as there; ``act``: the forward output when a ReLU was fused, whose
    gradient is then zero where ``act <= 0``). Returns ``([G, O, C, k, k], [G, O] or None)``."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"native kernels unavailable: {_why_not}")
    g, o, c, k, _ = weight_shape
    bsz, _, h, w = x.shape
    gout = grad_out.permute(0, 2, 3, 1).contiguous()  # [B, H', W', G*O] (free if already channels-last)
    dw = x.new_empty(g, c, k, k, o)
    db = x.new_empty(g, o) if bias else None
    a = _act(act)
    _check(lib.zs_convpool_backward(x.data_ptr(), _strides(x, 0 if shared else g, c), bsz, g, c, h, w, k, o,
                                    gout.data_ptr(), idx.data_ptr(), a.data_ptr() if a is not None else None,
                                    dw.data_ptr(), db.data_ptr() if db is not None else None, _threads()))
    return dw.permute(0, 4, 1, 2, 3), db


def conv_pool_backward_full(x: Tensor, weight: Tensor, grad_out: Tensor, idx: Tensor,
                            act: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Input and weight gradients of :func:`conv_pool_forward` (not shared) for an input that satisfies
    :func:`supports_input_grad` (``act`` as in :func:`conv_pool_backward`). Returns
    ``(dx [B, G*C, H, W] channels-last, dw [G, O, C, k, k])``."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"native kernels unavailable: {_why_not}")
    g, o, c, k, _ = weight.shape
    bsz, _, h, w = x.shape
    gout = grad_out.permute(0, 2, 3, 1).contiguous()
    wc = weight.detach().permute(0, 1, 3, 4, 2).contiguous()  # [G, O, k, k, C]
    dx = x.new_empty(bsz, h, w, g * c)
    dw = x.new_empty(g, o, k, k, c)
    a = _act(act)
    status = lib.zs_convpool_backward_full(x.data_ptr(), _strides(x, g, c), bsz, g, c, h, w, k, o, gout.data_ptr(),
                                           idx.data_ptr(), a.data_ptr() if a is not None else None, wc.data_ptr(),
                                           dx.data_ptr(), dw.data_ptr(), _threads())
    if status == -2:
        raise ValueError("conv_pool_backward_full needs 8 | C, channels-last input and a kernel size <= 8")
    _check(status)
    return dx.permute(0, 3, 1, 2), dw.permute(0, 1, 4, 2, 3)


def adam_step(params: Tensor, grads: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, lr: Tensor, weight_decay: Tensor,
              *, betas: tuple[float, float], eps: float, bias_correction1: float, bias_correction2_sqrt: float,
              sqrt_floor: float, adamw: bool, use_wd: bool | None = None, check: bool = True) -> None:
    """One Adam/AdamW step in place over flat ``[N, P]`` float32 CPU buffers in a single pass (``_native/adam.c``).

    Args:
        params, grads, exp_avg, exp_avg_sq: ``[N, P]`` with unit column stride and a common row stride.
        lr, weight_decay: ``[N]`` per-model values.
        betas, eps: Adam's hyperparameters; ``bias_correction1`` = ``1 - b1^t``, ``bias_correction2_sqrt`` =
            ``sqrt(1 - b2^t)`` (one step count for all models).
        sqrt_floor: ``exp_avg_sq`` is raised to this before the square root (see
            ``PopulationOptimizer._sqrt``; 0 for a plain square root).
        adamw: decoupled weight decay (AdamW) instead of L2 added to the gradient (Adam).
        use_wd: whether any ``weight_decay`` is non-zero (``None``: read it from the tensor).
        check: validate the buffers' dtype, device, shape and layout (callers that checked once pass ``False``).
    """
    lib = library()
    if lib is None:
        raise RuntimeError(f"native kernels unavailable: {_why_not}")
    ld = params.stride(0)
    if check and any(b.dtype != torch.float32 or b.device.type != "cpu" or b.stride(1) != 1 or b.stride(0) != ld
                     or b.shape != params.shape for b in (params, grads, exp_avg, exp_avg_sq)):
        raise ValueError("adam_step needs float32 CPU buffers of one shape and layout")
    lr32 = lr.detach().to(torch.float32).contiguous()
    wd32 = weight_decay.detach().to(torch.float32).contiguous()
    use_wd = True if adamw else (bool((wd32 != 0).any()) if use_wd is None else use_wd)
    b1, b2 = betas
    _check(lib.zs_adam_step(params.data_ptr(), grads.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(),
                            params.shape[0], params.shape[1], ld, lr32.data_ptr(), wd32.data_ptr(), 1 - b1, b2, 1 - b2,
                            eps, bias_correction1, bias_correction2_sqrt, sqrt_floor, int(adamw), int(use_wd),
                            _threads()))


# torch.library custom ops: torch.compile / fx / export see one opaque ``zooscape::conv_pool2x2`` node with a fake
# (shape-only) implementation and an autograd formula, instead of failing on a ctypes call with fake tensors. Eager
# calls take a plain autograd.Function over the same kernels: the custom op's eager autograd wrapper costs ~0.1-0.4 ms
# of Python per training call (bench/native_convpool.py, "op / no op"), up to a third of a small population's layer.

@torch.library.custom_op("zooscape::conv_pool2x2", mutates_args=(), device_types="cpu")
def _conv_pool_op(x: Tensor, weight: Tensor, bias: Tensor | None, shared: bool, relu: bool) -> tuple[Tensor, Tensor]:
    out, idx = conv_pool_forward(x, weight, bias, shared=shared, indices=True, relu=relu)
    assert idx is not None
    return out, idx


@_conv_pool_op.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None, shared: bool, relu: bool) -> tuple[Tensor, Tensor]:
    g, o, _, k, _ = weight.shape
    h2, w2 = (x.shape[2] - k + 1) // 2, (x.shape[3] - k + 1) // 2
    out = x.new_empty(x.shape[0], h2, w2, g * o).permute(0, 3, 1, 2)
    return out, x.new_empty(x.shape[0], h2, w2, g * o, dtype=torch.uint8)


@torch.library.custom_op("zooscape::conv_pool2x2_backward", mutates_args=(), device_types="cpu")
def _conv_pool_backward_op(x: Tensor, weight: Tensor, grad: Tensor, idx: Tensor, act: Tensor | None,
                           shared: bool) -> tuple[Tensor, Tensor]:
    dw, db = conv_pool_backward(x, weight.shape, grad, idx, shared=shared, bias=True, act=act)
    assert db is not None
    return dw, db


@_conv_pool_backward_op.register_fake
def _(x: Tensor, weight: Tensor, grad: Tensor, idx: Tensor, act: Tensor | None, shared: bool) -> tuple[Tensor, Tensor]:
    g, o, c, k, _ = weight.shape
    return x.new_empty(g, c, k, k, o).permute(0, 4, 1, 2, 3), x.new_empty(g, o)


@torch.library.custom_op("zooscape::conv_pool2x2_backward_full", mutates_args=(), device_types="cpu")
def _conv_pool_backward_full_op(x: Tensor, weight: Tensor, grad: Tensor, idx: Tensor,
                                act: Tensor | None) -> tuple[Tensor, Tensor]:
    return conv_pool_backward_full(x, weight, grad, idx, act=act)


@_conv_pool_backward_full_op.register_fake
def _(x: Tensor, weight: Tensor, grad: Tensor, idx: Tensor, act: Tensor | None) -> tuple[Tensor, Tensor]:
    g, o, c, k, _ = weight.shape
    b, _, h, w = x.shape
    return x.new_empty(b, h, w, g * c).permute(0, 3, 1, 2), x.new_empty(g, o, k, k, c).permute(0, 1, 4, 2, 3)


def _grads(grad: Tensor, saved: tuple[Tensor, ...], needs: tuple[bool, ...], has_bias: bool, shared: bool,
           through_ops: bool) -> tuple[Tensor | None, ...]:
    """Gradients of ``(x, weight, bias, shared, relu)`` from the pooled gradient ``grad``; ``saved`` is
    ``(x, weight, idx, act or None)``; the kernels are called through the backward custom ops if ``through_ops``."""
    x, weight, idx, act = saved
    need_x, need_w, need_b = needs[:3]
    need_b = need_b and has_bias
    if need_x:
        full = torch.ops.zooscape.conv_pool2x2_backward_full.default if through_ops else conv_pool_backward_full
        dx, dw = full(x, weight, grad, idx, act)
        db = None
        if need_b:
            g = grad if act is None else grad * (act > 0)
            db = g.sum((0, 2, 3)).view(weight.shape[:2])
        return dx, dw if need_w else None, db, None, None
    if through_ops:
        dw, db = torch.ops.zooscape.conv_pool2x2_backward.default(x, weight, grad, idx, act, shared)
    else:
        dw, db = conv_pool_backward(x, weight.shape, grad, idx, shared=shared, bias=need_b, act=act)
    return None, dw if need_w else None, db if need_b else None, None, None


def _conv_pool_setup(ctx, inputs, output) -> None:
    x, weight, bias, shared, relu = inputs
    out, idx = output
    ctx.save_for_backward(x, weight, idx, out if relu else None)
    ctx.has_bias, ctx.shared = bias is not None, shared


def _conv_pool_op_grad(ctx, grad: Tensor, _grad_idx: Tensor | None) -> tuple[Tensor | None, ...]:
    return _grads(grad, ctx.saved_tensors, ctx.needs_input_grad, ctx.has_bias, ctx.shared, through_ops=True)


_conv_pool_op.register_autograd(_conv_pool_op_grad, setup_context=_conv_pool_setup)


class _EagerConvPool(torch.autograd.Function):
    """The same kernels and formulas as the custom op, without its dispatch (the eager path)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, shared: bool,  # type: ignore[override]
                relu: bool) -> Tensor:
        output = conv_pool_forward(x, weight, bias, shared=shared, indices=True, relu=relu)
        _conv_pool_setup(ctx, (x, weight, bias, shared, relu), output)
        return output[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return _grads(grad, ctx.saved_tensors, ctx.needs_input_grad, ctx.has_bias, ctx.shared, through_ops=False)


def _traced(x: Tensor) -> bool:
    """Whether a compiler or tracer is looking (dynamo, export, make_fx, fake tensors, any dispatch mode)."""
    return torch.compiler.is_compiling() or type(x) is not Tensor or _get_current_dispatch_mode() is not None


class ConvPool2x2:
    """The fused kernels with autograd. Call as ``ConvPool2x2.apply(x, weight, bias, shared, relu)``; ``bias`` may
    be ``None``; ``shared`` and ``relu`` as in :func:`conv_pool_forward`. Weight and bias gradients always; the
    input gradient only for inputs that satisfy :func:`supports_input_grad` (checked here). Once differentiable.

    Under ``torch.compile``, ``torch.export``, fx tracing or fake tensors this is the custom op
    ``torch.ops.zooscape.conv_pool2x2`` (with its fake implementation and autograd formula; gradients through
    ``zooscape::conv_pool2x2_backward`` / ``_backward_full``); eager calls skip the custom-op dispatch and run the
    same kernels and formulas through a plain ``torch.autograd.Function``.

    With ``relu``, an output that is not positive passes no gradient (``threshold_backward``); the kernels then skip
    that output's contributions instead of multiplying them by zero, which differs from PyTorch only if weights or
    inputs are infinite or NaN (where PyTorch's gradient would be NaN rather than 0)."""

    @staticmethod
    def apply(x: Tensor, weight: Tensor, bias: Tensor | None = None, shared: bool = False,
              relu: bool = False) -> Tensor:
        """``[B, G*C, H, W]`` (or shared ``[B, C, H, W]``) -> ``[B, G*O, H', W']`` channels-last, as
        :func:`conv_pool_forward`."""
        if x.requires_grad and (shared or not supports_input_grad(x, weight)):
            raise ValueError("ConvPool2x2 computes an input gradient only for channels-last inputs with a multiple "
                             "of 8 channels per model")
        if _traced(x):
            return torch.ops.zooscape.conv_pool2x2.default(x, weight, bias, shared, relu)[0]
        return _EagerConvPool.apply(x, weight, bias, shared, relu)
