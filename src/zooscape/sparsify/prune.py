"""One-shot pruning: global/layer-wise magnitude, diagonal-Fisher OBD and block-diagonal WoodFisher OBS.

``prune(model, sparsity, method)`` returns a pruned copy: the pruned weights are zero and every pruned layer holds
its mask as a persistent buffer ``weight_mask`` (bool, the weight's shape), so the mask travels with the state dict
(and through safetensors; :func:`load_pruned` restores a pruned model from a state dict).

Pruners (the names of the Rethink Re-Basin / WoodFisher scripts):

- ``globalmagni``: the smallest ``|w|`` over all prunable weights;
- ``magni``: the smallest ``|w|`` of every layer (each layer pruned to ``sparsity``);
- ``diagfisher``: optimal brain damage with a diagonal Fisher as the Hessian, saliency
  ``rho_q = 0.5 (F_qq + damping) w_q^2`` (no weight update: with a diagonal Hessian the OBS update only touches
  the removed weight). ``F_qq`` is the mean of squared per-sample gradients (never the square of a batch-mean
  gradient), in eval mode: ``fisher="empirical"`` at the data's labels (the WoodFisher / Rethink scripts) or
  ``fisher="exact"``, the expectation over the model's own predictive distribution (for softmax cross entropy the
  Gauss-Newton diagonal, the Hessian approximation of LeCun et al.);
- ``woodfisherblock``: optimal brain surgeon with a block-diagonal empirical Fisher
  ``F_B = damping I + (1/m) sum_i g_i g_i^T`` over blocks of ``block_size`` consecutive weights of a layer,
  saliency ``rho_q = w_q^2 / (2 [F^-1]_qq)``; the weights kept in a block are updated jointly for all weights
  ``Q`` removed from it, ``dw = -F^-1 E_Q ([F^-1]_QQ)^-1 w_Q`` (the exact constrained minimiser of the quadratic
  model, with predicted loss increase ``0.5 w_Q^T ([F^-1]_QQ)^-1 w_Q``).

Prunable weights: the ``weight`` of every Linear and Conv layer (biases and normalisation parameters are kept).

References:
    LeCun, Denker & Solla (1990), "Optimal Brain Damage"; Hassibi & Stork (1993), "Second order derivatives for
    network pruning: Optimal Brain Surgeon"; Singh & Alistarh (2020), "WoodFisher: Efficient Second-Order
    Approximation for Neural Network Compression"; Qu & Horvath (2024), "Rethink Model Re-Basin and the Linear Mode
    Connectivity".
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from zooscape.data.adapt import get_split
from zooscape.landscape import fisher_diagonal
from zooscape.landscape._hvp import eval_mode, functional_state

__all__ = [
    "FISHERS", "PRUNERS", "SCOPES", "apply_masks", "fisher_blocks", "load_pruned", "masks", "obd_scores",
    "obs_scores", "obs_update", "prunable_layers", "prune", "prune_by_saliency", "saliencies", "strip_masks",
]

PRUNERS = ("globalmagni", "magni", "diagfisher", "woodfisherblock")
SCOPES = ("global", "layer")
FISHERS = ("empirical", "exact")
_DEFAULT_SCOPE = {"globalmagni": "global", "magni": "layer", "diagfisher": "global", "woodfisherblock": "global"}
_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
MASK = "weight_mask"


def prunable_layers(model: nn.Module, modules: Sequence[str] | None = None) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of the Linear/Conv layers whose weights may be pruned (all, or those named in
    ``modules``)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, _PRUNABLE)]
    if modules is not None:
        names = {n for n, _ in found}
        unknown = sorted(set(modules) - names)
        if unknown:
            raise ValueError(f"modules {unknown} are not Linear/Conv layers of the model (have {sorted(names)})")
        found = [(n, m) for n, m in found if n in set(modules)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no Linear/Conv layer to prune")
    return found


def masks(model: nn.Module) -> dict[str, Tensor]:
    """``{layer name: bool mask}`` of every pruned layer (``True`` = kept)."""
    return {n: getattr(m, MASK) for n, m in model.named_modules() if isinstance(getattr(m, MASK, None), Tensor)}


@torch.no_grad()
def apply_masks(model: nn.Module) -> nn.Module:
    """Zero every masked weight again (after an optimiser step or a renormalisation); in place; returns ``model``."""
    for m in model.modules():
        mask = getattr(m, MASK, None)
        if isinstance(mask, Tensor):
            m.weight.mul_(mask.to(m.weight.dtype))
    return model


def _set_mask(layer: nn.Module, mask: Tensor) -> None:
    mask = mask.to(device=layer.weight.device, dtype=torch.bool).reshape(layer.weight.shape).clone()
    if isinstance(getattr(layer, MASK, None), Tensor):
        getattr(layer, MASK).copy_(mask)
    else:
        layer.register_buffer(MASK, mask, persistent=True)


def strip_masks(model: nn.Module) -> nn.Module:
    """A copy without the mask buffers (the pruned weights stay zero): a plain model of the original classes, whose
    state dict has the unpruned model's keys."""
    new = copy.deepcopy(model)
    for m in new.modules():
        if isinstance(getattr(m, MASK, None), Tensor):
            del m._buffers[MASK]
    return new


