"""Hessian and Fisher metrics of a whole population of models per pass, through the trainer's stacked layers.

N models of one architecture become one :class:`zooscape.train.Population` (each parameter stacked along a leading
model axis, the models folded into the channel dimension, so that models never mix). The sum of the N models' mean
losses then has a *block-diagonal* Hessian whose block n is model n's Hessian, so one double-backward pass through
the population multiplies every model's Hessian by its own vector: ``[N, P] -> [N, P]``. The batched routines below
run Lanczos, power iteration, Hutchinson and Hutch++ on all N models at once, with per-model scalars (breakdowns,
convergence and early stops are per model), and return one result per model -- the same dataclasses, and the same
numbers up to float rounding, as the per-model functions (:func:`~zooscape.landscape.hessian_operator`,
:func:`~zooscape.landscape.top_eigenvalues`, :func:`~zooscape.landscape.trace`,
:func:`~zooscape.landscape.fisher_trace_estimate`) given the same seed: every model gets the probe and start vectors
(or label draws) that the per-model path would draw for it alone.

Like the per-model path, everything is evaluated in eval mode (BatchNorm uses its running statistics) on copies:
the models are not modified. The population is built with the trainer's plain PyTorch layers: its native kernels
and fused pools (custom autograd functions without double backward) are switched off with
:func:`zooscape.train._flags.override` while it runs.

The Fisher trace of a population is :func:`zooscape.landscape.population_fisher.population_fisher_trace_estimate`.

Memory grows linearly with N (a population holds N models' autograd graphs): pass at most as many models as fit,
e.g. with :func:`population_chunks` (``zooscape metrics run`` uses its ``chunk_size``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from zooscape.landscape._hvp import (
    Batch,
    LinearOperator,
    LossFn,
    as_generator,
    gaussian,
    make_batches,
    model_device,
    rademacher,
)
from zooscape.landscape.hessian import EigenResult, check_power_iteration, lanczos, lanczos_steps, ritz_pairs
from zooscape.landscape.population_memory import HESSIAN_MEMORY_BUDGET, population_chunk_size, population_chunks
from zooscape.landscape.population_plain import hessian_forward
from zooscape.landscape.stochastic import TraceEstimate, check_hutchinson
from zooscape.train import _flags
from zooscape.train.population import Population

__all__ = [
    "PopulationHessianOperator",
    "HESSIAN_MEMORY_BUDGET",
    "population_chunk_size",
    "population_chunks",
    "population_hessian_operator",
    "population_top_eigenvalues",
    "population_trace",
]

@contextlib.contextmanager
def _plain_layers() -> Iterator[None]:
    """The population's plain, twice-differentiable PyTorch paths (no native kernels or fused pools)."""
    with _flags.override(native_kernels=False):
        yield


def _build(models: Sequence[nn.Module], device: torch.device | str | None,
           dtype: torch.dtype | None) -> tuple[Population, list[str], list[str], torch.device]:
    """An eval-mode population copy of ``models`` and its differentiated / held-fixed parameter names."""
    if len(models) == 0:
        raise ValueError("models is empty: a population needs at least one model")
    device = model_device(models[0]) if device is None else torch.device(device)
    named = list(models[0].named_parameters())
    chosen = [n for n, p in named if p.requires_grad]
    if not chosen:
        raise ValueError("models[0] has no parameters to differentiate (none requires grad)")
    for i, m in enumerate(models[1:], 1):
        other = [n for n, p in m.named_parameters() if p.requires_grad]
        if other != chosen:
            raise ValueError(f"models[{i}] differentiates other parameters than models[0] "
                             f"({sorted(set(other) ^ set(chosen))[:5]})")
    with _plain_layers(), _flags.override(channels_last=False):  # vmap cannot batch channels-last tensors
        pop = Population(models)
    pop = pop.to(device=device)
    if dtype is not None:
        pop = pop.to(dtype=dtype)
    pop.eval()
    for p in pop.parameters():
        p.requires_grad_(False)
    own = {n for n, _ in pop.net.named_parameters()}
    missing = [n for n in chosen if n not in own]
    if missing:
        raise TypeError(f"the population of {type(models[0]).__name__} has no stacked parameter for {missing[:5]}")
    fixed = [n for n, _ in named if n not in chosen]
    return pop, chosen, fixed, device


