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

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batch_slices", "batchnorm_modules", "has_batchnorm", "recompute_bn_stats", "reset_bn_stats"]


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


def reset_bn_stats(model: nn.Module) -> nn.Module:
    """Reset running mean to 0, running variance to 1 and the batch counter to 0, in place.

    Args:
        model: any module.

    Returns:
        The same module.
    """
    for _, module in batchnorm_modules(model):
        module.reset_running_stats()
    return model


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


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, x: Tensor, batch_size: int = 256) -> nn.Module:
    """Reset BatchNorm statistics and re-estimate them as an exact cumulative average over one pass, in place.

    Args:
        model: the network; inputs are moved to its device.
        x: training inputs, shape ``[n, *input_shape]``, visited once in order (no augmentation).
        batch_size: batch size of the pass; a trailing batch of one sample is merged (see
            :func:`batch_slices`).

    Returns:
        The same module, with ``running_mean`` the sample-weighted mean of the per-batch means,
        ``running_var`` the sample-weighted mean of the per-batch unbiased variances and
        ``num_batches_tracked`` the number of batches. Modes and momenta are restored.

    References:
        Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity, and Fast
        Ensembling of DNNs" (``update_bn``); Ioffe, Szegedy (2015), "Batch Normalization".
    """
    layers = [m for _, m in batchnorm_modules(model)]
    if not layers:
        return model
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch tensor, got {getattr(x, 'shape', type(x).__name__)}")
    device = _model_device(model)
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.train()
        seen = 0
        for sl in batch_slices(x.shape[0], batch_size):
            xb = x[sl].to(device)
            b = xb.shape[0]
            for m in layers:
                m.momentum = b / (seen + b)
            model(xb)
            seen += b
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return model