def load_pruned(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """Load a pruned model's state dict (``<layer>.weight_mask`` entries included) into a fresh ``model`` of the
    same architecture, in place: the mask buffers are created first. Returns ``model``.

    Raises:
        KeyError: a mask names a layer the model lacks; ValueError: a mask's shape differs from its weight's.
    """
    mods = dict(model.named_modules())
    for key, value in state.items():
        if not key.endswith("." + MASK) and key != MASK:
            continue
        name = key[: -len(MASK) - 1] if key != MASK else ""
        layer = mods.get(name)
        if layer is None or not isinstance(getattr(layer, "weight", None), Tensor):
            raise KeyError(f"state entry {key!r}: the model has no layer {name!r} with a weight")
        if tuple(value.shape) != tuple(layer.weight.shape):
            raise ValueError(f"state entry {key!r} has shape {tuple(value.shape)}, the weight has "
                             f"{tuple(layer.weight.shape)}")
        _set_mask(layer, value)
    model.load_state_dict(dict(state))
    return model


# ---------------------------------------------------------------------------------------- closed forms
def obd_scores(weight: Tensor, hessian_diag: Tensor) -> Tensor:
    """OBD saliency ``0.5 * h_qq * w_q^2`` (the loss increase of zeroing ``w_q`` alone under a diagonal quadratic
    model at a minimum); same shape as ``weight``."""
    return 0.5 * hessian_diag * weight * weight


def obs_scores(weight: Tensor, h_inv: Tensor) -> Tensor:
    """OBS saliency ``w_q^2 / (2 [H^-1]_qq)`` for a flat ``weight`` ``[d]`` and inverse Hessian ``h_inv`` ``[d, d]``:
    the loss increase of removing ``w_q`` with the optimal update of the others; ``[d]``."""
    return weight * weight / (2.0 * torch.diagonal(h_inv))


def obs_update(weight: Tensor, h_inv: Tensor, remove: Tensor) -> tuple[Tensor, Tensor]:
    """Remove the weights ``remove`` (indices or bool mask ``[d]``) of ``weight`` ``[d]`` with the optimal update of
    the rest under the quadratic model with inverse Hessian ``h_inv`` ``[d, d]``.

    ``dw = -H^-1 E_Q ([H^-1]_QQ)^-1 w_Q`` minimises ``0.5 dw^T H dw`` subject to ``(w + dw)_Q = 0``.

    Returns:
        ``(new_weight [d], predicted loss increase 0.5 w_Q^T ([H^-1]_QQ)^-1 w_Q)`` (the removed entries exactly 0).
    """
    q = torch.nonzero(remove).flatten() if remove.dtype == torch.bool else remove.long().flatten()
    if q.numel() == 0:
        return weight.clone(), weight.new_zeros(())
    wq = weight[q]
    hqq = h_inv[q][:, q]
    coef = torch.linalg.solve(hqq, wq)  # ([H^-1]_QQ)^-1 w_Q
    new = weight - h_inv[:, q] @ coef
    new[q] = 0.0
    return new, 0.5 * (wq @ coef)


# ------------------------------------------------------------------------------------------ data / Fisher
def _xy(data: Any, n_samples: int | None, seed: int, split: str = "train") -> tuple[Tensor, Tensor]:
    """The ``split``'s ``(x, y)`` (any form :func:`zooscape.data.adapt.get_split` takes); ``n_samples`` of
    them drawn without replacement with ``seed`` (all when None or larger)."""
    x, y = get_split(data, split)
    if n_samples is not None and n_samples < x.shape[0]:
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:n_samples]
        x, y = x[idx], y[idx]
    return x, y


