"""Many curves trained at once: every curve one member of a stacked :class:`zooscape.train.Population`.

:func:`~zooscape.connect.curve_train.train_curve` trains one curve per call: every step runs the template network
once at ``w(t) = sum_j c_j(t) theta_j``. :func:`train_curves` trains ``M`` curves of one architecture together:
a chunk of ``N`` curves is one population of ``N`` members whose weights at each step are the curves' own points,

    ``W[m] = sum_j c_j(t_m) theta[m, j]``   (``W`` ``[N, P]``, ``theta`` ``[N, K, P]``, ``c`` ``[N, K]``),

with ``P`` the parameter count of one network, ``K = num_bends + 2`` nodes and ``t_m`` the position member ``m``
draws at that step. The stacked weights are handed to the population's layers for the forward pass
(``torch.func.functional_call`` on the population network, which is what the layers' ``effective_weight`` hooks
and their biases read: no per-curve model copies), so one grouped/batched forward and backward serves all ``N``
curves. The endpoints stay frozen (unless the curves free them) and only the bends are trained.

Each member trains exactly as :func:`~zooscape.connect.curve_train.train_curve` trains that curve alone (same
seed, same numbers to float tolerance): the data order ``epoch_order(n, seed, epoch)``, the positions
``sample_ts(seed, epoch, steps)``, the regulariser ``0.5 * wd * ||w(t_m)||^2`` at the member's own point, the
learning-rate schedule and per-member optimiser state (:class:`zooscape.train.optim.PopulationOptimizer`, the
optimiser :class:`~zooscape.connect.curve_train.CurveOptimizer` wraps). The loss of the step is the *sum* of the
members' losses, so each member's bends get exactly their own gradient. BatchNorm layers run in training mode with
per-member batch statistics (:class:`zooscape.train.layers.PopBatchNorm`), as the single curve's network does.
Plain ReLU MLPs (classification) take the population trainer's autograd-free step
(:mod:`zooscape.train.manual_mlp`, switch ``manual_mlp``) on the blended weights, and the bends' gradients follow by
the chain rule, ``dL/dtheta[m, j] = c_j(t_m) (dL/dW[m] + wd W[m])``.

Curves are chunked so that a chunk's nodes, optimiser state and activations stay within a memory budget (256 MiB
by default, as :mod:`zooscape.connect.population`). Networks without population layers, and networks with
active Dropout (whose per-member masks are drawn differently from the single network's), are trained one curve at a
time with :func:`~zooscape.connect.curve_train.train_curve`.

References:
    Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity, and Fast
    Ensembling of DNNs".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from zooscape.connect.bn import batch_slices
from zooscape.connect.curve import Curve
from zooscape.connect.curve_train import (
    CurveTrainConfig,
    CurveTrainResult,
    garipov_lr_factor,
    sample_ts,
)
from zooscape.connect.population import _activation_floats, population_supported
from zooscape.data.adapt import get_split, infer_task
from zooscape.train import epoch_order, lr_factor

__all__ = ["curve_train_chunk", "train_curves"]

#: Default memory budget of one chunk of curves (bytes), as ``connect.population``'s evaluation chunks.
CHUNK_BYTES = 256 << 20


def curve_train_chunk(curve: Curve, example: Tensor, n_curves: int, batch_size: int, *,
                      max_members: int | None = None, memory_bytes: int | None = None) -> int:
    """How many curves to train per population.

    A member holds its ``K`` nodes, the blended weights and their gradient, the bends' gradient and up to two
    optimiser buffers per bend (``(K + 2 + 3 * num_bends) * P`` floats) and, at batch ``b``, about three times a
    forward pass's activations (``3 * b * A``: the saved activations and their gradients).

    Args:
        curve: one of the curves (its template is the architecture).
        example: inputs ``[B, *input_shape]`` (one sample is run once).
        n_curves: curves to train in all (>= 1).
        batch_size: the training batch size.
        max_members: at most this many curves per chunk (default 64).
        memory_bytes: the budget (default 256 MiB).

    Returns:
        Curves per chunk, chosen so that chunks are of nearly equal size.
    """
    if n_curves < 1:
        raise ValueError(f"n_curves must be >= 1, got {n_curves}")
    item = next(curve.parameters()).element_size()
    p = sum(t.numel() for t in curve.template.parameters())
    act = _activation_floats(curve.template, example)
    per = ((curve.num_nodes + 2 + 3 * curve.num_bends) * p + 3 * batch_size * act) * item
    budget = CHUNK_BYTES if memory_bytes is None else int(memory_bytes)
    m = max(1, min(n_curves, 64 if max_members is None else max(1, int(max_members)), budget // max(1, per)))
    return -(-n_curves // -(-n_curves // m))  # equal chunks: ceil(n / ceil(n / m))


def _check_curves(curves: Sequence[Curve]) -> None:
    first = curves[0]
    if not isinstance(first, Curve):
        raise TypeError(f"curves[0] must be a zooscape.connect.Curve, got {type(first).__name__}")
    layout = [(tuple(p.shape), p.dtype) for p in first.nodes[0].param_list()]
    for i, c in enumerate(curves):
        if not isinstance(c, Curve):
            raise TypeError(f"curves[{i}] must be a zooscape.connect.Curve, got {type(c).__name__}")
        same = (c.kind, c.num_bends, c.fix_start, c.fix_end, c.param_names, c.buffer_names) == (
            first.kind, first.num_bends, first.fix_start, first.fix_end, first.param_names, first.buffer_names)
        if not same or [(tuple(p.shape), p.dtype) for p in c.nodes[0].param_list()] != layout:
            raise ValueError(f"curves[{i}] differs from curves[0] in kind, num_bends, fixed endpoints, "
                             "architecture or dtype; train_curves trains curves of one kind and architecture "
                             "together")
    if not first.trainable_parameters():
        raise ValueError("the curves have nothing to train: num_bends=0 and both endpoints fixed")


def _active_dropout(model: torch.nn.Module) -> bool:
    """Whether ``model`` has a Dropout layer with ``p > 0`` (``p = 0`` draws no random numbers)."""
    return any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def _batch_nll(out: Tensor, y: Tensor, task: str) -> Tensor:
    """Per-member mean task loss of ``out`` ``[B, N, K]`` against ``y`` ``[N, B]`` (or ``[N, B, k]``) -> ``[N]``."""
    out = out.transpose(0, 1)  # [N, B, K]
    if task == "classification":
        n, b = out.shape[:2]
        return F.cross_entropy(out.reshape(n * b, -1), y.reshape(-1), reduction="none").view(n, b).mean(1)
    target = y.to(out.dtype)
    if target.dim() == 2:
        target = target.unsqueeze(-1)
    return ((out - target) ** 2).flatten(1).mean(1)


class _CurveChunk:
    """``N`` curves as one population: nodes stacked flat (``[N, P]`` per node), bends trained as one tensor."""

    def __init__(self, curves: Sequence[Curve], config: CurveTrainConfig, seeds: Sequence[int],
                 device: torch.device) -> None:
        from zooscape.train.optim import PopulationOptimizer
        from zooscape.train.population import Population

        first = curves[0]
        self.curves, self.n, self.seeds = list(curves), len(curves), [int(s) for s in seeds]
        self.pop = Population([first.template] * self.n).to(device).train()  # (Population copies the template)
        shapes = [tuple(p.shape) for p in first.nodes[0].param_list()]
        self.sizes = [math.prod(s) for s in shapes]
        self.shapes = shapes
        self.names = list(first.param_names)
        self.buffer_names = list(first.buffer_names)
        self.bshapes = [tuple(b.shape) for b in first.nodes[0].buffer_list()]

        def flat(j: int, kind: str) -> Tensor:
            lists = [getattr(c.nodes[j], f"{kind}_list")() for c in self.curves]
            rows = [torch.cat([t.detach().reshape(-1) for t in ts]) if ts else torch.zeros(0) for ts in lists]
            return torch.stack(rows).to(device)

        k = first.num_nodes
        self.trainable = [j for j in range(k) if first.nodes[j].p0.requires_grad]
        self.nodes = [flat(j, "param") for j in range(k)]  # [N, P] each
        for j in self.trainable:
            self.nodes[j].requires_grad_(True)
        self.bufs = [flat(j, "buffer") for j in range(k)]
        self.kind, self.num_bends = first.kind, first.num_bends
        like = {"dtype": self.nodes[0].dtype, "device": device}
        self.opt = PopulationOptimizer(
            [(str(j), self.nodes[j]) for j in self.trainable], config.optimizer,
            weight_decay=torch.zeros(self.n, **like), momentum=torch.full((self.n,), float(config.momentum), **like),
            nesterov=bool(config.nesterov), betas=tuple(config.betas), eps=float(config.eps))
        self.active = torch.ones(self.n, dtype=torch.bool, device=device)
        self._lr: tuple[float, Tensor] | None = None
        self.manual: Any = None  # set by :meth:`use_manual_step`
        self._flat: tuple[Tensor, Tensor] | None = None

    def use_manual_step(self, x: Tensor, task: str) -> bool:
        """Take the population trainer's autograd-free step (:mod:`zooscape.train.manual_mlp`: plain ReLU MLPs,
        classification) when it applies: the blended weights are written into the population's flat ``[N, P]``
        parameter buffer, the step writes ``dL/dW`` into its gradient buffer, and the bends' gradients follow by the
        chain rule, ``c_j(t_m) (dL/dW[m] + wd W[m])``. Returns whether it is used."""
        from zooscape.train import _flags, manual_mlp

        if not _flags.current().manual_mlp or self.buffer_names:
            return False
        names = [n.removeprefix("net.") for n, _ in self.pop.named_parameters()]
        step = manual_mlp.plan(self.pop, x, task) if names == self.names else None
        flat = self.pop.flatten_parameters() if step is not None else None
        if step is None or flat is None or flat[0].shape[1] != self.nodes[0].shape[1]:
            return False
        self.manual, self._flat = step, flat
        return True

    @torch.no_grad()
    def manual_loss(self, x: Tensor, y: Tensor, c: Tensor, wd: float) -> tuple[Tensor, Tensor, Tensor]:
        """The step of :meth:`use_manual_step`: ``x`` ``[N, B, *input_shape]`` (model-major), ``y`` ``[N, B]``;
        sets the trainable nodes' gradients and returns ``(loss [N], nll [N], predictions [N, B])``."""
        w = self.blend(c, self.nodes)
        params, grads = self._flat  # type: ignore[misc]
        params.copy_(w)
        nll, pred = self.manual(x, y, predict=True)
        g = grads + wd * w if wd else grads
        for j in self.trainable:
            self.nodes[j].grad = c[:, j:j + 1] * g
        loss = nll + 0.5 * wd * w.pow(2).sum(1) if wd else nll
        return loss, nll, pred

    def coefficients(self, ts: Tensor) -> Tensor:
        """Coefficients ``[N, S, K]`` of each member's own positions ``ts`` ``[N, S]`` (float64 in [0, 1]), cast to
        the nodes' dtype as :meth:`Curve._blend` casts them."""
        from zooscape.connect.curve import curve_coefficients

        c = curve_coefficients(self.kind, ts.reshape(-1), self.num_bends).reshape(*ts.shape, -1)
        return c.to(self.nodes[0].device, self.nodes[0].dtype)

    def blend(self, c: Tensor, stack: list[Tensor]) -> Tensor:
        """``sum_j c[:, j] * stack[j]`` (``[N, P]``), in node order as :meth:`Curve._blend`."""
        out = None
        for j, x in enumerate(stack):
            term = c[:, j:j + 1] * x
            out = term if out is None else out + term
        assert out is not None
        return out

    def unflatten(self, w: Tensor, shapes: list[tuple[int, ...]], names: list[str]) -> dict[str, Tensor]:
        sizes = [math.prod(s) for s in shapes]
        parts = torch.split(w, sizes, dim=1)
        return {f"net.{name}": part.reshape(self.n, *shape) for name, part, shape in zip(names, parts, shapes)}

    def loss(self, x: Tensor, y: Tensor, c: Tensor, wd: float, task: str) -> tuple[Tensor, Tensor, Tensor]:
        """Per-member ``(loss [N], nll [N], out [B, N, K])`` of one step: ``x`` ``[B, N, *input_shape]``, ``y``
        ``[N, B]`` (or ``[N, B, k]``), ``c`` the members' coefficients ``[N, K]`` at their positions."""
        w = self.blend(c, self.nodes)
        params = self.unflatten(w, self.shapes, self.names)
        buffers: dict[str, Tensor] = {}
        if self.buffer_names:
            with torch.no_grad():
                # contiguous: BatchNorm updates (and views) its running statistics in place
                buffers = {k: v.contiguous() for k, v in
                           self.unflatten(self.blend(c, self.bufs), self.bshapes, self.buffer_names).items()}
        out = functional_call(self.pop, (params, buffers), (x,))  # [B, N, K]
        nll = _batch_nll(out, y, task)
        if wd:
            return nll + 0.5 * wd * w.pow(2).sum(1), nll, out
        return nll, nll, out

    def zero_grad(self) -> None:
        for j in self.trainable:
            self.nodes[j].grad = None

    def step(self, lr: float) -> None:
        if self._lr is None or self._lr[0] != lr:
            self._lr = (lr, torch.full((self.n,), float(lr), dtype=self.nodes[0].dtype, device=self.nodes[0].device))
        self.opt.step(self._lr[1], self.active, all_active=True)

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the trained nodes into the curves' own tensors."""
        for m, curve in enumerate(self.curves):
            for j in self.trainable:
                for target, part in zip(curve.nodes[j].param_list(), torch.split(self.nodes[j][m], self.sizes)):
                    target.copy_(part.view(target.shape))


