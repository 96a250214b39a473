"""Distance between two networks in weight space."""

from __future__ import annotations

import torch
from torch import nn

from zooscape.connect.interpolate import check_compatible

__all__ = ["l2_distance"]


@torch.no_grad()
def l2_distance(model_a: nn.Module, model_b: nn.Module, include_buffers: bool = False) -> float:
    """Euclidean distance ``sqrt(sum_p ||p_a - p_b||^2)`` between two networks' parameters.

    Args:
        model_a: first network.
        model_b: second network, same architecture and shapes.
        include_buffers: also count floating-point buffers (e.g. BatchNorm running statistics).

    Returns:
        The distance as a Python float (accumulated in float64).

    References:
        Frankle, Dziugaite, Roy, Carbin (2020), "Linear Mode Connectivity and the Lottery Ticket Hypothesis".
    """
    check_compatible(model_a, model_b)
    named_b = dict(model_b.named_parameters())
    pairs = [(p, named_b[n]) for n, p in model_a.named_parameters()]
    if include_buffers:
        bufs_b = dict(model_b.named_buffers())
        pairs += [(t, bufs_b[n]) for n, t in model_a.named_buffers() if t.is_floating_point()]
    total = torch.zeros((), dtype=torch.float64)
    for a, b in pairs:
        diff = a.detach().to("cpu", torch.float64) - b.detach().to("cpu", torch.float64)
        total += diff.pow(2).sum()
    return float(total.sqrt())