def _sample_loss(out: Tensor, y: Tensor) -> Tensor:
    if y.is_floating_point():
        return 0.5 * (out - y.reshape(out.shape)).pow(2).sum()
    return F.cross_entropy(out.unsqueeze(0), y.reshape(1).long())


def fisher_blocks(model: nn.Module, x: Tensor, y: Tensor, param_names: Sequence[str], block_size: int,
                  damping: float, batch_size: int = 64) -> dict[str, Tensor]:
    """Inverses of the diagonal blocks of the damped empirical Fisher of the named parameters.

    ``F_B = damping I + (1/m) sum_i g_i g_i^T`` with ``g_i`` the per-sample gradient (cross entropy, or
    ``0.5 ||f - y||^2`` for float targets) restricted to block ``B`` of ``block_size`` consecutive entries of the
    flattened parameter (the last block of a parameter may be smaller). Computed in float64.

    Args:
        model: the network (eval mode is used; not modified).
        x: inputs ``[m, ...]``; y: labels ``[m]`` or targets ``[m, ...]``.
        param_names: parameters to include.
        block_size: ``c``; damping: ``lambda``; batch_size: samples per vmapped gradient call.

    Returns:
        ``{name: [n_blocks, c, c]}`` inverse blocks (a short last block is padded with identity rows/columns).
    """
    if block_size < 1 or damping <= 0:
        raise ValueError(f"block_size must be >= 1 and damping > 0, got {block_size}, {damping}")
    spec, params, fixed = functional_state(model, param_names=list(param_names), dtype=torch.float64)

    def sample_grad(p: Tensor, xi: Tensor, yi: Tensor) -> Tensor:
        def loss(q: Tensor) -> Tensor:
            tensors = spec.unflatten(q)
            tensors.update(fixed)
            out = functional_call(model, tensors, (xi.unsqueeze(0),), tie_weights=True, strict=False)[0]
            return _sample_loss(out, yi)
        return grad(loss)(p)

    sizes = [int(torch.Size(s).numel()) for s in spec.shapes]
    padded = [-(-k // block_size) * block_size for k in sizes]
    grams = [torch.zeros(pk // block_size, block_size, block_size, dtype=torch.float64, device=params.device)
             for pk in padded]
    m = x.shape[0]
    xx = x.to(params.device, torch.float64)
    yy = y.to(params.device) if not y.is_floating_point() else y.to(params.device, torch.float64)
    with eval_mode(model):
        for s in range(0, m, batch_size):
            g = vmap(sample_grad, in_dims=(None, 0, 0))(params, xx[s:s + batch_size], yy[s:s + batch_size])
            off = 0
            for i, (k, pk) in enumerate(zip(sizes, padded)):
                gi = F.pad(g[:, off:off + k], (0, pk - k)).view(g.shape[0], -1, block_size)  # [b, nb, c]
                grams[i] += torch.einsum("bnc,bnd->ncd", gi, gi)
                off += k
    eye = torch.eye(block_size, dtype=torch.float64, device=params.device)
    out = {}
    for name, gram in zip(spec.names, grams):
        fb = gram / m + damping * eye
        out[name] = torch.cholesky_inverse(torch.linalg.cholesky(fb))
    return out


# ------------------------------------------------------------------------------------------------ prune
def _select(scores: list[Tensor], sparsity: float, scope: str) -> list[Tensor]:
    """Bool keep-masks: exactly ``round(sparsity * n)`` lowest scores pruned, over all weights (global) or per
    layer; ties broken by position."""
    keep = []
    if scope == "layer":
        for s in scores:
            flat = s.reshape(-1)
            k = int(round(sparsity * flat.numel()))
            mask = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
            mask[torch.sort(flat, stable=True).indices[:k]] = False
            keep.append(mask.view(s.shape))
        return keep
    flat = torch.cat([s.reshape(-1).to(torch.float64).cpu() for s in scores])
    k = int(round(sparsity * flat.numel()))
    mask = torch.ones(flat.numel(), dtype=torch.bool)
    mask[torch.sort(flat, stable=True).indices[:k]] = False
    off = 0
    for s in scores:
        keep.append(mask[off:off + s.numel()].view(s.shape).to(s.device))
        off += s.numel()
    return keep


def _likelihood(y: Tensor) -> str:
    return "gaussian" if y.is_floating_point() else "categorical"


def _scores(model: nn.Module, layers: list[tuple[str, nn.Module]], method: str, data: Any, *, fisher: str,
            split: str, block_size: int, damping: float, n_samples: int | None, batch_size: int,
            seed: int) -> tuple[list[Tensor], dict[str, Tensor]]:
    """Per-layer saliencies (weight shape) and, for ``woodfisherblock``, the inverse Fisher blocks."""
    if method not in PRUNERS:
        raise ValueError(f"method must be one of {PRUNERS}, got {method!r}")
    if fisher not in FISHERS:
        raise ValueError(f"fisher must be one of {FISHERS}, got {fisher!r}")
    names = [f"{n}.weight" if n else "weight" for n, _ in layers]
    weights = [m.weight.detach() for _, m in layers]
    if method in ("globalmagni", "magni"):
        return [w.abs() for w in weights], {}
    if data is None:
        raise ValueError(f"method {method!r} needs data (a DataSplits, an (x, y) pair or a loader)")
    x, y = _xy(data, n_samples, seed, split)
    if method == "diagfisher":
        fd = fisher_diagonal(model, x, y if fisher == "empirical" else None, kind=fisher,
                             likelihood=_likelihood(y), param_names=names, batch_size=batch_size)
        return [obd_scores(w, fd[n].to(w) + damping) for n, w in zip(names, weights)], {}
    if fisher != "empirical":
        raise ValueError(f"woodfisherblock uses the empirical Fisher; got fisher={fisher!r}")
    inv = fisher_blocks(model, x, y, names, block_size, damping, batch_size)
    scores = []
    for n, w in zip(names, weights):
        flat = F.pad(w.reshape(-1).to(torch.float64), (0, inv[n].shape[0] * block_size - w.numel()))
        s = (flat.view(-1, block_size) ** 2) / (2.0 * torch.diagonal(inv[n], dim1=1, dim2=2))
        scores.append(s.reshape(-1)[: w.numel()].view(w.shape))
    return scores, inv


def saliencies(model: nn.Module, method: str = "globalmagni", data: Any = None, *,
               modules: Sequence[str] | None = None, fisher: str = "empirical", split: str = "train",
               block_size: int = 128, damping: float = 1e-5, n_samples: int | None = 1000, batch_size: int = 64,
               seed: int = 0) -> dict[str, Tensor]:
    """The saliency :func:`prune` ranks the weights by (lowest pruned first), per layer.

    Args:
        model: the network (not modified). method, data, modules, fisher, split, block_size, damping, n_samples,
            batch_size, seed: as :func:`prune`.

    Returns:
        ``{layer name: saliency of its weight's shape}``: ``|w|`` (magnitude), ``0.5 (F_qq + damping) w_q^2``
        (``diagfisher``, OBD; the predicted loss increase of removing ``w_q`` alone) or ``w_q^2 / (2 [F_B^-1]_qq)``
        (``woodfisherblock``, OBS).

    References:
        LeCun et al. (1990); Hassibi & Stork (1993); Singh & Alistarh (2020).
    """
    layers = prunable_layers(model, modules)
    scores, _ = _scores(model, layers, method, data, fisher=fisher, split=split, block_size=block_size,
                        damping=damping, n_samples=n_samples, batch_size=batch_size, seed=seed)
    return {n: sc for (n, _), sc in zip(layers, scores)}


def prune(
    model: nn.Module,
    sparsity: float,
    method: str = "globalmagni",
    data: Any = None,
    *,
    scope: str | None = None,
    modules: Sequence[str] | None = None,
    fisher: str = "empirical",
    split: str = "train",
    block_size: int = 128,
    damping: float = 1e-5,
    n_samples: int | None = 1000,
    update_weights: bool = True,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """One-shot pruning of the Linear/Conv weights of ``model`` to ``sparsity``.

    Args:
        model: the trained network (not modified).
        sparsity: fraction of the prunable weights to remove, in ``[0, 1]``. Exactly ``round(sparsity * n)``
            weights are removed (``n``: all prunable weights for ``scope="global"``, each layer's for ``"layer"``).
        method: one of :data:`PRUNERS` (see the module docstring).
        data: training data for the Fisher pruners: a ``DataSplits`` (its training split), an ``(x, y)`` pair or a
            loader of ``(x, y)`` batches (docs/glossary.md).
        scope: ``"global"`` or ``"layer"``; default ``"layer"`` for ``magni``, ``"global"`` otherwise
            (``globalmagni``/``magni`` fix their own scope).
        modules: names of the layers to prune (default: every Linear/Conv layer).
        fisher: ``diagfisher``'s Fisher: ``"empirical"`` (default; squared per-sample gradients at the data's
            labels) or ``"exact"`` (expectation over the model's predictive distribution; C gradients per input).
            ``woodfisherblock`` uses the empirical Fisher.
        split: the split of ``data`` the Fisher is estimated on (default ``"train"``, as the WoodFisher scripts;
            ``"val"`` estimates it on data the model was not fitted to, see docs/sparsify.md).
        block_size: WoodFisher block size ``c`` (consecutive weights of one layer per block).
        damping: Fisher damping ``lambda`` (WoodFisher and diagonal Fisher), Singh & Alistarh's default ``1e-5``.
        n_samples: samples for the empirical Fisher (``m``; all when None).
        update_weights: apply the OBS update of the kept weights (``woodfisherblock``).
        batch_size: samples per vmapped gradient call.
        seed: which ``n_samples`` samples are used.

    Returns:
        a pruned copy with ``weight_mask`` buffers on the pruned layers (see :func:`masks`).

    References:
        LeCun et al. (1990); Hassibi & Stork (1993); Singh & Alistarh (2020); Qu & Horvath (2024).
    """
    if method not in PRUNERS:
        raise ValueError(f"method must be one of {PRUNERS}, got {method!r}")
    if not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    if scope is None:
        scope = _DEFAULT_SCOPE[method]
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if method in ("globalmagni", "magni") and scope != _DEFAULT_SCOPE[method]:
        raise ValueError(f"method {method!r} prunes with scope {_DEFAULT_SCOPE[method]!r}; got scope {scope!r} "
                         f"(use {'magni' if scope == 'layer' else 'globalmagni'})")
    new = copy.deepcopy(model)
    layers = prunable_layers(new, modules)
    names = [f"{n}.weight" if n else "weight" for n, _ in layers]
    scores, inv = _scores(new, layers, method, data, fisher=fisher, split=split, block_size=block_size,
                          damping=damping, n_samples=n_samples, batch_size=batch_size, seed=seed)
    keep = _select(scores, float(sparsity), scope)
    with torch.no_grad():
        for (_, layer), n, k in zip(layers, names, keep):
            w = layer.weight
            if method == "woodfisherblock" and update_weights:
                hinv = inv[n]
                nb = hinv.shape[0]
                flat = F.pad(w.detach().reshape(-1).to(torch.float64), (0, nb * block_size - w.numel())).view(nb, -1)
                rm = F.pad((~k).reshape(-1), (0, nb * block_size - w.numel())).view(nb, -1)
                for b in torch.nonzero(rm.any(1)).flatten().tolist():
                    flat[b], _ = obs_update(flat[b], hinv[b], rm[b])
                w.copy_(flat.reshape(-1)[: w.numel()].view(w.shape).to(w.dtype))
            w.mul_(k.to(w.dtype))
            _set_mask(layer, k)
    return new


def prune_by_saliency(model: nn.Module, scores: Mapping[str, Tensor], sparsity: float,
                      scope: str = "global") -> nn.Module:
    """Prune ``model``'s layers named in ``scores`` by the given saliencies (lowest removed first), no weight update.

    What :func:`prune` does for ``globalmagni``/``magni``/``diagfisher`` after scoring, for a saliency of your own
    (for example :func:`saliencies` with another Fisher estimate): exactly ``round(sparsity * n)`` weights are
    removed, over all scored layers (``scope="global"``) or in each layer (``"layer"``), ties broken by position.

    Args:
        model: the network (not modified).
        scores: ``{layer name: saliency of its weight's shape}`` of Linear/Conv layers (as :func:`saliencies`).
        sparsity: fraction in ``[0, 1]``.
        scope: ``"global"`` or ``"layer"``.

    Returns:
        a pruned copy with ``weight_mask`` buffers on the scored layers.

    Raises:
        ValueError: a bad sparsity or scope, a name that is not a prunable layer, or a score of the wrong shape.

    References:
        LeCun et al. (1990) (saliency-ranked pruning).
    """
    if not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    new = copy.deepcopy(model)
    layers = prunable_layers(new, list(scores))
    for name, layer in layers:
        if tuple(scores[name].shape) != tuple(layer.weight.shape):
            raise ValueError(f"scores[{name!r}] has shape {tuple(scores[name].shape)}, the weight has "
                             f"{tuple(layer.weight.shape)}")
    keep = _select([scores[n].detach() for n, _ in layers], float(sparsity), scope)
    with torch.no_grad():
        for (_, layer), k in zip(layers, keep):
            layer.weight.mul_(k.to(layer.weight.dtype))
            _set_mask(layer, k)
    return new
