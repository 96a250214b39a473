"""Batches of inputs and streaming float64 statistics of unit activations."""

from __future__ import annotations

import copy

import torch
from torch import nn

from zooscape.data.adapt import iter_batches

__all__ = [
    "ChannelStats", "CrossStats", "iter_batches", "model_device", "normalize_weights", "on_device", "unit_columns",
]


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU if it has none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def on_device(model: nn.Module, device: torch.device | str | None) -> nn.Module:
    """``model`` itself when already on ``device`` (or device is None), else a moved deep copy."""
    if device is None or model_device(model) == torch.device(device):
        return model
    return copy.deepcopy(model).to(device)


def unit_columns(t: torch.Tensor, dim: int, n: int, inner: int = 1) -> torch.Tensor:
    """Rearrange a tensor so that each of the ``n`` units of ``dim`` is one column.

    Args:
        t: tensor whose ``dim`` has length ``outer * n * inner``.
        dim: the unit dimension.
        n: number of units.
        inner: block size (see :class:`~zooscape.align.spec.AxisPerm`).

    Returns:
        ``[M, n]`` where ``M = t.numel() / n`` (every other index is a sample).
    """
    shape = t.shape
    if shape[dim] % (n * inner):
        raise ValueError(f"dim {dim} of shape {tuple(shape)} is not a multiple of n={n} x inner={inner}")
    outer = shape[dim] // (n * inner)
    t = t.reshape(*shape[:dim], outer, n, inner, *shape[dim + 1:])
    return t.movedim(dim + 1, -1).reshape(-1, n)


class CrossStats:
    """Streaming float64 moments of paired unit activations ``a [M, n]`` and ``b [M, n]``.

    Args:
        n: number of units.
        device: where the accumulators live.
    """

    def __init__(self, n: int, device: torch.device | str | None = None) -> None:
        kw = {"dtype": torch.float64, "device": device}
        self.count = 0
        self.sum_a = torch.zeros(n, **kw)
        self.sum_b = torch.zeros(n, **kw)
        self.sq_a = torch.zeros(n, **kw)
        self.sq_b = torch.zeros(n, **kw)
        self.ab = torch.zeros(n, n, **kw)

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add samples ``a, b: [M, n]``."""
        a = a.detach().to(self.ab.device, torch.float64)
        b = b.detach().to(self.ab.device, torch.float64)
        self.count += a.shape[0]
        self.sum_a += a.sum(0)
        self.sum_b += b.sum(0)
        self.sq_a += (a * a).sum(0)
        self.sq_b += (b * b).sum(0)
        self.ab += a.T @ b

    def correlation(self, eps: float = 1e-4) -> torch.Tensor:
        """Pearson correlation ``[n, n]`` between units of ``a`` (rows) and of ``b`` (columns).

        Args:
            eps: added to the product of standard deviations (dead units get correlation ~0).
        """
        if self.count == 0:
            raise ValueError("no samples were accumulated")
        m = self.count
        mean_a, mean_b = self.sum_a / m, self.sum_b / m
        cov = self.ab / m - torch.outer(mean_a, mean_b)
        std_a = (self.sq_a / m - mean_a**2).clamp_min(0).sqrt()
        std_b = (self.sq_b / m - mean_b**2).clamp_min(0).sqrt()
        return cov / (torch.outer(std_a, std_b) + eps)


class ChannelStats:
    """Streaming float64 per-channel mean and variance of ``[M, n]`` samples.

    Args:
        n: number of channels.
        device: where the accumulators live.
    """

    def __init__(self, n: int, device: torch.device | str | None = None) -> None:
        self.count = 0
        self.sum = torch.zeros(n, dtype=torch.float64, device=device)
        self.sq = torch.zeros(n, dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor) -> None:
        """Add samples ``x: [M, n]``."""
        x = x.detach().to(self.sum.device, torch.float64)
        self.count += x.shape[0]
        self.sum += x.sum(0)
        self.sq += (x * x).sum(0)

    def mean(self) -> torch.Tensor:
        """``[n]`` mean."""
        if self.count == 0:
            raise ValueError("no samples were accumulated")
        return self.sum / self.count

    def var(self) -> torch.Tensor:
        """``[n]`` population variance."""
        mean = self.mean()
        return (self.sq / self.count - mean**2).clamp_min(0)


def normalize_weights(weights, k: int) -> torch.Tensor:
    """Validate K averaging weights and normalise them to sum 1 (uniform when ``weights`` is None).

    Args:
        weights: sequence or tensor of K finite, non-negative numbers, not all zero.
        k: expected number of weights.

    Returns:
        ``[k]`` float64 tensor summing to 1.
    """
    if weights is None:
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.numel() != k:
        raise ValueError(f"weights has {w.numel()} entries for {k} models")
    if not torch.isfinite(w).all() or (w < 0).any() or float(w.sum()) <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {w.tolist()}")
    return w / w.sum()
