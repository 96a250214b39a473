"""Functional machinery shared by the landscape metrics.

Everything here evaluates a model *functionally*: parameters are taken out of the module as one flat vector,
the loss is computed with :func:`torch.func.functional_call` on detached copies, and the module is put in eval
mode only for the duration of a call. Hence no metric changes the model: BatchNorm running statistics, the
``training`` flags, ``requires_grad`` flags, ``.grad`` fields and hooks are exactly as before.

Hessian-vector products are reverse-over-reverse (``vjp`` of ``grad``) or forward-over-reverse (``jvp`` of
``grad``) through :mod:`torch.func`, batched over probe vectors with :func:`torch.func.vmap`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(output, target) -> scalar``: the *mean* loss over the samples of a batch."""

HVP_MODES = ("rev-rev", "fwd-rev")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's own ``training`` flag afterwards.

    Args:
        model: the module.

    Returns:
        A context manager yielding ``model``.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def as_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """Return a ``torch.Generator``: ``None`` -> seeded with 0, an int -> seeded with it.

    Args:
        generator: a generator, a seed, or ``None``.

    Returns:
        A generator (the given one, unchanged, if one was given).
    """
    if isinstance(generator, torch.Generator):
        return generator
    if generator is None:
        generator = 0
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator)!r}")
    return torch.Generator().manual_seed(generator)


def rademacher(shape: Sequence[int], generator: torch.Generator, dtype: torch.dtype,
               device: torch.device | str) -> Tensor:
    """Draw a tensor of independent +-1 entries.

    Args:
        shape: the output shape.
        generator: source of randomness (drawn on the generator's device, then moved).
        dtype: the output dtype.
        device: the output device.

    Returns:
        Tensor of ``shape`` with entries in {-1, +1}.
    """
    bits = torch.randint(0, 2, tuple(shape), generator=generator, device=generator.device)
    return (bits.to(dtype) * 2 - 1).to(device)


def gaussian(shape: Sequence[int], generator: torch.Generator, dtype: torch.dtype,
             device: torch.device | str) -> Tensor:
    """Draw a tensor of independent standard normal entries.

    Args:
        shape: the output shape.
        generator: source of randomness (drawn on the generator's device, then moved).
        dtype: the output dtype.
        device: the output device.

    Returns:
        Tensor of ``shape``.
    """
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)


