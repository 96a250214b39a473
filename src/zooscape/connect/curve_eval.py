"""Evaluation along a curve: loss, nll and error at N points, segment lengths, summaries and the mc metric.

``evaluate_curve(curve, data)`` evaluates ``w(t)`` at ``N`` evenly spaced points (default 61, as Garipov et al.'s
``eval_curve.py``) plus the five points ``t = 0, 0.25, 0.5, 0.75, 1`` of the mc metric when they are not on the
grid. At every ``t`` the BatchNorm statistics are re-estimated exactly on the training split (default
``bn_mode="reset"``). By default the points are members of one :class:`zooscape.train.Population` per pass
(:mod:`zooscape.connect.population`; :func:`evaluate_curves` evaluates the points of many curves together);
``method="vmap"`` evaluates them as one vectorized batch (``torch.func.vmap`` over stacked weights,
:mod:`zooscape.connect.batched`) and ``method="loop"`` is the slow reference.

Per split: ``nll`` (cross-entropy, or MSE for regression), ``loss = nll + 0.5 * weight_decay * ||w(t)||^2``
(the reference's "loss"; equal to ``nll`` with the default ``weight_decay=0``) and ``error`` in [0, 1]. The
segment lengths are ``dl_i = ||w(t_i) - w(t_{i-1})||`` (parameters only, ``dl_0 = 0``); each metric is
summarised by its min, max, mean over the points and the length-weighted integral
``sum_i (v_{i-1} + v_i) / 2 * dl_i / sum_i dl_i``.

Mode connectivity (phase-transition model zoo): with ``v`` the metric at the five points and ``m = (v_0 +
v_1) / 2`` the endpoint mean, ``t* = argmax_t |v(t) - m|`` and ``mc = m - v(t*)``. A negative mc is a barrier
(the curve is worse than its ends), a positive one means the interior is better than the ends (e.g.
under-trained endpoints).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from zooscape.connect.batched import batched_bn_stats, batched_evaluate
from zooscape.connect.bn import has_batchnorm
from zooscape.connect.curve import Curve
from zooscape.connect.curve_metrics import (
    CURVE_STATS,
    _mc_positions,
    _sq_norms,
    curve_stats,
    curve_ts,
    mc_index,
    mode_connectivity,
    segment_lengths,
)
from zooscape.connect.interpolate import check_evaluation
from zooscape.connect.metrics import evaluate_model
from zooscape.connect.population import evaluate_members, pick_method
from zooscape.data.adapt import get_split, infer_task, train_inputs

__all__ = [
    "CURVE_STATS",
    "CurveEvaluation",
    "curve_stats",
    "curve_ts",
    "evaluate_curve",
    "evaluate_curves",
    "mc_index",
    "mode_connectivity",
    "segment_lengths",
]

METRICS: tuple[str, ...] = ("loss", "nll", "error")
METHODS = ("auto", "population", "vmap", "loop")


@dataclass
class CurveEvaluation:
    """Result of :func:`evaluate_curve`.

    Attributes:
        ts: positions, ``[T]``.
        dl: segment lengths, ``[T]`` (``dl[0] = 0``); ``length = dl.sum()``.
        loss, nll, error: ``{split: [T]}`` (``error`` empty for regression).
        stats: ``{split: {metric: {"min"|"max"|"mean"|"int": float}}}``.
        mc: ``{split: {metric: float}}`` (mode connectivity at the ``mc_points`` positions).
        kind, num_bends, bn_mode, task, weight_decay, mc_points, method: settings.
    """

    ts: Tensor
    dl: Tensor
    loss: dict[str, Tensor]
    nll: dict[str, Tensor]
    error: dict[str, Tensor]
    stats: dict[str, dict[str, dict[str, float]]]
    mc: dict[str, dict[str, float]]
    kind: str
    num_bends: int
    bn_mode: str
    task: str
    weight_decay: float = 0.0
    mc_points: int = 5
    method: str = "vmap"
    splits: tuple[str, ...] = field(default_factory=tuple)

    @property
    def length(self) -> float:
        """Total length of the polygon through the evaluated points."""
        return float(self.dl.sum())

    def values(self, metric: str, split: str) -> Tensor:
        """One metric curve.

        Args:
            metric: ``"loss"``, ``"nll"`` or ``"error"``.
            split: an evaluated split.

        Returns:
            ``[T]`` float64 tensor.
        """
        if metric not in METRICS:
            raise KeyError(f"metric must be one of {METRICS}, got {metric!r}")
        table = getattr(self, metric)
        if split not in table:
            raise KeyError(f"no {metric!r} values for split {split!r}; available: {sorted(table)}")
        return table[split]

    def flat(self) -> dict[str, float]:
        """Summaries as a flat mapping for catalogs and data frames.

        Returns:
            ``{"length": float, "<stat>_<metric>_<split>": float}`` for stat in ``mc, min, max, mean, int``,
            e.g. ``"mc_error_test"``, ``"max_loss_train"``.
        """
        out = {"length": self.length}
        for split in self.splits:
            for metric, value in self.mc.get(split, {}).items():
                out[f"mc_{metric}_{split}"] = value
            for metric, st in self.stats.get(split, {}).items():
                for name, value in st.items():
                    out[f"{name}_{metric}_{split}"] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes None).

        Returns:
            dict with the settings, ``ts``, ``dl``, the curves and the summaries.
        """

        def clean(v: float) -> float | None:
            return None if isinstance(v, float) and math.isnan(v) else v

        def curves(table: dict[str, Tensor]) -> dict[str, list[float | None]]:
            return {k: [clean(x) for x in v.tolist()] for k, v in table.items()}

        return {
            "kind": self.kind, "num_bends": self.num_bends, "bn_mode": self.bn_mode, "task": self.task,
            "weight_decay": self.weight_decay, "mc_points": self.mc_points, "method": self.method,
            "length": self.length, "ts": self.ts.tolist(), "dl": self.dl.tolist(),
            "loss": curves(self.loss), "nll": curves(self.nll), "error": curves(self.error),
            "stats": {s: {m: {k: clean(v) for k, v in d.items()} for m, d in pm.items()}
                      for s, pm in self.stats.items()},
            "mc": {s: {m: clean(v) for m, v in pm.items()} for s, pm in self.mc.items()},
        }  # fmt: skip


