"""Loss-landscape surfaces: 1-D and 2-D slices through parameter space, and their PNG plots.

A surface evaluates ``L(theta + a d1 [+ b d2])`` on a grid around a model's parameters ``theta``:

- random directions with *filter normalisation* (each output filter/row of a direction rescaled to the norm of the
  matching filter of ``theta``), optionally zero on 1-D parameters (biases, BatchNorm/LayerNorm affine), which
  makes plots comparable across networks of different scale;
- the PCA plane of a training trajectory (the two leading principal directions of ``theta_t - theta_final``),
  with the trajectory projected onto it.

Grid points are evaluated functionally, several at a time with :func:`torch.func.vmap`, in eval mode (BatchNorm
uses the centre model's running statistics; buffers are not perturbed): the model is never modified, unlike
loss-landscapes which mutates the model in place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import vmap

from zooscape._deprecate import renamed_kwargs
from zooscape._io import save_figure
from zooscape.landscape._hvp import (
    LossFn,
    ParamSpec,
    as_generator,
    eval_mode,
    functional_state,
    gaussian,
    loss_function,
    make_batches,
)

__all__ = [
    "Surface",
    "TrajectoryPCA",
    "loss_surface",
    "loss_surface_1d",
    "loss_surface_2d",
    "loss_surface_pca",
    "normalize_direction",
    "plot_surface",
    "random_direction",
    "trajectory_pca",
]

NORMALIZATIONS = ("filter", "layer", "none")


def normalize_direction(direction: Mapping[str, Tensor], params: Mapping[str, Tensor], *,
                        normalization: str = "filter", ignore_bias_bn: bool = True) -> dict[str, Tensor]:
    """Rescale a direction to the scale of the parameters it perturbs.

    ``"filter"``: every slice ``d[i]`` along the first (output) dimension becomes ``d[i] ||theta[i]|| /
    (||d[i]|| + 1e-10)``; ``"layer"``: the same for whole tensors; ``"none"``: unchanged. Parameters with at most
    one dimension (biases, BatchNorm/LayerNorm affine) are set to zero when ``ignore_bias_bn``, otherwise
    normalised as one filter.

    Args:
        direction: name -> Tensor, same shapes as ``params``.
        params: name -> Tensor (the centre point).
        normalization: ``"filter"`` (default), ``"layer"`` or ``"none"``.
        ignore_bias_bn: zero direction on 1-D parameters.

    Returns:
        dict name -> Tensor (new tensors).

    References:
        Li, Xu, Taylor, Studer and Goldstein, 2018.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    out = {}
    for name, p in params.items():
        if name not in direction:
            raise KeyError(f"direction has no entry for parameter {name!r}")
        d = direction[name].to(p.dtype)
        if d.shape != p.shape:
            raise ValueError(f"direction[{name!r}] has shape {tuple(d.shape)}, parameter has {tuple(p.shape)}")
        if p.ndim <= 1 and ignore_bias_bn:
            out[name] = torch.zeros_like(p)
        elif normalization == "none":
            out[name] = d.clone()
        elif normalization == "layer" or p.ndim <= 1:
            out[name] = d * (p.norm() / (d.norm() + 1e-10))
        else:
            dn = d.reshape(d.shape[0], -1).norm(dim=1)
            pn = p.reshape(p.shape[0], -1).norm(dim=1)
            out[name] = d * (pn / (dn + 1e-10)).reshape((-1,) + (1,) * (p.ndim - 1))
    return out


@renamed_kwargs(generator="seed")
def random_direction(model: nn.Module, *, normalization: str = "filter", ignore_bias_bn: bool = True,
                     param_names: Sequence[str] | None = None,
                     seed: int | torch.Generator | None = None) -> dict[str, Tensor]:
    """A Gaussian random direction in parameter space, normalised to the model (filter-wise by default).

    Args:
        model: the network (the centre).
        normalization: see :func:`normalize_direction`.
        ignore_bias_bn: zero direction on biases and normalisation parameters.
        param_names: parameters to perturb (default: all with ``requires_grad``).
        seed: randomness (Generator or seed; default seed 0).

    Returns:
        dict parameter name -> Tensor of the parameter's shape.

    References:
        Li, Xu, Taylor, Studer and Goldstein, 2018.
    """
    gen = as_generator(seed)
    spec, vector, _ = functional_state(model, param_names=param_names)
    params = spec.unflatten(vector)
    raw = {n: gaussian(p.shape, gen, p.dtype, p.device) for n, p in params.items()}
    return normalize_direction(raw, params, normalization=normalization, ignore_bias_bn=ignore_bias_bn)


