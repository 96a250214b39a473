"""The plane through a curve's two endpoints and one bend: orthonormal basis and grid evaluation.

With ``w_0`` the start, ``w_1`` the end and ``w_b`` a bend (flattened parameter vectors), the basis is
``u = (w_1 - w_0) / dx`` with ``dx = ||w_1 - w_0||`` and ``v = (r - (r . u) u) / dy`` with ``r = w_b - w_0`` and
``dy`` the norm of that residual (Gram-Schmidt). A point ``(x, y)`` of the plane is ``w_0 + x u + y v``; the
start is at ``(0, 0)``, the end at ``(dx, 0)``, the bend at ``(r . u, dy)``. The grid covers
``[-margin_left, 1 + margin_right] dx x [-margin_bottom, 1 + margin_top] dy`` (21 x 21, margins 0.2 in the
reference ``plane.py``). Only parameters span the plane; BatchNorm statistics are re-estimated on the training
split at every grid point, other floating buffers are the start's. All grid points are evaluated in vectorized
chunks (``torch.func.vmap``, :mod:`zooscape.connect.batched`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from zooscape._deprecate import renamed_kwargs
from zooscape.connect.batched import batched_bn_stats, batched_evaluate
from zooscape.connect.bn import has_batchnorm
from zooscape.connect.curve import Curve
from zooscape.data.adapt import get_split, infer_task, train_inputs

__all__ = ["Plane", "PlaneGrid", "curve_plane", "evaluate_plane"]


@dataclass
class Plane:
    """An affine plane in parameter space with an orthonormal basis.

    Attributes:
        origin: ``w_0``, shape ``[D]`` (float64, CPU).
        u: first unit vector, ``[D]``.
        v: second unit vector, orthogonal to ``u``, ``[D]``.
        dx: distance start-end.
        dy: distance of the bend from the start-end line.
        names: parameter names in flattening order.
        shapes: parameter shapes.
    """

    origin: Tensor
    u: Tensor
    v: Tensor
    dx: float
    dy: float
    names: list[str] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)

    def coordinates(self, points: Tensor) -> Tensor:
        """Coordinates of points projected onto the plane.

        Args:
            points: flattened parameter vectors ``[N, D]`` (or ``[D]``).

        Returns:
            ``[N, 2]`` (or ``[2]``) float64: ``((p - origin) . u, (p - origin) . v)``.
        """
        p = torch.as_tensor(points, dtype=torch.float64)
        single = p.dim() == 1
        p = p.reshape(-1, self.origin.shape[0]) - self.origin
        xy = torch.stack([p @ self.u, p @ self.v], dim=-1)
        return xy[0] if single else xy

    def points(self, xy: Tensor) -> Tensor:
        """Parameter vectors at plane coordinates.

        Args:
            xy: ``[N, 2]`` coordinates.

        Returns:
            ``[N, D]`` float64: ``origin + x u + y v``.
        """
        xy = torch.as_tensor(xy, dtype=torch.float64).reshape(-1, 2)
        return self.origin + xy[:, :1] * self.u + xy[:, 1:] * self.v

    def unflatten(self, vectors: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
        """Split flattened vectors into stacked parameter tensors.

        Args:
            vectors: ``[N, D]``.
            like: ``{name: tensor}`` giving each parameter's dtype and device.

        Returns:
            ``{name: [N, *shape]}``.
        """
        out: dict[str, Tensor] = {}
        offset = 0
        for name, shape in zip(self.names, self.shapes):
            size = math.prod(shape)
            ref = like[name]
            chunk = vectors[:, offset:offset + size].reshape(vectors.shape[0], *shape)
            out[name] = chunk.to(ref.device, ref.dtype)
            offset += size
        return out


def curve_plane(curve: Curve, bend: int | None = None) -> Plane:
    """The plane through the curve's start, end and one bend.

    Args:
        curve: a curve with at least one bend.
        bend: node index of the bend (``1 .. num_bends``; default the middle bend, ``(num_nodes - 1) // 2``).

    Returns:
        :class:`Plane` with origin at the start.

    References:
        Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity, and Fast
        Ensembling of DNNs" (``plane.py``).
    """
    if curve.num_bends < 1:
        raise ValueError("the curve has no bend (num_bends=0): a plane needs start, end and one bend")
    if bend is None:
        bend = (curve.num_nodes - 1) // 2
    if isinstance(bend, bool) or not isinstance(bend, int) or not 1 <= bend <= curve.num_bends:
        raise ValueError(f"bend must be a node index in [1, {curve.num_bends}], got {bend!r}")
    w = curve.node_vectors()
    origin = w[0]
    e = w[-1] - origin
    dx = float(e.norm())
    if dx == 0:
        raise ValueError("start and end coincide: the plane is undefined")
    u = e / dx
    r = w[bend] - origin
    r = r - (r @ u) * u
    dy = float(r.norm())
    if dy <= 1e-5 * dx:  # float32 rounding of a bend initialised on the line leaves a ~1e-7 residual
        raise ValueError(f"bend {bend} lies on the straight line between the endpoints (untrained linear init?): "
                         "the plane is undefined")
    v = r / dy
    names = list(curve.param_names)
    shapes = [tuple(p.shape) for p in curve.nodes[0].param_list()]
    return Plane(origin=origin, u=u, v=v, dx=dx, dy=dy, names=names, shapes=shapes)


@dataclass
class PlaneGrid:
    """Result of :func:`evaluate_plane`.

    Attributes:
        plane: the :class:`Plane`.
        alphas, betas: grid fractions ``[Gx]``, ``[Gy]`` (0 and 1 are the start/end and the bend's height).
        xs, ys: grid coordinates ``alphas * dx``, ``betas * dy``.
        loss, nll, error: ``{split: [Gx, Gy]}`` (index ``[i, j]`` is ``(xs[i], ys[j])``).
        node_xy: coordinates of every node ``[K, 2]``.
        curve_ts, curve_xy: curve positions ``[T]`` and their projections ``[T, 2]``.
        task, weight_decay: settings.
    """

    plane: Plane
    alphas: Tensor
    betas: Tensor
    xs: Tensor
    ys: Tensor
    loss: dict[str, Tensor]
    nll: dict[str, Tensor]
    error: dict[str, Tensor]
    node_xy: Tensor
    curve_ts: Tensor
    curve_xy: Tensor
    task: str
    weight_decay: float = 0.0

    def values(self, metric: str, split: str) -> Tensor:
        """One grid of values.

        Args:
            metric: ``"loss"``, ``"nll"`` or ``"error"``.
            split: an evaluated split.

        Returns:
            ``[Gx, Gy]``.
        """
        if metric not in ("loss", "nll", "error"):
            raise KeyError(f"metric must be 'loss', 'nll' or 'error', got {metric!r}")
        table = getattr(self, metric)
        if split not in table:
            raise KeyError(f"no {metric!r} grid for split {split!r}; available: {sorted(table)}")
        return table[split]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (grids as nested lists).

        Returns:
            dict.
        """
        return {
            "dx": self.plane.dx, "dy": self.plane.dy, "alphas": self.alphas.tolist(), "betas": self.betas.tolist(),
            "xs": self.xs.tolist(), "ys": self.ys.tolist(), "node_xy": self.node_xy.tolist(),
            "curve_ts": self.curve_ts.tolist(), "curve_xy": self.curve_xy.tolist(), "task": self.task,
            "weight_decay": self.weight_decay,
            "loss": {k: v.tolist() for k, v in self.loss.items()},
            "nll": {k: v.tolist() for k, v in self.nll.items()},
            "error": {k: v.tolist() for k, v in self.error.items()},
        }  # fmt: skip


def _margins(margin: float | Sequence[float]) -> tuple[float, float, float, float]:
    if isinstance(margin, (int, float)) and not isinstance(margin, bool):
        m = (float(margin),) * 4
    else:
        m = tuple(float(v) for v in margin)
    if len(m) != 4 or not all(math.isfinite(v) and v >= 0 for v in m):
        raise ValueError(f"margin must be a number >= 0 or (left, right, bottom, top), got {margin!r}")
    return m  # type: ignore[return-value]


@renamed_kwargs(grid_points="n_points")
@torch.no_grad()
def evaluate_plane(
    curve: Curve,
    data: Any,
    n_points: int | tuple[int, int] = 21,
    *,
    margin: float | Sequence[float] = 0.2,
    splits: Sequence[str] = ("train", "test"),
    weight_decay: float = 0.0,
    bend: int | None = None,
    curve_points: int = 61,
    task: str | None = None,
    batch_size: int = 1024,
    bn_batch_size: int = 256,
    point_batch_size: int = 64,
    device: str | torch.device | None = None,
) -> PlaneGrid:
    """Loss, nll and error on a grid over the plane of a curve's endpoints and one bend.

    Args:
        curve: a curve with at least one bend (not modified).
        data: ``DataSplits``-like object or mapping ``{split: (x, y)}``.
        n_points: points per axis (``G`` or ``(Gx, Gy)``, each >= 2).
        margin: extension beyond ``[0, 1]`` in units of ``dx`` / ``dy``: one number or (left, right, bottom, top).
        splits: splits to evaluate.
        weight_decay: ``loss = nll + 0.5 * weight_decay * ||w||^2``.
        bend: node index spanning the plane (default the middle bend).
        curve_points: positions at which the curve is projected for drawing.
        task: ``"classification"`` or ``"regression"``; inferred from the data.
        batch_size: evaluation batch size.
        bn_batch_size: batch size of the BatchNorm re-estimation pass.
        point_batch_size: grid points evaluated at once (memory grows with it).
        device: where to evaluate (default: the curve's device).

    Returns:
        :class:`PlaneGrid`.

    References:
        Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity, and Fast
        Ensembling of DNNs".
    """
    gx, gy = (n_points, n_points) if isinstance(n_points, int) else tuple(n_points)
    for name, value, low in (("n_points", gx, 2), ("n_points", gy, 2), ("curve_points", curve_points, 2),
                             ("point_batch_size", point_batch_size, 1), ("batch_size", batch_size, 1),
                             ("bn_batch_size", bn_batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(splits, str):
        splits = (splits,)
    splits = tuple(splits)
    if not splits:
        raise ValueError("splits must name at least one split")
    left, right, bottom, top = _margins(margin)
    plane = curve_plane(curve, bend)
    split_data = {s: get_split(data, s) for s in splits}
    task = infer_task(data, next(iter(split_data.values()))[1], task)
    alphas = torch.linspace(-left, 1.0 + right, gx, dtype=torch.float64)
    betas = torch.linspace(-bottom, 1.0 + top, gy, dtype=torch.float64)
    xs, ys = alphas * plane.dx, betas * plane.dy
    grid_xy = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), dim=-1).reshape(-1, 2)  # [Gx * Gy, 2]

    original = next(curve.parameters()).device
    dev = torch.device(device) if device is not None else original
    template = curve.template
    was = template.training
    curve.to(dev)
    template.eval()
    bn_x = train_inputs(data) if has_batchnorm(template) else None
    like = {n: p for n, p in zip(curve.param_names, curve.nodes[0].param_list())}
    start_buffers = {n: b for n, b in zip(curve.buffer_names, curve.nodes[0].buffer_list())}
    nll: dict[str, list[Tensor]] = {s: [] for s in splits}
    err: dict[str, list[Tensor]] = {s: [] for s in splits}
    sq: list[Tensor] = []
    try:
        for start in range(0, grid_xy.shape[0], point_batch_size):
            vectors = plane.points(grid_xy[start:start + point_batch_size])
            sq.append(vectors.pow(2).sum(1))
            params = plane.unflatten(vectors, like)
            n = vectors.shape[0]
            buffers = {k: b.expand(n, *b.shape).clone() for k, b in start_buffers.items()}
            if bn_x is not None:
                buffers.update(batched_bn_stats(template, params, bn_x, batch_size=bn_batch_size, buffers=buffers))
            for split, (x, y) in split_data.items():
                loss, e = batched_evaluate(template, params, buffers, x, y, task, batch_size=batch_size)
                nll[split].append(loss)
                if e is not None:
                    err[split].append(e)
        curve_ts = torch.linspace(0.0, 1.0, curve_points, dtype=torch.float64)
        stacked = curve.stacked_weights(curve_ts)
        flat = torch.cat([stacked[n].reshape(curve_points, -1).to("cpu", torch.float64) for n in plane.names], 1)
        curve_xy = plane.coordinates(flat)
    finally:
        curve.to(original)
        template.train(was)
    reg = 0.5 * float(weight_decay) * torch.cat(sq) if weight_decay else torch.zeros(grid_xy.shape[0],
                                                                                       dtype=torch.float64)
    shape = (gx, gy)
    nll_grid = {s: torch.cat(v).reshape(shape) for s, v in nll.items()}
    return PlaneGrid(
        plane=plane, alphas=alphas, betas=betas, xs=xs, ys=ys,
        loss={s: v + reg.reshape(shape) for s, v in nll_grid.items()}, nll=nll_grid,
        error={s: torch.cat(v).reshape(shape) for s, v in err.items() if v},
        node_xy=plane.coordinates(curve.node_vectors()), curve_ts=curve_ts, curve_xy=curve_xy, task=task,
        weight_decay=float(weight_decay),
    )  # fmt: skip
