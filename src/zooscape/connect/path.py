"""Linear path between two networks: loss and error at every alpha, endpoint distance and barriers.

``linear_path(model_a, model_b, data)`` evaluates ``theta(alpha) = (1 - alpha) theta_a + alpha theta_b``
on an evenly spaced grid of alphas (0 and 1 included, 0.5 always included). By default the alphas are
members of one :class:`zooscape.train.Population` per pass (``method="population"``,
:mod:`zooscape.connect.population`; :func:`linear_paths` evaluates many pairs
together); ``method="vmap"`` runs them as one vectorized batch (``torch.func.vmap`` over stacked parameters) and
``method="loop"`` is the slow reference path (one deep-copied interpolated model per alpha).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from zooscape.connect.barrier import BARRIER_DEFINITIONS, barriers
from zooscape.connect.batched import batched_bn_stats, batched_evaluate, stack_interpolated
from zooscape.connect.bn import has_batchnorm
from zooscape.connect.distance import l2_distance
from zooscape.connect.interpolate import (
    check_bn_mode,
    check_compatible,
    check_compatible_states,
    check_evaluation,
    interpolate,
)
from zooscape.connect.metrics import evaluate_model
from zooscape.connect.population import evaluate_members, pick_method
from zooscape.data.adapt import get_split, infer_task, train_inputs

__all__ = ["LinearPath", "linear_path", "linear_paths", "path_alphas"]

METHODS = ("auto", "population", "vmap", "loop")


def path_alphas(n_points: int) -> Tensor:
    """Evenly spaced alphas in [0, 1], with 0.5 added when ``n_points`` is even.

    Args:
        n_points: number of evenly spaced points including both endpoints (>= 2).

    Returns:
        Float64 tensor of shape ``[n_points]`` (odd) or ``[n_points + 1]`` (even), strictly increasing.
    """
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}")
    alphas = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64)
    if n_points % 2 == 0:
        alphas = torch.sort(torch.cat([alphas, torch.tensor([0.5], dtype=torch.float64)])).values
    return alphas


@dataclass
class LinearPath:
    """Result of :func:`linear_path`.

    Attributes:
        alphas: interpolation coefficients, shape ``[n]``.
        loss: ``{split: mean loss at each alpha, shape [n]}``.
        error: ``{split: error rate in [0, 1] at each alpha, shape [n]}`` (empty for regression).
        distance: L2 distance between the endpoints' parameters.
        barriers: ``{split: {"loss"|"error": {"linear"|"mean"|"midpoint": float}}}``.
        bn_mode: how BatchNorm statistics were obtained.
        task: ``"classification"`` or ``"regression"``.
    """

    alphas: Tensor
    loss: dict[str, Tensor]
    error: dict[str, Tensor]
    distance: float
    barriers: dict[str, dict[str, dict[str, float]]]
    bn_mode: str
    task: str
    method: str = "vmap"
    splits: tuple[str, ...] = field(default_factory=tuple)

    def barrier(self, split: str = "test", metric: str = "loss", definition: str = "linear") -> float:
        """One barrier value.

        Args:
            split: data split, one of ``self.splits``.
            metric: ``"loss"`` or ``"error"``.
            definition: ``"linear"`` (default), ``"mean"`` or ``"midpoint"``.

        Returns:
            The barrier as a float.
        """
        if split not in self.barriers:
            raise KeyError(f"split {split!r} was not evaluated; available: {sorted(self.barriers)}")
        if metric not in self.barriers[split]:
            raise KeyError(f"metric {metric!r} not available; available: {sorted(self.barriers[split])}")
        if definition not in BARRIER_DEFINITIONS:
            raise KeyError(f"definition must be one of {BARRIER_DEFINITIONS}, got {definition!r}")
        return self.barriers[split][metric][definition]

    def flat_barriers(self) -> dict[str, float]:
        """Barriers as a flat mapping, convenient for catalogs and data frames.

        Returns:
            ``{"barrier_<metric>_<split>_<definition>": float}``, e.g. ``"barrier_error_test_linear"``.
        """
        return {
            f"barrier_{metric}_{split}_{definition}": value
            for split, per_metric in self.barriers.items()
            for metric, per_def in per_metric.items()
            for definition, value in per_def.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary of the whole result.

        Returns:
            Dict with lists for the curves and floats for distance and barriers (NaN becomes None).
        """

        def clean(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {
            "alphas": self.alphas.tolist(),
            "distance": self.distance,
            "bn_mode": self.bn_mode,
            "task": self.task,
            "method": self.method,
            "loss": {k: v.tolist() for k, v in self.loss.items()},
            "error": {k: v.tolist() for k, v in self.error.items()},
            "barriers": {
                s: {m: {d: clean(v) for d, v in pd.items()} for m, pd in pm.items()}
                for s, pm in self.barriers.items()
            },
        }


def _model_device(model: nn.Module) -> torch.device:
    return next((t.device for t in model.parameters()), torch.device("cpu"))


def _vmap_curves(
    model_a: nn.Module,
    model_b: nn.Module,
    alphas: Tensor,
    split_data: dict[str, tuple[Tensor, Tensor]],
    task: str,
    bn_mode: str,
    bn_x: Tensor | None,
    batch_size: int,
    bn_batch_size: int,
    alpha_batch_size: int,
    device: torch.device,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    template = copy.deepcopy(model_a).to(device).eval()
    params_a = {k: v.detach() for k, v in template.named_parameters()}
    params_b = {k: v.detach().to(device) for k, v in model_b.named_parameters()}
    bufs_a = {k: v.detach() for k, v in template.named_buffers()}
    bufs_b = {k: v.detach().to(device) for k, v in model_b.named_buffers()}
    losses: dict[str, list[Tensor]] = {s: [] for s in split_data}
    errors: dict[str, list[Tensor]] = {s: [] for s in split_data}
    for start in range(0, alphas.shape[0], alpha_batch_size):
        chunk = alphas[start : start + alpha_batch_size]
        params = stack_interpolated(params_a, params_b, chunk)
        buffers = stack_interpolated(bufs_a, bufs_b, chunk)
        if bn_mode == "reset" and bn_x is not None:
            buffers.update(batched_bn_stats(template, params, bn_x, batch_size=bn_batch_size, buffers=buffers))
        for split, (x, y) in split_data.items():
            loss, err = batched_evaluate(template, params, buffers, x, y, task, batch_size=batch_size)
            losses[split].append(loss)
            if err is not None:
                errors[split].append(err)
    return (
        {s: torch.cat(v) for s, v in losses.items()},
        {s: torch.cat(v) for s, v in errors.items() if v},
    )


def _loop_curves(
    model_a: nn.Module,
    model_b: nn.Module,
    alphas: Tensor,
    split_data: dict[str, tuple[Tensor, Tensor]],
    task: str,
    bn_mode: str,
    bn_x: Tensor | None,
    batch_size: int,
    bn_batch_size: int,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    losses: dict[str, list[float]] = {s: [] for s in split_data}
    errors: dict[str, list[float]] = {s: [] for s in split_data}
    for alpha in alphas.tolist():
        model = interpolate(model_a, model_b, alpha, bn_mode=bn_mode, data=bn_x, batch_size=bn_batch_size)
        for split, (x, y) in split_data.items():
            loss, err = evaluate_model(model, x, y, task, batch_size=batch_size)
            losses[split].append(loss)
            if err is not None:
                errors[split].append(err)
    as_t = lambda v: torch.tensor(v, dtype=torch.float64)
    return {s: as_t(v) for s, v in losses.items()}, {s: as_t(v) for s, v in errors.items() if v}


def linear_path(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    n_points: int = 25,
    *,
    splits: Sequence[str] = ("train", "test"),
    bn_mode: str = "interpolate",
    task: str | None = None,
    batch_size: int = 1024,
    bn_batch_size: int = 256,
    alpha_batch_size: int | None = None,
    method: str = "auto",
    device: str | torch.device | None = None,
) -> LinearPath:
    """Loss and error along the straight line between two networks, with distance and barriers.

    Args:
        model_a: ``alpha = 0`` endpoint (not modified).
        model_b: ``alpha = 1`` endpoint, same architecture and shapes (not modified).
        data: ``DataSplits``-like object (``.split(name) -> (x, y)``) or mapping ``{split: (x, y)}``.
        n_points: evenly spaced alphas including both endpoints; 0.5 is added when even.
        splits: splits to evaluate, e.g. ``("train", "test")``.
        bn_mode: ``"interpolate"`` BatchNorm running statistics, or ``"reset"`` and re-estimate them per alpha
            on the ``"train"`` split (exact cumulative average over one pass, no augmentation).
        task: ``"classification"`` or ``"regression"``; inferred from ``data.task`` or the target dtype.
        batch_size: evaluation batch size (the vectorized pass holds ``alphas x batch_size`` activations).
        bn_batch_size: batch size of the BatchNorm re-estimation pass.
        alpha_batch_size: evaluate at most this many alphas at once (default: all).
        method: ``"auto"`` (default: the fastest for this network, :func:`~zooscape.connect.population.pick_method`:
            the population for small networks with population layers, else the faster of vmap and loop),
            ``"population"`` (alphas
            as members of a :class:`zooscape.train.Population`, chunked by memory or ``alpha_batch_size``),
            ``"vmap"`` (all alphas in one vectorised pass) or ``"loop"`` (one deep-copied model per alpha, the slow
            reference).
        device: where to evaluate (default: ``model_a``'s device).

    Returns:
        :class:`LinearPath` with ``alphas [n]``, ``loss[split] [n]``, ``error[split] [n]`` (classification),
        ``distance`` and ``barriers[split][metric][definition]`` for the definitions ``"linear"`` (default),
        ``"mean"`` and ``"midpoint"``.

    References:
        Frankle, Dziugaite, Roy, Carbin (2020), "Linear Mode Connectivity and the Lottery Ticket Hypothesis";
        Entezari, Sedghi, Saukh, Neyshabur (2022), "The Role of Permutation Invariance in Linear Mode
        Connectivity of Neural Networks".
    """
    splits = check_evaluation(bn_mode, method, METHODS, splits, batch_size, bn_batch_size)
    check_compatible(model_a, model_b)
    alphas = path_alphas(n_points)
    if alpha_batch_size is None:
        alpha_batch_size = alphas.shape[0]
    if not isinstance(alpha_batch_size, int) or alpha_batch_size < 1:
        raise ValueError(f"alpha_batch_size must be a positive integer, got {alpha_batch_size!r}")
    split_data = {s: get_split(data, s) for s in splits}
    task = infer_task(data, next(iter(split_data.values()))[1], task)
    method = pick_method(model_a, next(iter(split_data.values()))[0], method)
    if method == "population":
        return linear_paths([(model_a, model_b)], data, n_points, splits=splits, bn_mode=bn_mode, task=task,
                            batch_size=batch_size, bn_batch_size=bn_batch_size, max_members=alpha_batch_size,
                            device=device)[0]
    bn_x = train_inputs(data) if bn_mode == "reset" and has_batchnorm(model_a) else None
    dev = torch.device(device) if device is not None else _model_device(model_a)

    if method == "vmap":
        losses, errors = _vmap_curves(
            model_a, model_b, alphas, split_data, task, bn_mode, bn_x,
            batch_size, bn_batch_size, alpha_batch_size, dev,
        )  # fmt: skip
    else:
        a = copy.deepcopy(model_a).to(dev)
        b = copy.deepcopy(model_b).to(dev)
        losses, errors = _loop_curves(
            a, b, alphas, split_data, task, bn_mode, bn_x, batch_size, bn_batch_size
        )

    result_barriers: dict[str, dict[str, dict[str, float]]] = {}
    for split in splits:
        result_barriers[split] = {"loss": barriers(losses[split], alphas)}
        if split in errors:
            result_barriers[split]["error"] = barriers(errors[split], alphas)
    return LinearPath(
        alphas=alphas,
        loss=losses,
        error=errors,
        distance=l2_distance(model_a, model_b),
        barriers=result_barriers,
        bn_mode=bn_mode,
        task=task,
        method=method,
        splits=splits,
    )


def _as_state(x: nn.Module | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    return x.state_dict() if isinstance(x, nn.Module) else x


@torch.no_grad()
def linear_paths(
    pairs: Sequence[tuple[nn.Module | Mapping[str, Tensor], nn.Module | Mapping[str, Tensor]]],
    data: Any,
    n_points: int = 25,
    *,
    template: nn.Module | None = None,
    splits: Sequence[str] = ("train", "test"),
    bn_mode: str = "interpolate",
    task: str | None = None,
    batch_size: int = 1024,
    bn_batch_size: int = 256,
    max_members: int | None = None,
    memory_bytes: int | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[LinearPath]:
    """The linear paths of many pairs of one architecture, every alpha of several pairs in one population pass.

    Pair ``p`` at alpha ``a`` is member ``p * A + a`` with ``theta = (1 - a) theta_a + a theta_b``; members are
    evaluated in chunks through :func:`evaluate_members`. The result for each pair equals
    :func:`~zooscape.connect.linear_path` (any ``method``) within float tolerance.

    Args:
        pairs: ``[(a, b), ...]``: endpoints as modules or state dicts (keys of ``template.state_dict()``).
        data: ``DataSplits``-like object or mapping ``{split: (x, y)}``.
        n_points: evenly spaced alphas including both endpoints; 0.5 is added when even
            (:func:`~zooscape.connect.path_alphas`).
        template: a network of the architecture (default: the first endpoint when it is a module).
        splits: splits to evaluate.
        bn_mode: ``"interpolate"`` BatchNorm statistics, or ``"reset"``: re-estimated per point on the ``"train"``
            split (:func:`~zooscape.connect.bn.recompute_bn_stats`).
        task: ``"classification"`` or ``"regression"``; inferred from the data.
        batch_size: the per-model evaluation batch size.
        bn_batch_size: batch size of the BatchNorm pass.
        max_members: at most this many path points per population.
        memory_bytes: memory budget of a chunk (:func:`member_chunks`).
        device: where to evaluate (default: the template's device).
        progress: ``fn(k)`` after each chunk with the points it finished.

    Returns:
        One :class:`~zooscape.connect.LinearPath` per pair (``alphas [A]``, ``loss[split] [A]``,
        ``error[split] [A]``, ``distance``, ``barriers``; ``method = "population"``).

    References:
        Frankle, Dziugaite, Roy, Carbin (2020), "Linear Mode Connectivity and the Lottery Ticket Hypothesis".
    """
    check_bn_mode(bn_mode)
    if not pairs:
        return []
    if template is None:
        if not isinstance(pairs[0][0], nn.Module):
            raise ValueError("linear_paths needs template= when the endpoints are state dicts")
        template = pairs[0][0]
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    if not splits:
        raise ValueError("splits must name at least one split")
    alphas = path_alphas(n_points)
    split_data = {s: get_split(data, s) for s in splits}
    task = infer_task(data, next(iter(split_data.values()))[1], task)
    dev = torch.device(device) if device is not None else next(
        (t.device for t in template.parameters()), torch.device("cpu"))
    names = {n for n, _ in template.named_parameters()}
    ends = []
    for i, (a, b) in enumerate(pairs):
        sa, sb = _as_state(a), _as_state(b)
        try:
            check_compatible_states(sa, sb)
        except ValueError as exc:
            raise ValueError(f"pair {i}: {exc}") from None
        ends.append((sa, sb))
    n_alpha = alphas.shape[0]

    def states(start: int, stop: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        params: dict[str, list[Tensor]] = {}
        buffers: dict[str, list[Tensor]] = {}
        for p in range(start // n_alpha, (stop - 1) // n_alpha + 1):
            lo, hi = max(start, p * n_alpha) - p * n_alpha, min(stop, (p + 1) * n_alpha) - p * n_alpha
            sa, sb = ends[p]
            sub = alphas[lo:hi]
            pa = {k: v.detach().to(dev) for k, v in sa.items() if k in names}
            pb = {k: v.detach().to(dev) for k, v in sb.items() if k in names}
            ba = {k: v.detach().to(dev) for k, v in sa.items() if k not in names}
            bb = {k: v.detach().to(dev) for k, v in sb.items() if k not in names}
            for k, v in stack_interpolated(pa, pb, sub).items():
                params.setdefault(k, []).append(v)
            for k, v in stack_interpolated(ba, bb, sub).items():
                buffers.setdefault(k, []).append(v)
        return ({k: torch.cat(v) for k, v in params.items()}, {k: torch.cat(v) for k, v in buffers.items()})

    bn_x = train_inputs(data) if bn_mode == "reset" and has_batchnorm(template) else None
    losses, errors = evaluate_members(template, states, len(ends) * n_alpha, split_data, task, bn_x=bn_x,
                                      batch_size=batch_size, bn_batch_size=bn_batch_size, max_members=max_members,
                                      memory_bytes=memory_bytes, device=dev, progress=progress)
    out = []
    for p, (sa, sb) in enumerate(ends):
        sl = slice(p * n_alpha, (p + 1) * n_alpha)
        loss = {s: v[sl] for s, v in losses.items()}
        err = {s: v[sl] for s, v in errors.items()}
        result_barriers: dict[str, dict[str, dict[str, float]]] = {}
        for s in splits:
            result_barriers[s] = {"loss": barriers(loss[s], alphas)}
            if s in err:
                result_barriers[s]["error"] = barriers(err[s], alphas)
        total = torch.zeros((), dtype=torch.float64)
        for k in names:
            total += (sa[k].detach().to("cpu", torch.float64) - sb[k].detach().to("cpu", torch.float64)).pow(2).sum()
        out.append(LinearPath(alphas=alphas, loss=loss, error=err, distance=float(total.sqrt()),
                              barriers=result_barriers, bn_mode=bn_mode, task=task, method="population",
                              splits=splits))
    return out