@dataclass(frozen=True)
class Surface:
    """Losses on a 1-D or 2-D grid around a centre model.

    Attributes:
        coords: one Tensor of grid coordinates per direction (``[g1]``, and ``[g2]`` for 2-D).
        losses: Tensor ``[g1]`` or ``[g1, g2]`` (float64).
        directions: the direction(s), name -> Tensor.
        trajectory: Tensor ``[T, 2]`` of projected trajectory points (PCA surfaces) or ``None``.
        explained_variance_ratio: Tensor ``[2]`` (PCA surfaces) or ``None``.
    """

    coords: tuple[Tensor, ...]
    losses: Tensor
    directions: tuple[dict[str, Tensor], ...]
    trajectory: Tensor | None = None
    explained_variance_ratio: Tensor | None = None

    @property
    def ndim(self) -> int:
        """1 or 2."""
        return len(self.coords)


def _flat_direction(spec: ParamSpec, direction: Mapping[str, Tensor], like: Tensor) -> Tensor:
    missing = [n for n in spec.names if n not in direction]
    if missing:
        raise KeyError(f"direction is missing parameters {missing[:5]}")
    return spec.flatten({n: direction[n].to(device=like.device, dtype=like.dtype) for n in spec.names})


def loss_surface(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, directions: Sequence[Mapping[str, Tensor]],
                 coords: Sequence[Tensor], *, batch_size: int | None = None, points_per_call: int = 16,
                 param_names: Sequence[str] | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> Surface:
    """Evaluate the mean loss on the grid ``theta + sum_k coords_k[i_k] d_k`` (1 or 2 directions).

    Args:
        model: the centre network (not modified).
        loss_fn: ``loss_fn(output, target) -> scalar`` mean loss (any mean metric, e.g. an error rate, works).
        x: inputs ``[N, ...]``.
        y: targets ``[N, ...]``.
        directions: one or two dicts name -> Tensor.
        coords: one Tensor ``[g_k]`` of step sizes per direction.
        batch_size: data chunk size (losses are sample-weighted over chunks; ``None``: one chunk).
        points_per_call: grid points evaluated per vmapped call.
        param_names: perturbed parameters (default: the directions' keys among ``requires_grad`` parameters).
        device: compute device (default: the model's).
        dtype: compute dtype (default: the model's).

    Returns:
        :class:`Surface`.

    References:
        Li, Xu, Taylor, Studer and Goldstein, 2018.
    """
    if len(directions) not in (1, 2) or len(coords) != len(directions):
        raise ValueError(f"need 1 or 2 directions with as many coordinate vectors, got {len(directions)} "
                         f"directions and {len(coords)} coordinate vectors")
    if points_per_call < 1:
        raise ValueError(f"points_per_call must be positive, got {points_per_call}")
    if param_names is None:
        param_names = [n for n, p in model.named_parameters() if p.requires_grad and n in directions[0]]
    spec, center, fixed = functional_state(model, param_names=param_names, device=device, dtype=dtype)
    dirs = [_flat_direction(spec, d, center) for d in directions]
    axes = [torch.as_tensor(c).detach().reshape(-1).to(center.dtype) for c in coords]
    for i, a in enumerate(axes):
        if a.numel() == 0:
            raise ValueError(f"coords[{i}] is empty")
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(axes)).to(center.device)
    batches = make_batches(x, y, batch_size, device=center.device, dtype=dtype)
    f = loss_function(model, loss_fn, spec, fixed)
    direction_matrix = torch.stack(dirs)  # [k, P]
    losses = torch.zeros(grid.shape[0], dtype=torch.float64)
    with eval_mode(model), torch.no_grad():
        for s in range(0, grid.shape[0], points_per_call):
            points = center + grid[s:s + points_per_call] @ direction_matrix
            total = torch.zeros(points.shape[0], dtype=torch.float64, device=center.device)
            for b in batches:
                total += b.weight * vmap(f, in_dims=(0, None, None))(points, b.x, b.y).double()
            losses[s:s + points.shape[0]] = total.cpu()
    shape = tuple(a.numel() for a in axes)
    return Surface(tuple(a.cpu() for a in axes), losses.reshape(shape),
                   tuple({n: t.detach().clone() for n, t in spec.unflatten(d).items()} for d in dirs))


