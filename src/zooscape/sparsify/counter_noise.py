"""Counter-based Gaussian noise for variational-dropout twins: Philox-4x32-10 + Box-Muller, in PyTorch and native.

A twin's noise (the ``"weight"`` estimator's ``eps`` per weight, the ``"local"`` estimator's per pre-activation) is
a pure function of a 64-bit key, the step within the epoch and the element index, so the native kernels
(``train/_native/ard.c``) evaluate it inline (never materialised before the sample) and any population, parameter
layout or device computes the same numbers. Each layer's key is drawn from the model's per-epoch dropout generator
when the layer's stream is created (the first training step of an epoch; :class:`CounterStream`), so a resumed run
continues identically.

Definition (element ``e`` of a model's weight in row-major order, or of its pre-activations in ``[B, H, W, C]`` /
row-major order, at step ``s``, key ``(k0, k1)``, ``tag`` :data:`TAG_WEIGHT` or :data:`TAG_LOCAL`):

- counter ``j = (e // 32) * 8 + e % 8``; Philox-4x32-10 (Salmon, Moraes, Dror & Shaw 2011, Random123) of the
  counter ``(j mod 2^32, s, tag, j // 2^32)`` with key ``(k0, k1)`` gives four 32-bit words ``x0..x3``; element
  ``e`` takes result ``k = (e % 32) // 8`` of the two Box-Muller pairs below;
- Box-Muller (Box & Muller 1958): ``r = sqrt(-2 log u)`` with ``u = ((x0 >> 8) | 1) 2^-24`` (so ``|z| <= 5.8``),
  angle ``2 pi (x1 >> 8) 2^-24`` reduced exactly in integers to a quadrant ``q`` and ``a = f (pi/2) 2^-22`` in
  ``[-pi/4, pi/4]``; ``k = 0``: ``r cos``, ``1``: ``r sin`` (of ``x0, x1``), ``2``: ``r cos``, ``3``: ``r sin`` (of
  ``x2, x3``).

The PyTorch version (:func:`philox4x32`, :func:`counter_normal` with kernels off, any device) computes the
integers exactly (uint32 words held in int64; a product's high word from the wrapping int64 product, checked once
per device against a known answer, else from 16-bit halves) and the floats to float32 rounding of the native ones
(only ``log``, ``sin`` and ``cos`` are different polynomials). Why Philox: the counter-based generator of
Random123, cuRAND and PyTorch's CUDA RNG; it passes BigCrush, needs only 32-bit multiplies (AVX2 has them, not
64-bit ones) and its keys are independent streams by construction.

References:
    Salmon, Moraes, Dror & Shaw (2011), "Parallel random numbers: as easy as 1, 2, 3", SC'11;
    Box & Muller (1958), "A note on the generation of random normal deviates".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import _native_ard

__all__ = ["TAG_LOCAL", "TAG_WEIGHT", "CounterNoise", "CounterStream", "counter_normal", "draw_keys", "local_noise",
           "philox4x32"]

PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
ROUNDS = 10
TAG_WEIGHT = 0
"""The counter's third word for weight noise (``"weight"`` estimator)."""
TAG_LOCAL = 1
"""The counter's third word for pre-activation noise (``"local"`` estimator)."""
_MASK32 = 0xFFFFFFFF
_HALF_PI_2M22 = math.pi / 2 / 4194304.0
_CPU_CHUNK = 1 << 16  # counters per chunk of the PyTorch generator on the CPU (all rows and steps together)


