"""BatchNorm running statistics: reset and exact re-estimation in one pass over training data.

Weights interpolated between two networks do not come with matching BatchNorm statistics; evaluating them with
interpolated running statistics can make a connected path look like a barrier. The fix (Garipov et al. 2018,
``update_bn``) is to reset the statistics and re-estimate them as an *exact* cumulative average over one pass:
with batches of sizes ``b_1, b_2, ...`` the update of batch ``t`` uses momentum ``b_t / (b_1 + ... + b_t)``,
so the final running mean (variance) is the sample-weighted average of the per-batch means (unbiased
variances). For the first BatchNorm layer the running mean is therefore exactly the mean of its input over
the whole data set.

Only BatchNorm layers are switched to training mode during the pass; Dropout and everything else stay in
evaluation mode, and all modes and momenta are restored afterwards.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from zooscape.data.adapt import iter_batches

__all__ = ["batch_slices", "batchnorm_modules", "clear_bn_stats", "has_batchnorm", "recompute_bn_stats",
           "reset_bn_stats"]


def batchnorm_modules(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """BatchNorm layers that keep running statistics.

    Args:
        model: any module.

    Returns:
        ``[(qualified_name, module), ...]`` for every ``_BatchNorm`` with ``track_running_stats=True``.
    """
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether the model has BatchNorm layers with running statistics.

    Args:
        model: any module.

    Returns:
        True if :func:`batchnorm_modules` is non-empty.
    """
    return len(batchnorm_modules(model)) > 0


def clear_bn_stats(model: nn.Module) -> nn.Module:
    """Reset running mean to 0, running variance to 1 and the batch counter to 0, in place.

    Args:
        model: any module.

    Returns:
        The same module.
    """
    for _, module in batchnorm_modules(model):
        module.reset_running_stats()
    return model


def reset_bn_stats(model: nn.Module, data: Any = None, *, batch_size: int = 256,
                   device: torch.device | str | None = None) -> nn.Module:
    """A copy of ``model`` with every BatchNorm's running statistics re-estimated on ``data`` ("reset BN").

    The copy goes through :func:`recompute_bn_stats` (exact cumulative average over one pass); ``model`` is not
    modified. This is the Rethink Re-Basin seed's ``--reset-bn`` and REPAIR's "reset BN" baseline.

    Args:
        model: the model (not modified).
        data: inputs: a tensor ``[N, ...]``, an ``(x, y)`` pair, a ``DataSplits`` (its training inputs) or an
            iterable of batches (:func:`zooscape.data.adapt.iter_batches`).
        batch_size: batch size when ``data`` holds tensors.
        device: where to run the pass (default: the model's device); the copy is returned on the model's device.

    Returns:
        a new model with fresh BatchNorm statistics (same modes as ``model``).

    References:
        Jordan et al. (2023), "REPAIR: REnormalizing Permuted Activations for Interpolation Repair".
    """
    if data is None:  # the old in-place meaning of this name in zooscape.connect
        warnings.warn("reset_bn_stats(model) without data is deprecated: use clear_bn_stats(model) to reset "
                      "BatchNorm statistics in place; reset_bn_stats(model, data) returns a re-estimated copy",
                      DeprecationWarning, stacklevel=2)
        return clear_bn_stats(model)
    new = copy.deepcopy(model)
    home = _model_device(model)
    if device is not None and torch.device(device) != home:
        new.to(device)
    recompute_bn_stats(new, data, batch_size=batch_size)
    return new.to(home)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive batches over ``n`` samples; a trailing batch of one sample is merged into the previous one.

    BatchNorm cannot compute a variance from one sample, so a remainder of 1 joins the last full batch.

    Args:
        n: number of samples (> 0).
        batch_size: nominal batch size (> 0).

    Returns:
        List of slices covering ``range(n)`` in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    ends = starts[1:] + [n]
    return [slice(s, e) for s, e in zip(starts, ends)]


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _stat_layers(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers with running statistics, including the population BatchNorm of ``zooscape.train``."""
    from zooscape.train.layers import PopBatchNorm

    return [m for m in model.modules()
            if (isinstance(m, _BatchNorm) or isinstance(m, PopBatchNorm)) and m.track_running_stats]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, data: Any, batch_size: int = 256,
                       forward: Callable[[Tensor], Any] | None = None) -> nn.Module:
    """Reset BatchNorm statistics and re-estimate them as an exact cumulative average over one pass, in place.

    This is zooscape's one BatchNorm re-estimator: ``align`` (reset BN, REPAIR), ``connect`` (paths, curves) and
    the studies all use it (:func:`~zooscape.connect.batched.batched_bn_stats` is its vmapped form for many
    models at once, tested equal).

    Args:
        model: the network; inputs are moved to its device.
        data: inputs, visited once in order (no augmentation): a tensor ``[n, *input_shape]``, an ``(x, y)``
            pair, a ``DataSplits`` (training inputs) or an iterable of batches (see
            :func:`zooscape.data.adapt.iter_batches`).
        batch_size: batch size of the pass over tensors; a trailing batch of one sample is merged (see
            :func:`batch_slices`).
        forward: how a batch ``[b, *input_shape]`` is run (default ``model(xb)``); for a
            :class:`zooscape.train.Population` pass ``population.forward_shared``: every member's BatchNorm layers
            (``PopBatchNorm``) then average their own per-batch statistics, exactly as for one model.

    Returns:
        The same module, with ``running_mean`` the sample-weighted mean of the per-batch means,
        ``running_var`` the sample-weighted mean of the per-batch unbiased variances and
        ``num_batches_tracked`` the number of batches. Modes and momenta are restored.

    References:
        Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity, and Fast
        Ensembling of DNNs" (``update_bn``); Ioffe, Szegedy (2015), "Batch Normalization".
    """
    layers = _stat_layers(model)
    if not layers:
        return model
    run = model if forward is None else forward
    device = _model_device(model)
    if isinstance(data, Tensor):
        if data.dim() < 1 or data.shape[0] == 0:
            raise ValueError(f"data must be a non-empty batch tensor, got shape {tuple(data.shape)}")
        batches: Iterable[Tensor] = (data[sl] for sl in batch_slices(data.shape[0], batch_size))
    else:
        batches = iter_batches(data, batch_size)
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.train()
        seen = 0
        for xb in batches:
            xb = xb.to(device)
            b = xb.shape[0]
            for m in layers:
                m.momentum = b / (seen + b)
            run(xb)
            seen += b
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return model