def _default_coords(num: int, span: tuple[float, float]) -> Tensor:
    if num < 2:
        raise ValueError(f"need at least 2 grid points, got {num}")
    return torch.linspace(span[0], span[1], num, dtype=torch.float64)


@renamed_kwargs(num_points="n_points", generator="seed")
def loss_surface_1d(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, *,
                    direction: Mapping[str, Tensor] | None = None, coords: Tensor | None = None,
                    n_points: int = 51, span: tuple[float, float] = (-1.0, 1.0), normalization: str = "filter",
                    ignore_bias_bn: bool = True, seed: int | torch.Generator | None = None,
                    **kwargs) -> Surface:
    """1-D loss curve along a (filter-normalised random) direction.

    Args:
        model: the centre network.
        loss_fn: mean loss ``(output, target) -> scalar``.
        x: inputs ``[N, ...]``.
        y: targets ``[N, ...]``.
        direction: a direction (default: :func:`random_direction`).
        coords: step sizes ``[g]`` (default ``n_points`` evenly in ``span``).
        n_points: grid size when ``coords`` is not given (Li et al. use 51 in [-1, 1]).
        span: coordinate range when ``coords`` is not given.
        normalization: for the random direction (see :func:`normalize_direction`).
        ignore_bias_bn: for the random direction.
        seed: randomness: an int seed or a ``torch.Generator`` (default seed 0).
        **kwargs: passed to :func:`loss_surface` (``batch_size``, ``device``, ``dtype``, ...).

    Returns:
        :class:`Surface` with ``losses [g]``.

    References:
        Li, Xu, Taylor, Studer and Goldstein, 2018.
    """
    if direction is None:
        direction = random_direction(model, normalization=normalization, ignore_bias_bn=ignore_bias_bn,
                                     param_names=kwargs.get("param_names"), seed=seed)
    coords = _default_coords(n_points, span) if coords is None else coords
    return loss_surface(model, loss_fn, x, y, [direction], [coords], **kwargs)


@renamed_kwargs(num_points="n_points", generator="seed")
def loss_surface_2d(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, *,
                    directions: Sequence[Mapping[str, Tensor]] | None = None, coords: Sequence[Tensor] | None = None,
                    n_points: int = 21, span: tuple[float, float] = (-1.0, 1.0), normalization: str = "filter",
                    ignore_bias_bn: bool = True, seed: int | torch.Generator | None = None,
                    **kwargs) -> Surface:
    """2-D loss surface over two (filter-normalised random) directions.

    Args:
        model: the centre network.
        loss_fn: mean loss ``(output, target) -> scalar``.
        x: inputs ``[N, ...]``.
        y: targets ``[N, ...]``.
        directions: two directions (default: two independent :func:`random_direction` draws).
        coords: two step-size vectors (default ``n_points`` evenly in ``span`` on both axes).
        n_points: grid size per axis when ``coords`` is not given.
        span: coordinate range when ``coords`` is not given.
        normalization: for random directions.
        ignore_bias_bn: for random directions.
        seed: randomness: an int seed or a ``torch.Generator`` (default seed 0).
        **kwargs: passed to :func:`loss_surface`.

    Returns:
        :class:`Surface` with ``losses [g1, g2]``.

    References:
        Li, Xu, Taylor, Studer and Goldstein, 2018.
    """
    if directions is None:
        gen = as_generator(seed)
        directions = [random_direction(model, normalization=normalization, ignore_bias_bn=ignore_bias_bn,
                                       param_names=kwargs.get("param_names"), seed=gen) for _ in range(2)]
    if len(directions) != 2:
        raise ValueError(f"directions must hold 2 directions, got {len(directions)}")
    if coords is None:
        coords = [_default_coords(n_points, span)] * 2
    return loss_surface(model, loss_fn, x, y, list(directions), list(coords), **kwargs)


