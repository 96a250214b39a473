"""Renormalisation of interpolated or merged models: reset BatchNorm, REPAIR, RESCALE, RESHIFT.

Averaging the weights of (aligned) networks shrinks the variance of hidden pre-activations ("variance
collapse").  :func:`reset_bn_stats` re-estimates BatchNorm running statistics; :func:`repair` measures,
at every *correction point* (the output of a Linear/Conv layer, or of the chain of normalisation layers
directly after it), the per-channel mean and std of the endpoint models, and rescales / shifts the
merged model's channels to the interpolated statistics.  The correction is fused into the existing
weights and biases (or norm affine parameters), so the result is a plain model of the original class.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from zooscape.connect.bn import reset_bn_stats

from .stats import ChannelStats, iter_batches, model_device, normalize_weights, on_device, unit_columns

__all__ = ["RENORM_METHODS", "CorrectionPoint", "correction_points", "renormalize", "repair", "reset_bn_stats"]

RENORM_METHODS = ("reset_bn", "repair", "rescale", "reshift")

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_NORMS = _BN + (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


@dataclass(frozen=True)
class CorrectionPoint:
    """Where REPAIR measures and corrects channel statistics.

    Attributes:
        module: qualified name of the module whose output is corrected (a layer or the last norm after it).
        layer: qualified name of the Linear/Conv layer that starts the chain.
        channel_dim: dimension of the channels in the module's output (-1 for Linear, 1 for Conv).
        n: number of channels.
    """

    module: str
    layer: str
    channel_dim: int
    n: int


def correction_points(model: nn.Module) -> list[CorrectionPoint]:
    """Find the correction points of ``model`` in execution order.

    Every Linear/Conv layer called once gives a point, at the end of the chain of normalisation modules
    that directly follow it.  Layers with no Linear/Conv layer downstream (the classifier) are skipped.

    Args:
        model: a torch.fx-traceable model.

    Returns:
        list of :class:`CorrectionPoint`.
    """
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"model {type(model).__name__} cannot be traced by torch.fx: {exc}") from exc
    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    calls: dict[str, int] = {}
    for node in nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    downstream: dict[fx.Node, bool] = {}
    for node in reversed(nodes):  # does any layer read this node's value, directly or indirectly?
        downstream[node] = any(
            (u.op == "call_module" and isinstance(modules[str(u.target)], _LAYERS)) or downstream.get(u, False)
            for u in node.users
        )
    points = []
    for node in nodes:
        if node.op != "call_module" or not isinstance(modules[str(node.target)], _LAYERS):
            continue
        layer = modules[str(node.target)]
        if calls[str(node.target)] > 1:
            continue
        end = node
        while len(end.users) == 1:
            user = next(iter(end.users))
            if user.op == "call_module" and isinstance(modules[str(user.target)], _NORMS) \
                    and calls[str(user.target)] == 1:
                end = user
            else:
                break
        if not downstream[end]:
            continue
        if isinstance(layer, nn.Linear):
            dim, n = -1, layer.out_features
        else:
            dim, n = 1, layer.out_channels
        points.append(CorrectionPoint(str(end.target), str(node.target), dim, n))
    return points


def _restore_modes(modes: dict[nn.Module, bool]) -> None:
    for m, mode in modes.items():
        m.training = mode


class _Stop(Exception):
    pass


@torch.no_grad()
def _point_stats(model: nn.Module, points: Sequence[CorrectionPoint], data: Any, batch_size: int,
                 device: torch.device, stop_after: bool = False) -> dict[str, ChannelStats]:
    """Per-channel statistics at ``points`` (eval mode).  ``stop_after`` aborts the forward pass once
    the single requested point is measured."""
    modules = dict(model.named_modules())
    stats = {p.module: ChannelStats(p.n, device) for p in points}
    handles = []

    def hook_for(p: CorrectionPoint):
        def hook(_mod, _inp, out):
            stats[p.module].update(unit_columns(out, p.channel_dim % out.ndim, p.n))
            if stop_after:
                raise _Stop
        return hook

    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for p in points:
            handles.append(modules[p.module].register_forward_hook(hook_for(p)))
        for x in iter_batches(data, batch_size, device):
            try:
                model(x)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
        _restore_modes(modes)
    return stats


def _fuse(module: nn.Module, point: CorrectionPoint, scale: torch.Tensor, shift: torch.Tensor) -> str | None:
    """Fold ``y -> scale * y + shift`` (per channel) into ``module``; return a reason if impossible."""
    n = point.n
    with torch.no_grad():
        if isinstance(module, _LAYERS):
            transposed = isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
            w = module.weight
            if transposed:
                if module.groups != 1:
                    return "grouped transposed convolution"
                view = [1, n] + [1] * (w.ndim - 2)
            else:
                view = [n] + [1] * (w.ndim - 1)
            if module.bias is None and bool((shift != 0).any()):
                return "layer has no bias to absorb the shift"
            w.mul_(scale.to(w).view(view))
            if module.bias is not None:
                module.bias.copy_(module.bias * scale.to(w) + shift.to(w))
            return None
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if weight is None or bias is None:
            return f"{type(module).__name__} has no affine parameters to absorb the correction"
        if weight.shape[0] != n:
            return f"{type(module).__name__} weight shape {tuple(weight.shape)} does not start with {n} channels"
        view = [n] + [1] * (weight.ndim - 1)
        weight.mul_(scale.to(weight).view(view))
        bias.copy_(bias * scale.to(bias).view(view) + shift.to(bias).view(view))
        return None


def repair(
    model: nn.Module,
    endpoints: Sequence[nn.Module],
    data: Any,
    weights: Sequence[float] | torch.Tensor | None = None,
    *,
    method: str = "repair",
    batch_size: int = 256,
    device: torch.device | str | None = None,
    eps: float = 1e-6,
) -> nn.Module:
    """Correct the channel statistics of an interpolated/merged model towards those of its endpoints.

    The goal at each correction point is ``goal_mean = sum_k w_k mean_k`` and ``goal_std = sum_k w_k
    std_k`` over the (aligned) endpoint models.  Points are corrected one after another in execution order,
    each measured after the earlier ones were fused, so afterwards every point of the returned model has
    exactly the goal statistics on ``data`` (eval mode).  ``method``: ``"repair"`` sets mean and std,
    ``"rescale"`` multiplies by ``goal_std / std`` only, ``"reshift"`` adds ``goal_mean - mean`` only.

    Args:
        model: the merged model (not modified).
        endpoints: the aligned models it was merged from (same architecture).
        data: input tensor ``[N, ...]`` or iterable of batches.
        weights: interpolation weights of the endpoints (uniform when None; normalised to sum 1).
        method: ``"repair"``, ``"rescale"`` or ``"reshift"``.
        batch_size: chunk size when ``data`` is a tensor.
        device: where to run (the model's device when None).
        eps: channels whose std is below ``eps`` keep their scale (they are constant on ``data``).

    Returns:
        a new model of the same class with the corrections fused into its parameters.

    References:
        Jordan, Sedghi, Saukh, Entezari & Neyshabur (2023), "REPAIR: REnormalizing Permuted Activations for
        Interpolation Repair"; Qu & Horvath (2024), "Rethink Model Re-Basin and the Linear Mode Connectivity".
    """
    if method not in ("repair", "rescale", "reshift"):
        raise ValueError(f"method must be 'repair', 'rescale' or 'reshift', got {method!r}")
    if len(endpoints) < 1:
        raise ValueError("endpoints must contain at least one model")
    w = normalize_weights(weights, len(endpoints))
    device = torch.device(device) if device is not None else model_device(model)
    points = correction_points(model)
    names = {p.module for p in points}
    for i, e in enumerate(endpoints):
        have = dict(e.named_modules())
        if not names <= set(have):
            raise ValueError(f"endpoints[{i}] lacks modules {sorted(names - set(have))[:5]}")
    goal_mean = {p.module: torch.zeros(p.n, dtype=torch.float64, device=device) for p in points}
    goal_std = {p.module: torch.zeros(p.n, dtype=torch.float64, device=device) for p in points}
    for wk, e in zip(w.tolist(), endpoints):
        st = _point_stats(on_device(e, device), points, data, batch_size, device)
        for p in points:
            goal_mean[p.module] += wk * st[p.module].mean()
            goal_std[p.module] += wk * st[p.module].var().sqrt()
    new = on_device(copy.deepcopy(model), device)
    modules = dict(new.named_modules())
    for p in points:
        st = _point_stats(new, [p], data, batch_size, device, stop_after=True)[p.module]
        mean, std = st.mean(), st.var().sqrt()
        # channels that are (almost) constant cannot be rescaled: keep their scale
        ratio = torch.where(std > eps, goal_std[p.module] / std.clamp_min(eps), torch.ones_like(std))
        if method == "repair":
            scale = ratio
            shift = goal_mean[p.module] - mean * scale
        elif method == "rescale":
            scale, shift = ratio, torch.zeros_like(mean)
        else:
            scale, shift = torch.ones_like(mean), goal_mean[p.module] - mean
        why = _fuse(modules[p.module], p, scale, shift)
        if why is not None:
            warnings.warn(f"{method}: correction point {p.module} skipped: {why}", stacklevel=2)
    return new if device == model_device(model) else new.to(model_device(model))


def renormalize(
    model: nn.Module,
    data: Any,
    method: str | Sequence[str],
    endpoints: Sequence[nn.Module] | None = None,
    weights: Sequence[float] | torch.Tensor | None = None,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Apply one or more renormalisations in order (e.g. ``("reset_bn", "repair")``).

    Args:
        model: interpolated or merged model (not modified).
        data: input tensor ``[N, ...]`` or iterable of batches.
        method: one of :data:`RENORM_METHODS` or a sequence of them.
        endpoints: the aligned endpoint models (needed by repair / rescale / reshift).
        weights: their interpolation weights (uniform when None).
        batch_size: chunk size when ``data`` is a tensor.
        device: where to run.

    Returns:
        a new model of the same class.

    References:
        Jordan et al. (2023), "REPAIR"; Qu & Horvath (2024), "Rethink Model Re-Basin".
    """
    methods = (method,) if isinstance(method, str) else tuple(method)
    bad = [m for m in methods if m not in RENORM_METHODS]
    if bad or not methods:
        raise ValueError(f"method must be one or more of {RENORM_METHODS}, got {method!r}")
    out = model
    for m in methods:
        if m == "reset_bn":
            out = reset_bn_stats(out, data, batch_size=batch_size, device=device)
        else:
            if not endpoints:
                raise ValueError(f"method {m!r} needs the endpoint models (endpoints=...)")
            out = repair(out, endpoints, data, weights, method=m, batch_size=batch_size, device=device)
    return out