def _mulhilo(a: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """``(hi, lo)`` 32-bit words of ``a * m`` for uint32 values held in int64 (``a``: any shape, ``m`` broadcast);
    ``a`` is split into 16-bit halves so that no product exceeds 2^49 (no reliance on wrapping overflow)."""
    x = (a & 0xFFFF) * m
    y = (a >> 16) * m
    hi = (y + (x >> 16)) >> 16
    lo = (((y & 0xFFFF) << 16) + x) & _MASK32
    return hi, lo


def _philox_split(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: Tensor, k1: Tensor,
                  rounds: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox with every product split into 16-bit halves (exact on any backend; about 6x slower)."""
    for r in range(rounds):
        hi0, lo0 = _mulhilo(c0, torch.tensor(PHILOX_M[0], dtype=torch.int64, device=c0.device))
        hi1, lo1 = _mulhilo(c2, torch.tensor(PHILOX_M[1], dtype=torch.int64, device=c2.device))
        kr0, kr1 = (k0 + PHILOX_W[0] * r) & _MASK32, (k1 + PHILOX_W[1] * r) & _MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ kr0, lo1, hi0 ^ c3 ^ kr1, lo0
    return c0, c1, c2, c3


def _philox_wrap(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: Tensor, k1: Tensor,
                 rounds: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox with one int64 product per word (its bits 0..63 are the uint64 product's when int64 multiplication
    wraps, as on PyTorch's CPU and CUDA backends; :func:`_wraps` checks it once per device)."""
    shape = torch.broadcast_shapes(c0.shape, c1.shape, c2.shape, c3.shape, k0.shape, k1.shape)
    for r in range(rounds):
        p0, p1 = c0 * PHILOX_M[0], c2 * PHILOX_M[1]
        if r == 0:
            p0, p1 = p0.expand(shape).contiguous(), p1.expand(shape).contiguous()
        kr0, kr1 = (k0 + PHILOX_W[0] * r) & _MASK32, (k1 + PHILOX_W[1] * r) & _MASK32
        # c1, c3 (the last products) keep their high bits: masked once after the xors
        c0 = (p1 >> 32).bitwise_xor_(c1).bitwise_xor_(kr0).bitwise_and_(_MASK32)
        c2 = (p0 >> 32).bitwise_xor_(c3).bitwise_xor_(kr1).bitwise_and_(_MASK32)
        c1, c3 = p1, p0
    return c0, c1 & _MASK32, c2, c3 & _MASK32


_WRAPS: dict[str, bool] = {}
_KAT = ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD))


def _wraps(device: torch.device) -> bool:
    """Whether int64 multiplication wraps on ``device`` (checked once with Random123's all-ones known answer)."""
    key = str(device)
    if key not in _WRAPS:
        ctr, k, want = (torch.tensor(v, dtype=torch.int64, device=device) for v in _KAT)
        got = _philox_wrap(*ctr, *k, rounds=ROUNDS)
        _WRAPS[key] = bool(torch.equal(torch.stack(got).cpu(), want.cpu()))
    return _WRAPS[key]


def philox4x32(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: Tensor, k1: Tensor,
               rounds: int = ROUNDS) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox-4x32-``rounds`` (Salmon et al. 2011) of the counters ``(c0, c1, c2, c3)`` with keys ``(k0, k1)``:
    int64 tensors holding uint32 values, broadcast together; returns the four output words (int64, uint32 values).
    Matches Random123's known-answer vectors."""
    fn = _philox_wrap if _wraps(c0.device) else _philox_split
    return fn(c0, c1, c2, c3, k0, k1, rounds)