def _train_chunk(chunk: _CurveChunk, x_tr: Tensor, y_tr: Tensor, config: CurveTrainConfig, task: str,
                 slices: list[slice], callback: Callable[[int, dict[str, float]], None] | None,
                 offset: int) -> list[list[dict[str, float]]]:
    n_members, steps, n = chunk.n, len(slices), x_tr.shape[0]
    dev = x_tr.device
    total = max(1, config.epochs * steps)
    wd = float(config.weight_decay)
    shared_order = len(set(chunk.seeds)) == 1
    histories: list[list[dict[str, float]]] = [[] for _ in range(n_members)]
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        orders = [epoch_order(n, s, epoch).to(dev) for s in (chunk.seeds[:1] if shared_order else chunk.seeds)]
        ts = torch.stack([sample_ts(s, epoch, steps) for s in chunk.seeds])  # [N, steps]
        coeffs = chunk.coefficients(ts)  # [N, steps, K]
        losses, nlls, wrong = [], [], []
        sizes = []
        lr = config.lr
        for s in range(steps):
            if config.schedule == "garipov":
                lr = config.lr * garipov_lr_factor(epoch, config.epochs)
            else:
                lr = config.lr * lr_factor(config.schedule, (epoch - 1) * steps + s, total, steps)
            idx = torch.stack([o[slices[s]] for o in orders])  # [N or 1, b]
            b = idx.shape[1]
            xb = x_tr[idx.reshape(-1)].view(idx.shape[0], b, *x_tr.shape[1:]).transpose(0, 1)  # [b, N|1, ...]
            xb = xb.expand(b, n_members, *x_tr.shape[1:])
            yb = y_tr[idx.reshape(-1)].view(idx.shape[0], b, *y_tr.shape[1:]).expand(n_members, b, *y_tr.shape[1:])
            if chunk.manual is not None:
                loss, nll, pred = chunk.manual_loss(xb.transpose(0, 1), yb, coeffs[:, s], wd)
            else:
                loss, nll, out = chunk.loss(xb, yb, coeffs[:, s], wd, task)
                chunk.zero_grad()
                loss.sum().backward()
                pred = out.detach().argmax(-1).transpose(0, 1)
            chunk.step(lr)
            losses.append(loss.detach())
            nlls.append(nll.detach())
            if task == "classification":
                wrong.append((pred != yb).sum(1))
            sizes.append(b)
        # the epoch's sums (after the steps: no per-step bookkeeping operations), [3, N]
        seen = sum(sizes)
        weights = torch.tensor(sizes, dtype=torch.float64, device=dev).unsqueeze(1)
        sums = torch.stack([(torch.stack(losses).double() * weights).sum(0),
                            (torch.stack(nlls).double() * weights).sum(0),
                            torch.stack(wrong).double().sum(0) if wrong else torch.zeros(n_members, device=dev,
                                                                                          dtype=torch.float64)])
        sums = sums.cpu()
        seconds = time.perf_counter() - t0
        for m in range(n_members):
            row = {"epoch": float(epoch), "lr": float(lr), "train_loss": float(sums[0, m] / seen),
                   "train_nll": float(sums[1, m] / seen), "t_mean": float(ts[m].mean()),
                   "epoch_time_s": seconds / n_members}
            if task == "classification":
                row["train_error"] = float(sums[2, m] / seen)
            if not math.isfinite(row["train_loss"]):
                raise RuntimeError(f"curve training diverged: non-finite training loss of curve {offset + m} in "
                                   f"epoch {epoch} (lower lr)")
            histories[m].append(row)
            if callback is not None:
                callback(offset + m, row)
    return histories


