"""Parameter counting."""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (shared parameters counted once; buffers excluded).

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad=True``.

    Returns:
        The total number of parameter elements.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