def _box_muller(xa: Tensor, xb: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(r cos, r sin)`` from the radius words ``xa`` and the angle words ``xb`` (as the native kernel)."""
    u = ((xa >> 8) | 1).to(torch.float32) * 2.0 ** -24
    r = torch.sqrt(torch.log(u) * -2.0)
    v = xb >> 8
    q = (v + (1 << 21)) >> 22
    a = (v - (q << 22)).to(torch.float32) * torch.tensor(_HALF_PI_2M22, dtype=torch.float32)
    s, c = torch.sin(a), torch.cos(a)
    # rotate by q pi/2: (cos, sin) = (c C - s S, s C + c S), C, S = cos, sin(q pi/2) in {-1, 0, 1} (exact)
    qf = (q & 3).to(torch.float32)
    odd = (q & 1).to(torch.float32)
    cq, sq = (1.0 - qf) * (1.0 - odd), (2.0 - qf) * odd  # (1, 0, -1, 0) and (0, 1, 0, -1) for q = 0..3
    return (r * (c * cq - s * sq)).to(dtype), (r * (s * cq + c * sq)).to(dtype)


def _torch_normal(keys: Tensor, steps: Tensor, numel: int, tag: int, dtype: torch.dtype) -> Tensor:
    """The PyTorch generator: ``[N, S, numel]`` for the ``S`` steps ``steps`` (int64 ``[S]``) at once (one set of
    tensor operations for a block of steps: on a GPU the launches, not the arithmetic, are the cost); on the CPU in
    chunks of counters that stay in cache."""
    n, s, blocks = keys.shape[0], steps.numel(), -(-numel // 32)
    dev = keys.device
    out = torch.empty(n, s, blocks, 4, 8, dtype=dtype, device=dev)
    k0, k1 = keys[:, 0].view(n, 1, 1), keys[:, 1].view(n, 1, 1)
    c1, c2 = steps.to(device=dev, dtype=torch.int64).view(1, s, 1), torch.full((), tag, dtype=torch.int64, device=dev)
    per = blocks if dev.type != "cpu" else max(1, _CPU_CHUNK // (8 * n * s))
    for b0 in range(0, blocks, per):
        b1 = min(blocks, b0 + per)
        j = torch.arange(b0 * 8, b1 * 8, dtype=torch.int64, device=dev).view(1, 1, -1)
        x0, x1, x2, x3 = philox4x32(j & _MASK32, c1, c2, j >> 32, k0, k1)
        z = (*_box_muller(x0, x1, dtype), *_box_muller(x2, x3, dtype))
        out[:, :, b0:b1] = torch.stack([zk.reshape(n, s, b1 - b0, 8) for zk in z], 3)
    return out.view(n, s, blocks * 32)[:, :, :numel]


def _block_steps(numel: int) -> int:
    """Steps of noise the PyTorch generator makes at once for a layer of ``numel`` weights per model (up to 64, at
    most about 64k numbers per model); only a cost choice: a step's numbers do not depend on it."""
    return max(1, min(64, (1 << 16) // max(1, numel)))


def counter_normal(keys: Tensor, step: int, numel: int, *, tag: int = TAG_WEIGHT,
                   dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """Standard normal noise ``[N, numel]`` of the streams ``keys`` (``[N, 2]`` int64, 32-bit words) at ``step``:
    row ``n`` depends only on ``keys[n]``, ``step``, ``tag`` and the element index (see the module docstring).
    Native on the CPU in float32 when the kernels are available, else PyTorch (any device, same numbers to float32
    rounding)."""
    if not 0 <= step < 2 ** 32 or not 0 <= tag < 2 ** 32:
        raise ValueError(f"step and tag must be in [0, 2^32), got {step}, {tag}")
    device = torch.device(device) if device is not None else keys.device
    if device.type == "cpu" and dtype == torch.float32 and keys.device.type == "cpu" and numel > 0:
        out = _native_ard.philox_normal(keys, step, numel, tag)
        if out is not None:
            return out
    steps = torch.tensor([step], dtype=torch.int64)
    return _torch_normal(keys.to(device), steps, numel, tag, dtype)[:, 0]


def draw_keys(generators: list[torch.Generator] | None, n: int = 1, device: torch.device | str = "cpu") -> Tensor:
    """One stream key per generator (``[len(generators), 2]`` int64, two 32-bit words), one draw from each; with no
    generators, ``n`` keys from PyTorch's global generator. On ``device`` (CPU by default)."""
    if generators is None:
        return torch.randint(0, 1 << 32, (n, 2), dtype=torch.int64).to(device)
    return torch.stack([torch.randint(0, 1 << 32, (2,), generator=g, device=g.device, dtype=torch.int64).to(device)
                        for g in generators])


@dataclass(frozen=True)
class CounterNoise:
    """The standard normal noise of one step of N streams, not materialised: ``keys`` ``[N, 2]`` (int64, on the
    CPU), ``step`` and ``tag``. :meth:`tensor` materialises it; the native sample kernel evaluates it inline.
    ``cache`` (its stream's): where the PyTorch generator keeps the block of steps it made at once."""

    keys: Tensor
    step: int
    tag: int = TAG_WEIGHT
    cache: dict | None = field(default=None, compare=False, repr=False)

    def tensor(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> Tensor:
        """The noise as a tensor ``[N, *shape]`` (:func:`counter_normal`; the PyTorch generator makes a block of
        :func:`_block_steps` steps at once when the noise has a cache)."""
        numel = math.prod(shape)
        device = torch.device(device) if device is not None else self.keys.device
        n = self.keys.shape[0]
        if self.cache is None or (device.type == "cpu" and dtype == torch.float32 and _native_ard.available()):
            return counter_normal(self.keys, self.step, numel, tag=self.tag, dtype=dtype,
                                  device=device).reshape(n, *shape)
        per = _block_steps(numel)
        first = self.step - self.step % per
        ident = (numel, self.tag, dtype, str(device))
        got = self.cache.get(ident)
        if got is None or got[0] != first:
            steps = torch.arange(first, min(first + per, 1 << 32), dtype=torch.int64)
            got = self.cache[ident] = (first, _torch_normal(self.keys.to(device), steps, numel, self.tag, dtype))
        return got[1][:, self.step - first].reshape(n, *shape)


class CounterStream:
    """A layer's weight noise over one epoch: keys drawn once from the models' generators (one key per model), then
    one :class:`CounterNoise` per step (step 0, 1, ...). ``ident`` says which generators it was made for (it holds
    them, so their ids are not reused while it lives)."""

    def __init__(self, generators: list[torch.Generator] | None, ident: tuple, n: int = 1,
                 tag: int = TAG_WEIGHT) -> None:
        self.generators, self.ident, self.tag = generators, ident, tag
        self.keys = draw_keys(generators, n)
        self.step = 0
        self.cache: dict | None = {} if generators is not None else None  # (fresh keys every step without them)

    def next(self) -> CounterNoise:
        noise = CounterNoise(self.keys, self.step, self.tag, cache=self.cache)
        self.step += 1
        return noise


def local_noise(noise: CounterNoise, shape: tuple[int, ...], dim: int, like: Tensor) -> Tensor:
    """Pre-activation noise of the ``"local"`` estimator in a population's layout: ``shape`` (``like``'s) holds
    ``N = noise.keys.shape[0]`` models along ``dim``; model ``n``'s stream runs over its own pre-activations in
    ``[B, H, W, C]`` order for 4-D maps (``dim`` 1), else in the row-major order of its block. Same dtype, device
    and (channels-last or contiguous) memory format as ``like``. A single layer is the case ``N = 1``."""
    n = noise.keys.shape[0]
    if len(shape) == 4 and dim == 1:  # [B, N*C, H, W]: per model [B, H, W, C]
        b, nc, h, w = shape
        per = noise.tensor((b, h, w, nc // n), like.dtype, like.device)  # [N, B, H, W, C]
        out = per.permute(1, 2, 3, 0, 4).reshape(b, h, w, nc).permute(0, 3, 1, 2)
        if not like.is_contiguous(memory_format=torch.channels_last) or like.is_contiguous():
            out = out.contiguous()
        return out
    per_shape = list(shape)
    per_shape[dim] //= n
    per = noise.tensor(tuple(per_shape), like.dtype, like.device)  # [N, *per_shape]
    return torch.cat(per.unbind(0), dim) if n > 1 else per[0]