def train_curves(
    curves: Sequence[Curve],
    data: Any,
    config: CurveTrainConfig | None = None,
    *,
    seeds: Sequence[int] | None = None,
    task: str | None = None,
    device: str | torch.device | None = None,
    max_members: int | None = None,
    memory_bytes: int | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[CurveTrainResult]:
    """Train the bends of many curves of one architecture, a population of them per step, in place.

    Each curve ends as :func:`~zooscape.connect.curve_train.train_curve` would leave it with the same config
    (float tolerance), but the ``N`` curves of a chunk share one forward and backward pass per step: member ``m``'s
    layer weights are ``W[m] = sum_j c_j(t_m) theta[m, j]`` (``[N, P]`` stacked over the population's layers),
    from its own ``t_m``, batch, regulariser and optimiser state.

    Args:
        curves: ``M`` curves (:class:`~zooscape.connect.curve.Curve`) of one kind, ``num_bends``, fixed endpoints
            and architecture; trained in place and moved to ``device``.
        data: ``DataSplits``-like object or mapping with a ``"train"`` split ``(x [n, ...], y [n])``.
        config: hyperparameters shared by all curves (default :class:`CurveTrainConfig()`).
        seeds: one training seed per curve (default ``config.seed`` for all: then the curves also share their
            batches, and curve ``m`` trains as ``train_curve(curves[m], data, config)``); curve ``m`` trains as
            ``train_curve`` with ``dataclasses.replace(config, seed=seeds[m])``.
        task: ``"classification"`` or ``"regression"``; inferred from the data.
        device: where to train (default: the first curve's device).
        max_members: at most this many curves per population (default 64).
        memory_bytes: memory budget of one population (default 256 MiB; see :func:`curve_train_chunk`).
        callback: ``fn(curve_index, row)`` with each curve's epoch history rows.
        progress: ``fn(k)`` after each chunk with the number of curves it finished.

    Returns:
        One :class:`~zooscape.connect.curve_train.CurveTrainResult` per curve, in order (``epoch_time_s`` is the
        chunk's epoch time divided by its members).

    References:
        Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity, and Fast
        Ensembling of DNNs".
    """
    import dataclasses

    from zooscape.connect.curve_train import train_curve

    config = config or CurveTrainConfig()
    config.validate()
    curves = list(curves)
    if not curves:
        return []
    _check_curves(curves)
    seeds = [config.seed] * len(curves) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(curves):
        raise ValueError(f"seeds has {len(seeds)} entries for {len(curves)} curves")
    dev = torch.device(device) if device is not None else next(curves[0].parameters()).device
    template = curves[0].template
    if _active_dropout(template) or not population_supported(template):
        results = []
        for i, (curve, seed) in enumerate(zip(curves, seeds)):
            cb = None if callback is None else (lambda row, i=i: callback(i, row))
            results.append(train_curve(curve, data, dataclasses.replace(config, seed=seed), task=task, device=dev,
                                       callback=cb))
            if progress is not None:
                progress(1)
        return results
    x_tr, y_tr = get_split(data, "train")
    task = infer_task(data, y_tr, task)
    x_tr, y_tr = x_tr.to(dev), y_tr.to(dev)
    n, bs = x_tr.shape[0], config.batch_size
    slices = [slice(i * bs, (i + 1) * bs) for i in range(n // bs)] if config.drop_last else batch_slices(n, bs)
    if not slices:
        raise ValueError(f"batch_size {bs} exceeds the {n} training samples with drop_last=True")
    for curve in curves:
        if next(curve.parameters()).device != dev:
            curve.to(dev)
    size = curve_train_chunk(curves[0], x_tr[:1], len(curves), bs, max_members=max_members,
                             memory_bytes=memory_bytes)
    results: list[CurveTrainResult] = []
    for start in range(0, len(curves), size):
        part = curves[start:start + size]
        chunk = _CurveChunk(part, config, seeds[start:start + size], dev)
        chunk.use_manual_step(x_tr, task)
        histories = _train_chunk(chunk, x_tr, y_tr, config, task, slices, callback, start)
        chunk.write_back()
        results += [CurveTrainResult(curve=c, history=h, config=dataclasses.replace(config, seed=s))
                    for c, h, s in zip(part, histories, seeds[start:start + size])]
        del chunk
        if progress is not None:
            progress(len(part))
    return results