@dataclass(frozen=True)
class ParamSpec:
    """Names and shapes of the parameters that make up a flat parameter vector.

    Attributes:
        names: parameter names, in ``model.named_parameters()`` order.
        shapes: their shapes.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def numels(self) -> tuple[int, ...]:
        """Number of entries of each parameter."""
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def dim(self) -> int:
        """Length of the flat vector."""
        return int(sum(self.numels))

    def unflatten(self, vector: Tensor) -> dict[str, Tensor]:
        """Split a flat vector ``[P]`` into a dict of parameter-shaped tensors (views where possible).

        Args:
            vector: Tensor ``[P]``.

        Returns:
            dict name -> Tensor of the parameter's shape.
        """
        if vector.shape[-1] != self.dim:
            raise ValueError(f"vector has {vector.shape[-1]} entries, expected {self.dim} (the parameter count)")
        chunks = torch.split(vector, list(self.numels), dim=-1)
        lead = tuple(vector.shape[:-1])
        return {n: c.reshape(lead + tuple(s)) for n, c, s in zip(self.names, chunks, self.shapes)}

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """Concatenate parameter-shaped tensors into one flat vector ``[P]``.

        Args:
            tensors: mapping name -> tensor; must contain every name of the spec.

        Returns:
            Tensor ``[P]``.
        """
        parts = []
        for name, shape in zip(self.names, self.shapes):
            if name not in tensors:
                raise KeyError(f"missing parameter {name!r}")
            t = tensors[name]
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"parameter {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
            parts.append(t.reshape(-1))
        return torch.cat(parts)


def model_device(model: nn.Module) -> torch.device:
    """Device of a model's first parameter or buffer (CPU for a model with neither).

    Args:
        model: the module.

    Returns:
        The device.
    """
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _cast(t: Tensor, device: torch.device | str, dtype: torch.dtype | None) -> Tensor:
    if dtype is not None and t.is_floating_point():
        return t.detach().to(device=device, dtype=dtype).clone()
    return t.detach().to(device=device).clone()


def functional_state(model: nn.Module, *, param_names: Sequence[str] | None = None,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> tuple[ParamSpec, Tensor, dict[str, Tensor]]:
    """Copy a model's parameters into a flat vector and its other tensors into a dict, without touching it.

    Args:
        model: the module.
        param_names: the parameters that form the vector; default: every parameter with ``requires_grad``.
            The others are held fixed.
        device: where the copies live (default: the model's device).
        dtype: floating dtype of the copies (default: unchanged), e.g. ``torch.float64`` for reference results.

    Returns:
        ``(spec, vector [P], fixed)`` where ``fixed`` maps the names of the remaining parameters and all
        buffers to detached copies.
    """
    device = model_device(model) if device is None else torch.device(device)
    named = dict(model.named_parameters())
    if param_names is None:
        chosen = [n for n, p in named.items() if p.requires_grad]
    else:
        chosen = list(param_names)
        for n in chosen:
            if n not in named:
                raise KeyError(f"param_names: {n!r} is not a parameter of the model "
                               f"(parameters: {sorted(named)[:8]}...)")
        if len(set(chosen)) != len(chosen):
            raise ValueError("param_names contains duplicates")
        order = {n: i for i, n in enumerate(named)}
        chosen.sort(key=order.__getitem__)
    if not chosen:
        raise ValueError("the model has no parameters to differentiate (none requires grad / param_names empty)")
    for n in chosen:
        if not named[n].is_floating_point():
            raise ValueError(f"parameter {n!r} is not floating point ({named[n].dtype})")
    spec = ParamSpec(tuple(chosen), tuple(named[n].shape for n in chosen))
    vector = torch.cat([_cast(named[n], device, dtype).reshape(-1) for n in chosen])
    fixed = {n: _cast(p, device, dtype) for n, p in named.items() if n not in spec.names}
    fixed.update({n: _cast(b, device, dtype) for n, b in model.named_buffers()})
    return spec, vector, fixed


@dataclass(frozen=True)
class Batch:
    """One chunk of the data with its weight ``n_b / N`` in the full-data mean."""

    x: Tensor
    y: Tensor
    weight: float


def make_batches(x: Tensor, y: Tensor, batch_size: int | None, *, device: torch.device | str,
                 dtype: torch.dtype | None) -> list[Batch]:
    """Split ``(x, y)`` into chunks whose weighted mean losses add up to the full-data mean loss.

    Args:
        x: inputs ``[N, ...]``.
        y: targets ``[N, ...]``.
        batch_size: chunk size (``None``: one chunk).
        device: where the chunks live.
        dtype: floating dtype for floating inputs/targets (``None``: unchanged).

    Returns:
        list of :class:`Batch` with weights summing to 1.
    """
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"x and y need a sample dimension, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x has {n} samples but y has {y.shape[0]} (shapes {tuple(x.shape)}, {tuple(y.shape)})")
    if n == 0:
        raise ValueError("x is empty (0 samples)")
    if batch_size is None:
        batch_size = n
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out = []
    for start in range(0, n, batch_size):
        xb = _cast(x[start:start + batch_size], device, dtype)
        yb = _cast(y[start:start + batch_size], device, dtype)
        out.append(Batch(xb, yb, xb.shape[0] / n))
    return out


def loss_function(model: nn.Module, loss_fn: LossFn, spec: ParamSpec,
                  fixed: Mapping[str, Tensor]) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """Build ``f(vector, x, y) -> scalar loss`` evaluating ``model`` functionally at a flat parameter vector.

    Call the result inside :func:`eval_mode` so that BatchNorm uses its running statistics.

    Args:
        model: the module (only its forward code is used).
        loss_fn: ``loss_fn(output, target) -> scalar`` mean loss.
        spec: layout of the flat vector.
        fixed: the other parameters and buffers.

    Returns:
        The function.
    """
    fixed = dict(fixed)

    def f(vector: Tensor, x: Tensor, y: Tensor) -> Tensor:
        tensors = spec.unflatten(vector)
        tensors.update(fixed)
        out = functional_call(model, tensors, (x,), tie_weights=True, strict=False)
        loss = loss_fn(out, y)
        if loss.ndim != 0:
            raise ValueError(f"loss_fn must return a scalar (mean) loss, got shape {tuple(loss.shape)}")
        return loss

    return f


class LinearOperator:
    """A symmetric ``P x P`` linear operator, known through products with blocks of vectors.

    Subclasses implement :meth:`matmat`. ``num_matvecs`` counts the vectors multiplied so far.
    """

    dim: int
    dtype: torch.dtype
    device: torch.device
    num_matvecs: int = 0

    def matmat(self, vectors: Tensor) -> Tensor:
        """Multiply a block of vectors.

        Args:
            vectors: Tensor ``[m, P]`` (one vector per row).

        Returns:
            Tensor ``[m, P]``: row i is ``A @ vectors[i]``.
        """
        raise NotImplementedError

    def matvec(self, vector: Tensor) -> Tensor:
        """Multiply one vector.

        Args:
            vector: Tensor ``[P]``.

        Returns:
            Tensor ``[P]``.
        """
        return self.matmat(vector.unsqueeze(0))[0]

    def _check(self, vectors: Tensor) -> Tensor:
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape [m, {self.dim}], got {tuple(vectors.shape)}")
        self.num_matvecs += int(vectors.shape[0])
        return vectors.to(device=self.device, dtype=self.dtype)


class DenseOperator(LinearOperator):
    """A symmetric matrix held in memory, as a :class:`LinearOperator` (for tests and small problems).

    Args:
        matrix: Tensor ``[P, P]``, symmetric.
    """

    def __init__(self, matrix: Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix must be square, got shape {tuple(matrix.shape)}")
        scale = matrix.abs().max().clamp_min(1e-30)
        if not torch.allclose(matrix, matrix.T, atol=1e-5 * float(scale), rtol=1e-5):
            raise ValueError("matrix must be symmetric")
        self.matrix = matrix
        self.dim = int(matrix.shape[0])
        self.dtype = matrix.dtype
        self.device = matrix.device
        self.num_matvecs = 0

    def matmat(self, vectors: Tensor) -> Tensor:
        """Multiply a block of vectors ``[m, P] -> [m, P]``."""
        return self._check(vectors) @ self.matrix


class HessianOperator(LinearOperator):
    """The Hessian of a model's mean loss with respect to its parameters, as a matrix-free operator.

    With ``batch_size=None`` the Hessian is that of the mean loss on ``(x, y)`` as one batch; with a
    ``batch_size`` the data are processed in chunks and each chunk's Hessian-vector product is weighted by its
    share of the samples, which gives the exact full-data Hessian of the mean loss over all of ``(x, y)``.
    The model is evaluated in eval mode on detached copies of its tensors (no side effects).

    Args:
        model: the network.
        loss_fn: ``loss_fn(output, target) -> scalar`` mean loss (e.g. ``torch.nn.functional.cross_entropy``).
        x: inputs ``[N, ...]``.
        y: targets ``[N, ...]``.
        batch_size: chunk size for the full-data Hessian (``None``: one batch).
        param_names: parameters to differentiate (default: all with ``requires_grad``).
        device: where to compute (default: the model's device).
        dtype: compute dtype (default: the model's), e.g. ``torch.float64``.
        mode: ``"rev-rev"`` (vjp of grad, default) or ``"fwd-rev"`` (jvp of grad).
        chunk_size: most probe vectors pushed through one vmap call (``None``: all).
        cache_graph: keep each chunk's linearised gradient (its autograd graph, like PyHessian's cached
            ``create_graph`` gradient) between calls, so a product costs one double-backward instead of a
            forward, a backward and a double-backward; costs the graph's memory per chunk. Default: cache when
            the data form a single chunk. Only for ``mode="rev-rev"``.

    References:
        Pearlmutter, 1994 (fast exact multiplication by the Hessian).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, *,
                 batch_size: int | None = None, param_names: Sequence[str] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 mode: str = "rev-rev", chunk_size: int | None = None, cache_graph: bool | None = None) -> None:
        if mode not in HVP_MODES:
            raise ValueError(f"mode must be one of {HVP_MODES}, got {mode!r}")
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.model = model
        self.spec, self.params, self._fixed = functional_state(model, param_names=param_names, device=device,
                                                               dtype=dtype)
        self.dim = self.spec.dim
        self.dtype = self.params.dtype
        self.device = self.params.device
        self.batches = make_batches(x, y, batch_size, device=self.device, dtype=dtype)
        self.mode = mode
        self.chunk_size = chunk_size
        self.num_matvecs = 0
        self._f = loss_function(model, loss_fn, self.spec, self._fixed)
        if cache_graph is None:
            cache_graph = len(self.batches) == 1
        self.cache_graph = bool(cache_graph) and mode == "rev-rev"
        self._pullbacks: list[Callable | None] = [None] * len(self.batches)

    def loss(self) -> Tensor:
        """Mean loss over the data at the model's parameters (scalar tensor)."""
        with eval_mode(self.model), torch.no_grad():
            return sum(b.weight * self._f(self.params, b.x, b.y) for b in self.batches)

    def gradient(self) -> Tensor:
        """Gradient of the mean loss, Tensor ``[P]``."""
        with eval_mode(self.model):
            return sum(b.weight * grad(self._f)(self.params, b.x, b.y) for b in self.batches)

    def matmat(self, vectors: Tensor) -> Tensor:
        """Hessian-vector products for a block of vectors ``[m, P] -> [m, P]`` (vmapped over the rows)."""
        vectors = self._check(vectors)
        out = torch.zeros_like(vectors)
        with eval_mode(self.model):
            for i, b in enumerate(self.batches):
                g = grad(lambda p, b=b: self._f(p, b.x, b.y))
                if self.mode == "rev-rev":
                    pullback = self._pullbacks[i]
                    if pullback is None:
                        _, pullback = vjp(g, self.params)
                        if self.cache_graph:
                            self._pullbacks[i] = pullback
                    if vectors.shape[0] == 1:  # a single vector: skip the vmap overhead
                        hv = pullback(vectors[0])[0].unsqueeze(0)
                    else:
                        hv = vmap(lambda v, pb=pullback: pb(v)[0], chunk_size=self.chunk_size)(vectors)
                else:
                    hv = vmap(lambda v, g=g: jvp(g, (self.params,), (v,))[1],
                              chunk_size=self.chunk_size)(vectors)
                out = out + b.weight * hv.detach()
        return out

    def unflatten(self, vector: Tensor) -> dict[str, Tensor]:
        """Split a flat vector ``[P]`` into parameter-shaped tensors (e.g. an eigenvector per layer)."""
        return self.spec.unflatten(vector)