def _vmap_metrics(
    curve: Curve, ts: Tensor, split_data: dict[str, tuple[Tensor, Tensor]], task: str, bn_x: Tensor | None,
    batch_size: int, bn_batch_size: int, t_batch_size: int,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    template = curve.template
    was = template.training
    template.eval()
    nll: dict[str, list[Tensor]] = {s: [] for s in split_data}
    err: dict[str, list[Tensor]] = {s: [] for s in split_data}
    try:
        for start in range(0, ts.shape[0], t_batch_size):
            chunk = ts[start:start + t_batch_size]
            params = curve.stacked_weights(chunk)
            buffers = curve.stacked_buffers(chunk)
            if bn_x is not None:
                buffers.update(batched_bn_stats(template, params, bn_x, batch_size=bn_batch_size, buffers=buffers))
            for split, (x, y) in split_data.items():
                loss, e = batched_evaluate(template, params, buffers, x, y, task, batch_size=batch_size)
                nll[split].append(loss)
                if e is not None:
                    err[split].append(e)
    finally:
        template.train(was)
    return {s: torch.cat(v) for s, v in nll.items()}, {s: torch.cat(v) for s, v in err.items() if v}


def _loop_metrics(
    curve: Curve, ts: Tensor, split_data: dict[str, tuple[Tensor, Tensor]], task: str, bn_x: Tensor | None,
    batch_size: int, bn_batch_size: int,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    nll: dict[str, list[float]] = {s: [] for s in split_data}
    err: dict[str, list[float]] = {s: [] for s in split_data}
    for t in ts.tolist():
        model = curve.model_at(t, data=bn_x, batch_size=bn_batch_size)
        for split, (x, y) in split_data.items():
            loss, e = evaluate_model(model, x, y, task, batch_size=batch_size)
            nll[split].append(loss)
            if e is not None:
                err[split].append(e)
    as_t = lambda v: torch.tensor(v, dtype=torch.float64)
    return {s: as_t(v) for s, v in nll.items()}, {s: as_t(v) for s, v in err.items() if v}


def _check_settings(curve: Any, bn_mode: str, method: str, splits: Sequence[str] | str, batch_size: int,
                    bn_batch_size: int, weight_decay: float, n_points: int, mc_points: int,
                    ts: Tensor | None) -> tuple[tuple[str, ...], Tensor]:
    if not isinstance(curve, Curve):
        raise TypeError(f"curve must be a zooscape.connect.Curve, got {type(curve).__name__}")
    splits = check_evaluation(bn_mode, method, METHODS, splits, batch_size, bn_batch_size)
    if not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if ts is None:
        ts = curve_ts(n_points, mc_points)
    else:
        ts = torch.as_tensor(ts, dtype=torch.float64).reshape(-1)
        if ts.shape[0] < 2 or not bool((ts[1:] > ts[:-1]).all()):
            raise ValueError("ts must be strictly increasing with at least 2 entries")
        _mc_positions(ts, mc_points)
    return splits, ts


def _summarise(curve: Curve, ts: Tensor, nll: dict[str, Tensor], err: dict[str, Tensor], splits: tuple[str, ...],
               weight_decay: float, mc_points: int, bn_mode: str, task: str, method: str) -> CurveEvaluation:
    dl = segment_lengths(curve, ts)
    reg = 0.5 * float(weight_decay) * _sq_norms(curve, ts) if weight_decay else torch.zeros_like(ts)
    loss = {s: v + reg for s, v in nll.items()}
    stats: dict[str, dict[str, dict[str, float]]] = {}
    mc: dict[str, dict[str, float]] = {}
    for split in splits:
        tables = {"loss": loss[split], "nll": nll[split]}
        if split in err:
            tables["error"] = err[split]
        stats[split] = {m: curve_stats(v, dl) for m, v in tables.items()}
        mc[split] = {m: mode_connectivity(v, ts, mc_points) for m, v in tables.items()}
    return CurveEvaluation(
        ts=ts, dl=dl, loss=loss, nll=nll, error=err, stats=stats, mc=mc, kind=curve.kind,
        num_bends=curve.num_bends, bn_mode=bn_mode, task=task, weight_decay=float(weight_decay),
        mc_points=mc_points, method=method, splits=splits,
    )  # fmt: skip


def _population_metrics(
    curves: Sequence[Curve], ts: Tensor, split_data: dict[str, tuple[Tensor, Tensor]], task: str,
    bn_x: Tensor | None, batch_size: int, bn_batch_size: int, max_members: int | None, device: torch.device,
    progress: Any = None,
) -> list[tuple[dict[str, Tensor], dict[str, Tensor]]]:
    n_t = ts.shape[0]

    def states(start: int, stop: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        params: dict[str, list[Tensor]] = {}
        buffers: dict[str, list[Tensor]] = {}
        for c in range(start // n_t, (stop - 1) // n_t + 1):
            lo, hi = max(start, c * n_t) - c * n_t, min(stop, (c + 1) * n_t) - c * n_t
            sub = ts[lo:hi]
            for k, v in curves[c].stacked_weights(sub).items():
                params.setdefault(k, []).append(v.detach().to(device))
            for k, v in curves[c].stacked_buffers(sub).items():
                buffers.setdefault(k, []).append(v.detach().to(device))
        return ({k: torch.cat(v) for k, v in params.items()}, {k: torch.cat(v) for k, v in buffers.items()})

    nll, err = evaluate_members(curves[0].template, states, len(curves) * n_t, split_data, task, bn_x=bn_x,
                                batch_size=batch_size, bn_batch_size=bn_batch_size, max_members=max_members,
                                device=device, progress=progress)
    out = []
    for c in range(len(curves)):
        sl = slice(c * n_t, (c + 1) * n_t)
        out.append(({s: v[sl] for s, v in nll.items()}, {s: v[sl] for s, v in err.items()}))
    return out


@torch.no_grad()
def evaluate_curves(
    curves: Sequence[Curve],
    data: Any,
    n_points: int = 61,
    *,
    splits: Sequence[str] = ("train", "test"),
    weight_decay: float = 0.0,
    bn_mode: str = "reset",
    mc_points: int = 5,
    ts: Tensor | None = None,
    task: str | None = None,
    batch_size: int = 1024,
    bn_batch_size: int = 256,
    max_members: int | None = None,
    method: str = "auto",
    device: str | torch.device | None = None,
    progress: Any = None,
) -> list[CurveEvaluation]:
    """:func:`evaluate_curve` for many curves of one architecture, the points of several curves per pass.

    Every (curve, ``t``) is a member of a :class:`zooscape.train.Population` chunk
    (:func:`zooscape.connect.population.evaluate_members`); BatchNorm statistics are re-estimated per member
    with :func:`~zooscape.connect.bn.recompute_bn_stats` (``bn_mode="reset"``) or blended from the nodes. Each
    result equals :func:`evaluate_curve` of that curve (any ``method``) within float tolerance.

    Args:
        curves: trained curves of one architecture (not modified).
        data: ``DataSplits``-like object or mapping ``{split: (x, y)}``.
        n_points, splits, weight_decay, bn_mode, mc_points, ts, task, batch_size, bn_batch_size, device: as
            :func:`evaluate_curve`.
        max_members: at most this many curve points per population (default: a memory budget, see
            :func:`zooscape.connect.population.member_chunks`).
        method: ``"auto"`` (:func:`~zooscape.connect.population.pick_method`: the population for small networks),
            ``"population"``, or ``"vmap"``/``"loop"`` (each curve on its own through :func:`evaluate_curve`).
        progress: ``fn(k)`` after each chunk with the points it finished (population only).

    Returns:
        One :class:`CurveEvaluation` per curve; ``[T]`` values per split and metric.

    References:
        Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity, and Fast
        Ensembling of DNNs"; Schürholt et al. (2025), "A Model Zoo on Phase Transitions in Neural Networks" (mc).
    """
    curves = list(curves)
    if not curves:
        return []
    for c in curves:
        splits, ts_checked = _check_settings(c, bn_mode, "population", splits, batch_size, bn_batch_size,
                                             weight_decay, n_points, mc_points, ts)
    ts = ts_checked
    split_data = {s: get_split(data, s) for s in splits}
    task = infer_task(data, next(iter(split_data.values()))[1], task)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    method = pick_method(curves[0].template, next(iter(split_data.values()))[0], method)
    if method != "population":
        return [evaluate_curve(c, data, n_points, splits=splits, weight_decay=weight_decay, bn_mode=bn_mode,
                               mc_points=mc_points, ts=ts, task=task, batch_size=batch_size,
                               bn_batch_size=bn_batch_size, method=method, device=device) for c in curves]
    originals = [next(c.parameters()).device for c in curves]
    dev = torch.device(device) if device is not None else originals[0]
    bn_x = train_inputs(data) if bn_mode == "reset" and has_batchnorm(curves[0].template) else None
    modes = [c.training for c in curves]
    for c in curves:
        c.to(dev).eval()
    try:
        parts = _population_metrics(curves, ts, split_data, task, bn_x, batch_size, bn_batch_size, max_members,
                                    dev, progress)
        return [_summarise(c, ts, nll, err, splits, weight_decay, mc_points, bn_mode, task, "population")
                for c, (nll, err) in zip(curves, parts)]
    finally:
        for c, home, was in zip(curves, originals, modes):
            c.to(home).train(was)


def evaluate_curve(
    curve: Curve,
    data: Any,
    n_points: int = 61,
    *,
    splits: Sequence[str] = ("train", "test"),
    weight_decay: float = 0.0,
    bn_mode: str = "reset",
    mc_points: int = 5,
    ts: Tensor | None = None,
    task: str | None = None,
    batch_size: int = 1024,
    bn_batch_size: int = 256,
    t_batch_size: int | None = None,
    method: str = "auto",
    device: str | torch.device | None = None,
) -> CurveEvaluation:
    """Loss, nll and error along a curve, segment lengths, summaries and mc.

    Args:
        curve: the curve (not modified; evaluated in eval mode).
        data: ``DataSplits``-like object or mapping ``{split: (x, y)}``.
        n_points: evenly spaced positions including both ends (61 in the reference); the ``mc_points`` mc
            positions are added when missing (see :func:`curve_ts`).
        splits: splits to evaluate.
        weight_decay: ``wd`` of ``loss = nll + 0.5 * wd * ||w(t)||^2`` (0: loss equals nll).
        bn_mode: ``"reset"`` (default): BatchNorm statistics re-estimated exactly on the ``"train"`` split at every
            ``t``; ``"interpolate"``: the nodes' statistics blended with the curve coefficients (exact only at
            the nodes).
        mc_points: evenly spaced positions of the mc metric (5 in the reference).
        ts: explicit positions ``[T]`` (sorted, in [0, 1], with the mc positions); overrides ``n_points``.
        task: ``"classification"`` or ``"regression"``; inferred from the data.
        batch_size: evaluation batch size (the vectorized pass holds ``T x batch_size`` activations).
        bn_batch_size: batch size of the BatchNorm re-estimation pass.
        t_batch_size: evaluate at most this many positions at once (default: all; for ``"population"`` the
            default is a memory budget, :func:`zooscape.connect.population.member_chunks`).
        method: ``"auto"`` (default: the fastest for this network, :func:`~zooscape.connect.population.pick_method`:
            the population for small networks with population layers, else the faster of vmap and loop),
            ``"population"`` (positions
            as members of one :class:`zooscape.train.Population` per pass, :func:`evaluate_curves`), ``"vmap"``
            (all positions in one vectorised pass) or ``"loop"`` (one standalone network per position, the slow
            reference).
        device: where to evaluate (default: the curve's device).

    Returns:
        :class:`CurveEvaluation`.

    References:
        Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity, and Fast
        Ensembling of DNNs"; Schürholt et al. (2025), "A Model Zoo on Phase Transitions in Neural Networks" (mc).
    """
    splits, ts = _check_settings(curve, bn_mode, method, splits, batch_size, bn_batch_size, weight_decay,
                                 n_points, mc_points, ts)
    if t_batch_size is None:
        t_batch_size = ts.shape[0]
    if isinstance(t_batch_size, bool) or not isinstance(t_batch_size, int) or t_batch_size < 1:
        raise ValueError(f"t_batch_size must be a positive integer, got {t_batch_size!r}")
    split_data = {s: get_split(data, s) for s in splits}
    task = infer_task(data, next(iter(split_data.values()))[1], task)
    method = pick_method(curve.template, next(iter(split_data.values()))[0], method)
    if method == "population":
        return evaluate_curves([curve], data, n_points, splits=splits, weight_decay=weight_decay, bn_mode=bn_mode,
                               mc_points=mc_points, ts=ts, task=task, batch_size=batch_size,
                               bn_batch_size=bn_batch_size, max_members=t_batch_size, method="population",
                               device=device)[0]
    original = next(curve.parameters()).device
    dev = torch.device(device) if device is not None else original
    bn_x = train_inputs(data) if bn_mode == "reset" and has_batchnorm(curve.template) else None
    was = curve.training
    curve.to(dev).eval()
    try:
        if method == "vmap":
            nll, err = _vmap_metrics(curve, ts, split_data, task, bn_x, batch_size, bn_batch_size, t_batch_size)
        else:
            nll, err = _loop_metrics(curve, ts, split_data, task, bn_x, batch_size, bn_batch_size)
    finally:
        curve.to(original).train(was)
    return _summarise(curve, ts, nll, err, splits, weight_decay, mc_points, bn_mode, task, method)