@dataclass(frozen=True)
class TrajectoryPCA:
    """The PCA plane of a training trajectory around a centre point.

    Attributes:
        directions: two orthonormal directions (name -> Tensor), the leading principal axes.
        coords: Tensor ``[T, 2]``: each trajectory point ``theta_t - centre`` projected onto the directions.
        explained_variance_ratio: Tensor ``[2]``: share of the trajectory's variance along each direction.
    """

    directions: tuple[dict[str, Tensor], dict[str, Tensor]]
    coords: Tensor
    explained_variance_ratio: Tensor


def trajectory_pca(trajectory: Sequence[Mapping[str, Tensor]], center: Mapping[str, Tensor] | None = None, *,
                   param_names: Sequence[str] | None = None, ignore_bias_bn: bool = False) -> TrajectoryPCA:
    """Two leading principal directions of ``theta_t - centre`` over a trajectory of state dicts.

    Args:
        trajectory: T >= 3 state dicts (e.g. one per epoch); buffers are ignored.
        center: the centre state dict (default: the last trajectory point, as in Li et al.).
        param_names: keys to use (default: the floating keys of ``center`` that are in every state dict and are
            not BatchNorm statistics (``running_*``, ``num_batches_tracked``)).
        ignore_bias_bn: leave out parameters with at most one dimension.

    Returns:
        :class:`TrajectoryPCA`.

    References:
        Li, Xu, Taylor, Studer and Goldstein, 2018 (section 7).
    """
    if len(trajectory) < 3:
        raise ValueError(f"trajectory needs at least 3 points for a 2-D PCA plane, got {len(trajectory)}")
    center = trajectory[-1] if center is None else center
    if param_names is None:
        skip = ("running_mean", "running_var", "num_batches_tracked")
        param_names = [k for k, v in center.items() if isinstance(v, Tensor) and v.is_floating_point()
                       and not k.endswith(skip) and all(k in s for s in trajectory)]
    names = [n for n in param_names if not (ignore_bias_bn and center[n].ndim <= 1)]
    if not names:
        raise ValueError("no parameters left to project (param_names empty or all ignored)")
    for i, state in enumerate(trajectory):
        for n in names:
            if n not in state:
                raise KeyError(f"trajectory[{i}] has no key {n!r}")
            if state[n].shape != center[n].shape:
                raise ValueError(f"trajectory[{i}][{n!r}] has shape {tuple(state[n].shape)}, "
                                 f"centre has {tuple(center[n].shape)}")
    spec = ParamSpec(tuple(names), tuple(center[n].shape for n in names))
    c = spec.flatten({n: center[n].detach().double().cpu() for n in names})
    m = torch.stack([spec.flatten({n: s[n].detach().double().cpu() for n in names}) - c for s in trajectory])
    mc = m - m.mean(0, keepdim=True)
    _, sv, vh = torch.linalg.svd(mc, full_matrices=False)
    var = sv.pow(2)
    if float(var.sum()) == 0.0:
        raise ValueError("the trajectory does not move: all points are equal")
    dirs = vh[:2]
    # a deterministic sign: the first trajectory point has non-negative coordinates
    signs = torch.where(m[0] @ dirs.T < 0, -1.0, 1.0).to(dirs.dtype)
    dirs = dirs * signs[:, None]
    coords = m @ dirs.T
    ratio = var[:2] / var.sum()
    if ratio.numel() < 2:
        raise ValueError("the trajectory spans fewer than 2 dimensions")
    d1, d2 = ({n: t.to(center[n].dtype) for n, t in spec.unflatten(d).items()} for d in dirs)
    return TrajectoryPCA((d1, d2), coords.float(), ratio.float())