class _Layout:
    """Stacked parameters ``{name: [N, *shape]}`` <-> per-model flat vectors ``[N, P]`` (the per-model order)."""

    def __init__(self, pop: Population, names: Sequence[str]) -> None:
        params = dict(pop.net.named_parameters())
        self.names = tuple(names)
        self.shapes = tuple(tuple(params[n].shape[1:]) for n in names)
        self.numels = tuple(int(math.prod(s)) for s in self.shapes)
        self.dim = int(sum(self.numels))
        self.size = pop.size
        self.flat = torch.cat([params[n].detach().reshape(pop.size, -1) for n in names], dim=1)  # [N, P]

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """``[..., N, P]`` -> ``{"net." + name: [..., N, *shape]}`` (keys as :func:`functional_call` wants them)."""
        lead = tuple(flat.shape[:-1])
        chunks = torch.split(flat, list(self.numels), dim=-1)
        return {"net." + n: c.reshape(lead + s) for n, c, s in zip(self.names, chunks, self.shapes)}


def _shared_forward(pop: Population, tensors: dict[str, Tensor], x: Tensor) -> Tensor:
    """Every model on the same batch ``x`` ``[B, *in]`` at the given stacked parameters: ``[B, N, K]``."""
    xx = x.unsqueeze(1).expand(x.shape[0], pop.size, *x.shape[1:])
    return functional_call(pop, tensors, (xx,), strict=False)