@renamed_kwargs(num_points="n_points", generator="seed")
def loss_surface_pca(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor,
                     trajectory: Sequence[Mapping[str, Tensor]], *, n_points: int = 21, margin: float = 0.2,
                     ignore_bias_bn: bool = False, **kwargs) -> Surface:
    """2-D loss surface on the PCA plane of a training trajectory, centred on ``model``, with the path projected.

    The grid spans the projected trajectory plus ``margin`` of its extent on each side (and always contains 0).

    Args:
        model: the centre network (usually the final model of the trajectory).
        loss_fn: mean loss ``(output, target) -> scalar``.
        x: inputs ``[N, ...]``.
        y: targets ``[N, ...]``.
        trajectory: state dicts along training (>= 3).
        n_points: grid points per axis.
        margin: extra room around the trajectory, as a fraction of its extent.
        ignore_bias_bn: leave 1-D parameters out of the PCA.
        **kwargs: passed to :func:`loss_surface`.

    Returns:
        :class:`Surface` with ``trajectory`` and ``explained_variance_ratio`` set.

    References:
        Li, Xu, Taylor, Studer and Goldstein, 2018.
    """
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    center = {n: p.detach() for n, p in model.named_parameters()}
    names = [n for n, p in model.named_parameters() if p.requires_grad
             and not (ignore_bias_bn and p.ndim <= 1)]
    pca = trajectory_pca(trajectory, center, param_names=names)
    axes = []
    for k in range(2):
        lo = min(float(pca.coords[:, k].min()), 0.0)
        hi = max(float(pca.coords[:, k].max()), 0.0)
        pad = margin * (hi - lo) if hi > lo else 1.0
        axes.append(torch.linspace(lo - pad, hi + pad, n_points, dtype=torch.float64))
    surf = loss_surface(model, loss_fn, x, y, list(pca.directions), axes, param_names=names, **kwargs)
    return Surface(surf.coords, surf.losses, surf.directions, pca.coords, pca.explained_variance_ratio)


def plot_surface(surface: Surface, path: str | os.PathLike, *, title: str | None = None, log_scale: bool = False,
                 levels: int = 30, dpi: int = 120) -> Path:
    """Write a PNG of a surface: a line for 1-D, filled contours (with the trajectory, if any) for 2-D.

    Uses a private matplotlib ``Figure`` (no pyplot global state); the file is written atomically.

    Args:
        surface: a :class:`Surface`.
        path: output ``.png`` path (its directory must exist).
        title: plot title.
        log_scale: plot ``log10(loss)``.
        levels: contour levels (2-D).
        dpi: resolution.

    Returns:
        The path written.

    References:
        Li, Xu, Taylor, Studer and Goldstein, 2018.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"directory {str(path.parent)!r} does not exist")
    values = surface.losses.double()
    label = "loss"
    if log_scale:
        values = torch.log10(values.clamp_min(1e-12))
        label = "log10 loss"
    fig = Figure(figsize=(5.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if surface.ndim == 1:
        ax.plot(surface.coords[0].numpy(), values.numpy(), color="C0")
        ax.set_xlabel("step along direction")
        ax.set_ylabel(label)
    else:
        a, b = surface.coords
        cs = ax.contourf(a.numpy(), b.numpy(), values.T.numpy(), levels=levels, cmap="viridis")
        fig.colorbar(cs, ax=ax, label=label)
        if surface.trajectory is not None:
            t = surface.trajectory
            ax.plot(t[:, 0].numpy(), t[:, 1].numpy(), "o-", color="white", markersize=3, linewidth=1)
        xl, yl = "direction 1", "direction 2"
        if surface.explained_variance_ratio is not None:
            r = surface.explained_variance_ratio
            xl, yl = f"PC 1 ({100 * float(r[0]):.1f}%)", f"PC 2 ({100 * float(r[1]):.1f}%)"
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi, format="png")
    return path