class PopulationHessianOperator:
    """The Hessians of N models' mean losses, multiplied all at once: a block-diagonal ``NP x NP`` operator.

    ``matvec`` maps per-model vectors ``[N, P]`` to ``[N, P]`` (row n multiplied by model n's Hessian) with one
    double-backward pass through the stacked population; ``matmat`` does the same for a block ``[m, N, P]`` (vmapped
    over m). Parameters are flattened in each model's ``named_parameters()`` order, as
    :class:`~zooscape.landscape.HessianOperator` does, so row n is exactly what model n's per-model operator takes.
    With ``batch_size`` the data are processed in chunks weighted by their share of the samples (the exact
    full-data Hessian); with one chunk the linearised gradient (its autograd graph) is cached between calls, as the
    per-model operator does. Evaluated in eval mode on a copy (the models are not modified).

    Args:
        models: N >= 1 models of one architecture (same class, parameter names and shapes).
        loss_fn: ``loss_fn(output [B, K], target [B, ...]) -> scalar`` mean loss, applied to each model's output.
        x: inputs ``[B, *in]`` shared by every model.
        y: targets ``[B, ...]``.
        batch_size: data chunk size (``None``: one batch).
        device: where to compute (default: the first model's device).
        dtype: compute dtype (default: the models'), e.g. ``torch.float64``.
        cache_graph: keep each chunk's linearised gradient between calls (default: when the data are one chunk).
        layers: ``"auto"`` (default), ``"plain"`` or ``"population"``: the forward differentiated twice
            (:func:`~zooscape.landscape.population_plain.hessian_forward`: plain batched GEMMs where the architecture
            has them, else the trainer's population layers).

    Attributes:
        size: N. dim: P (one model's parameter count). num_matvecs: products per model so far. layers: the forward
        chosen, ``"plain"`` or ``"population"``.

    References:
        Pearlmutter, 1994 (fast exact multiplication by the Hessian); Yao et al., 2020 (PyHessian).
    """

    def __init__(self, models: Sequence[nn.Module], loss_fn: LossFn, x: Tensor, y: Tensor, *,
                 batch_size: int | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, cache_graph: bool | None = None, layers: str = "auto") -> None:
        self.pop, names, _, dev = _build(models, device, dtype)
        self.layout = _Layout(self.pop, names)
        self.size = self.pop.size
        self.dim = self.layout.dim
        self.params = self.layout.flat
        self.dtype = self.params.dtype
        self.device = self.params.device
        self.batches = make_batches(x, y, batch_size, device=dev, dtype=dtype)
        self.loss_fn = loss_fn
        self.num_matvecs = 0
        self.cache_graph = len(self.batches) == 1 if cache_graph is None else bool(cache_graph)
        self._graphs: list[tuple[Tensor, Tensor] | None] = [None] * len(self.batches)
        self._vector_loss: bool | None = None
        with _plain_layers():
            self._forward, self.layers = hessian_forward(self.pop, self.batches[0].x, layers)

    def _losses(self, flat: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Per-model mean losses ``[N]`` at stacked flat parameters ``[N, P]``."""
        out = self._forward(self.layout.unflatten(flat), x)
        if self._vector_loss is not False:  # one vmapped loss over the model axis: N times fewer graph nodes
            try:
                losses = vmap(self.loss_fn, in_dims=(1, None))(out, y)
            except Exception:  # noqa: BLE001 -- a loss vmap cannot batch: the per-model loop below
                losses = None
            if losses is not None and tuple(losses.shape) == (self.size,):
                self._vector_loss = True
                return losses
            self._vector_loss = False
        losses = [self.loss_fn(out[:, n], y) for n in range(self.size)]
        for v in losses:
            if v.ndim != 0:
                raise ValueError(f"loss_fn must return a scalar (mean) loss, got shape {tuple(v.shape)}")
        return torch.stack(losses)

    def _linearised_gradient(self, b: Batch) -> tuple[Tensor, Tensor]:
        """``(params, g)``: leaf flat parameters ``[N, P]`` and the summed losses' gradient ``[N, P]`` with its graph
        (``create_graph``): ``autograd.grad(g, params, v)`` is then all N models' Hessian-vector products."""
        params = self.params.detach().requires_grad_(True)
        with torch.enable_grad():
            total = self._losses(params, b.x, b.y).sum()
            if not total.requires_grad:
                return params, torch.zeros_like(params)
            (g,) = torch.autograd.grad(total, params, create_graph=True)
        return params, g

    def loss(self) -> Tensor:
        """Mean loss of each model over the data, Tensor ``[N]``."""
        with _plain_layers(), torch.no_grad():
            return sum(b.weight * self._losses(self.params, b.x, b.y) for b in self.batches)

    def gradient(self) -> Tensor:
        """Gradient of each model's mean loss, Tensor ``[N, P]``."""
        with _plain_layers():
            return sum(b.weight * grad(lambda p, b=b: self._losses(p, b.x, b.y).sum())(self.params)
                       for b in self.batches)

    def matmat(self, vectors: Tensor) -> Tensor:
        """Hessian-vector products of a block: ``[m, N, P] -> [m, N, P]`` (``[i, n]`` times model n's Hessian)."""
        if vectors.ndim != 3 or tuple(vectors.shape[1:]) != (self.size, self.dim):
            raise ValueError(f"vectors must have shape [m, {self.size}, {self.dim}], got {tuple(vectors.shape)}")
        vectors = vectors.to(device=self.device, dtype=self.dtype)
        m = int(vectors.shape[0])
        self.num_matvecs += m
        out = torch.zeros_like(vectors)
        with _plain_layers():
            for i, b in enumerate(self.batches):
                graph = self._graphs[i]
                if graph is None:
                    graph = self._linearised_gradient(b)
                    if self.cache_graph:
                        self._graphs[i] = graph
                params, g = graph
                if not g.requires_grad:  # the loss is at most linear in the parameters: a zero Hessian
                    continue
                # plain autograd over the cached graph, one double-backward pass per probe (a loop, not vmap: vmap
                # over the backward was slower per probe, see bench/RESULTS.md)
                keep = self.cache_graph
                for j in range(m):
                    (hv,) = torch.autograd.grad(g, params, vectors[j], retain_graph=keep or j < m - 1,
                                                allow_unused=True)
                    if hv is not None:
                        out[j] += b.weight * hv
        return out

    def matvec(self, vectors: Tensor) -> Tensor:
        """One vector per model: ``[N, P] -> [N, P]``."""
        return self.matmat(vectors.unsqueeze(0))[0]

    def unflatten(self, vector: Tensor) -> dict[str, Tensor]:
        """Split one model's flat vector ``[P]`` into parameter-shaped tensors (names as the model's)."""
        return {k[4:]: v[0] for k, v in self.layout.unflatten(vector.unsqueeze(0)).items()}


def population_hessian_operator(models: Sequence[nn.Module], loss_fn: LossFn, x: Tensor, y: Tensor, *,
                                batch_size: int | None = None, device: torch.device | str | None = None,
                                dtype: torch.dtype | None = None,
                                cache_graph: bool | None = None, layers: str = "auto") -> PopulationHessianOperator:
    """The Hessians of N models of one architecture as one block-diagonal operator ``[N, P] -> [N, P]``.

    See :class:`PopulationHessianOperator`; the population counterpart of
    :func:`~zooscape.landscape.hessian_operator` (same flat parameter order, same eval mode, same data chunks).

    Args:
        models: N models of one architecture.
        loss_fn: ``loss_fn(output [B, K], target) -> scalar`` mean loss.
        x: inputs ``[B, *in]`` (shared by every model).
        y: targets ``[B, ...]``.
        batch_size: data chunk size (``None``: one batch).
        device: compute device (default: the first model's).
        dtype: compute dtype (default: the models').
        cache_graph: cache the linearised gradient between products (default: one data chunk).
        layers: ``"auto"``, ``"plain"`` or ``"population"`` (see :class:`PopulationHessianOperator`).

    Returns:
        :class:`PopulationHessianOperator` with ``size`` N and ``dim`` P.

    References:
        Pearlmutter, 1994; Yao et al., 2020 (PyHessian).
    """
    return PopulationHessianOperator(models, loss_fn, x, y, batch_size=batch_size, device=device, dtype=dtype,
                                     cache_graph=cache_graph, layers=layers)


class _Rowwise(LinearOperator):
    """Row n of a ``[N, P]`` block multiplied by model n's Hessian: N independent Lanczos runs, one per model."""

    def __init__(self, op: PopulationHessianOperator) -> None:
        self.op, self.dim, self.dtype, self.device, self.num_matvecs = op, op.dim, op.dtype, op.device, 0

    def matmat(self, vectors: Tensor) -> Tensor:
        return self.op.matvec(self._check(vectors))


def _check_seed(seed: int | None) -> int:
    if seed is None:
        return 0
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None (each model draws from its own copy), got {type(seed)!r}")
    return seed


def _population_lanczos_eigenvalues(op: PopulationHessianOperator, k: int, which: str, num_steps: int | None,
                                    tol: float, seed: int) -> list[EigenResult]:
    num_steps = lanczos_steps(k, which, num_steps, op.dim)
    start = rademacher((1, op.dim), as_generator(seed), op.dtype, op.device).expand(op.size, op.dim)
    run = lanczos(_Rowwise(op), num_steps, start=start, keep_basis=True)
    vectors, values = [], []
    for n in range(op.size):
        value, vector = ritz_pairs(run, n, k, which, op.dtype)
        vectors.append(vector)
        values.append(value)
    v = torch.stack(vectors, 1)  # [k, N, P]
    val = torch.stack(values, 1).to(v.device)  # [k, N]
    residuals = (op.matmat(v) - val[..., None] * v).norm(dim=2).cpu()  # [k, N]
    out = []
    for n in range(op.size):
        conv = bool((residuals[:, n] <= tol * val[:, n].cpu().abs().clamp_min(1e-12)).all())
        out.append(EigenResult(val[:, n].cpu(), v[:, n], residuals[:, n], int(run.lengths[n]) + k, conv))
    return out


def _population_power_iteration(op: PopulationHessianOperator, k: int, max_iter: int, tol: float,
                                seed: int) -> list[EigenResult]:
    check_power_iteration(k, op.dim, max_iter, tol)
    gen = as_generator(seed)
    n_models = op.size
    found: list[Tensor] = []  # [N, P] per eigenpair found
    values = [[0.0] * k for _ in range(n_models)]
    residuals = [[0.0] * k for _ in range(n_models)]
    matvecs = [0] * n_models
    all_converged = [True] * n_models

    def project(v: Tensor) -> Tensor:
        for u in found:
            v = v - (u * v).sum(dim=1, keepdim=True) * u
        return v

    for i in range(k):
        v = project(gaussian((op.dim,), gen, op.dtype, op.device).expand(n_models, op.dim).clone())
        v = v / v.norm(dim=1, keepdim=True)
        value: list[float | None] = [None] * n_models
        res = [float("nan")] * n_models
        active = [True] * n_models
        converged = [False] * n_models
        for _ in range(max_iter):
            if not any(active):
                break
            w = project(op.matvec(v))
            new = (v * w).sum(dim=1)
            res_new = (w - new[:, None] * v).norm(dim=1).tolist()
            norms = w.norm(dim=1)
            new_l, norms_l = new.tolist(), norms.tolist()
            for n in range(n_models):
                if not active[n]:
                    continue
                matvecs[n] += 1
                res[n] = res_new[n]
                old = value[n]
                value[n] = new_l[n]
                if old is not None and abs(new_l[n] - old) <= tol * (abs(old) + 1e-12):
                    converged[n], active[n] = True, False
                elif norms_l[n] == 0.0:
                    converged[n], active[n] = True, False
                else:
                    v[n] = w[n] / norms[n]
        found.append(v)
        for n in range(n_models):
            values[n][i] = value[n]
            residuals[n][i] = res[n]
            all_converged[n] &= converged[n]
    return [EigenResult(torch.tensor(values[n], dtype=op.dtype), torch.stack([u[n] for u in found]),
                        torch.tensor(residuals[n], dtype=op.dtype), matvecs[n], all_converged[n])
            for n in range(n_models)]


def population_top_eigenvalues(op: PopulationHessianOperator, k: int = 1, *, method: str = "lanczos",
                               which: str = "LA", num_steps: int | None = None, max_iter: int = 100,
                               tol: float = 1e-3, seed: int | None = None) -> list[EigenResult]:
    """Top-k Hessian eigenpairs of every model of a population, all models per product.

    Lanczos runs N independent Krylov iterations (one per model, each with its own breakdown test) whose products
    are one population pass each; power iteration keeps iterating a model until its own estimate converges. Each
    model starts from the vector the per-model function draws with ``seed``, so result n equals
    ``top_eigenvalues(hessian_operator(models[n], ...), k, ..., seed=seed)`` up to float rounding.

    Args:
        op: a :class:`PopulationHessianOperator` (N models of dimension P).
        k: eigenpairs per model.
        method: ``"lanczos"`` (default) or ``"power"``.
        which: for Lanczos: ``"LA"`` (largest algebraic, default), ``"LM"`` or ``"SA"``.
        num_steps: Lanczos Krylov dimension (default ``min(P, max(2k + 20, 30))``).
        max_iter: power-iteration iterations per eigenpair.
        tol: relative residual (Lanczos) / relative change (power) tolerance.
        seed: integer seed (default 0).

    Returns:
        list of N :class:`~zooscape.landscape.EigenResult` (eigenvalues ``[k]``, eigenvectors ``[k, P]``), in model
        order; ``num_matvecs`` counts products per model.

    References:
        Lanczos, 1950; Golub and Van Loan, 2013; Yao et al., 2020 (PyHessian); Ghorbani, Krishnan and Xiao, 2019.
    """
    seed = _check_seed(seed)
    if not 1 <= k <= op.dim:
        raise ValueError(f"k must be in [1, {op.dim}], got {k}")
    if method == "lanczos":
        return _population_lanczos_eigenvalues(op, k, which, num_steps, tol, seed)
    if method == "power":
        return _population_power_iteration(op, k, max_iter, tol, seed)
    raise ValueError(f"method must be one of ('lanczos', 'power'), got {method!r}")


def _population_hutchinson(op: PopulationHessianOperator, num_probes: int, block_size: int, tol: float | None,
                           min_probes: int, seed: int) -> list[TraceEstimate]:
    check_hutchinson(num_probes, block_size, tol)
    gen = as_generator(seed)
    n_models = op.size
    blocks: list[Tensor] = []  # [b, N] quadratic forms
    stop: list[int | None] = [None] * n_models
    n = 0
    while n < num_probes:
        b = min(block_size, num_probes - n)
        z = rademacher((b, op.dim), gen, op.dtype, op.device)
        hz = op.matmat(z[:, None].expand(b, n_models, op.dim))
        blocks.append((z[:, None] * hz).sum(dim=2).double().cpu())
        n += b
        if tol is not None and n >= max(min_probes, 2):
            s = torch.cat(blocks)
            for m in range(n_models):
                if stop[m] is None and float(s[:, m].std() / math.sqrt(n)) <= tol * abs(float(s[:, m].mean())):
                    stop[m] = n
            if all(v is not None for v in stop):
                break
    s = torch.cat(blocks)
    out = []
    for m in range(n_models):
        sm = s[:stop[m] or n, m].contiguous()
        out.append(TraceEstimate(float(sm.mean()), float(sm.std() / math.sqrt(len(sm))), len(sm), sm))
    return out


def _population_hutchpp(op: PopulationHessianOperator, num_matvecs: int, seed: int) -> list[TraceEstimate]:
    if num_matvecs < 6:
        raise ValueError(f"num_matvecs must be >= 6 (3 blocks of >= 2), got {num_matvecs}")
    gen = as_generator(seed)
    k = num_matvecs // 3
    n_models, dim = op.size, op.dim
    s = rademacher((k, dim), gen, op.dtype, op.device)
    sketch = op.matmat(s[:, None].expand(k, n_models, dim))  # [k, N, P]
    q, _ = torch.linalg.qr(sketch.permute(1, 2, 0).double())  # [N, P, k]
    qt = q.to(op.dtype).permute(2, 0, 1)  # [k, N, P]
    top = (qt * op.matmat(qt)).sum(dim=(0, 2))  # [N]
    g = rademacher((k, dim), gen, op.dtype, op.device)
    q = q.to(op.dtype)
    gp = g[None] - (g[None] @ q) @ q.transpose(1, 2)  # [N, k, P]
    gt = gp.transpose(0, 1)  # [k, N, P]
    samples = (gt * op.matmat(gt)).sum(dim=2).double().cpu()  # [k, N]
    return [TraceEstimate(float(top[n]) + float(samples[:, n].mean()), float(samples[:, n].std() / math.sqrt(k)),
                          3 * k, samples[:, n].contiguous()) for n in range(n_models)]


def population_trace(op: PopulationHessianOperator, *, method: str = "hutchinson", num_matvecs: int = 100,
                     block_size: int = 10, tol: float | None = None, min_probes: int = 20,
                     seed: int | None = None) -> list[TraceEstimate]:
    """Stochastic Hessian trace of every model of a population (Hutchinson or Hutch++), all models per product.

    Every model gets the Rademacher probes the per-model :func:`~zooscape.landscape.trace` draws with ``seed``, so
    result n equals ``trace(hessian_operator(models[n], ...), ..., seed=seed)`` up to float rounding; with ``tol``
    (Hutchinson) each model stops where it would alone (the others go on).

    Args:
        op: a :class:`PopulationHessianOperator`.
        method: ``"hutchinson"`` (default) or ``"hutch++"``.
        num_matvecs: product budget per model (probes for Hutchinson, >= 6 for Hutch++).
        block_size: Hutchinson probes per block product.
        tol: Hutchinson relative standard-error target (early stop, per model).
        min_probes: probes before ``tol`` may stop a model.
        seed: integer seed (default 0).

    Returns:
        list of N :class:`~zooscape.landscape.TraceEstimate`, in model order.

    References:
        Hutchinson, 1990; Avron and Toledo, 2011; Meyer, Musco, Musco and Woodruff, 2021 (Hutch++).
    """
    seed = _check_seed(seed)
    if method == "hutchinson":
        return _population_hutchinson(op, num_matvecs, block_size, tol, min_probes, seed)
    if method == "hutch++":
        return _population_hutchpp(op, num_matvecs, seed)
    raise ValueError(f"method must be one of ('hutchinson', 'hutch++'), got {method!r}")
