"""Losses, predictions and batch gathers of a population: ``[B, N, ...]`` tensors, one column per model.

Each function computes what a loop over the N models would compute with the usual PyTorch calls, through the
operations that are fastest for a population on the CPU (measured in ``bench/RESULTS.md``, "Roofline").
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from . import _flags

#: classification losses with at most this many classes take the cross-entropy over ``[B, K, N]`` on the CPU (switch
#: ``wide_loss``): PyTorch's CPU log-softmax over a short last axis (10 classes) costs ~0.5 us per row, over a middle
#: axis it vectorises across the N models (``bench/RESULTS.md``, "Roofline": MLP N=64 loss forward + backward 2.1 ->
#: 0.6 ms per step); with 100 classes the row-wise kernel is the faster one.
WIDE_LOSS_MAX_CLASSES = 16
#: the model axis is zero-padded to a multiple of this many models (a multiple of every CPU vector width), so that
#: every model's column goes through the same vector code whatever N is: a model's gradient is then bitwise the same
#: in any population (without padding, the columns of a remainder took another code path and changed in the last
#: bit with N; a zoo grown seed by seed must equal one trained at once, ``tests/report/test_grow.py``).
WIDE_LOSS_PAD = 16


def task_loss(out: Tensor, y: Tensor, task: str) -> Tensor:
    """Mean loss per model. ``out``: ``[B, N, K]``; ``y``: ``[B, N]`` (class ids) or ``[B, N, 1]``; returns ``[N]``.

    Classification: cross-entropy (softmax + negative log-likelihood) of each model's logits; regression: mean
    squared error. Each model's gradient is bitwise independent of N and of its place in the population."""
    b, n, k = out.shape
    if task == "regression":
        return ((out - y.reshape(b, n, -1).to(out.dtype)) ** 2).mean(dim=(0, 2))
    if k <= WIDE_LOSS_MAX_CLASSES and out.device.type == "cpu" and _flags.current().wide_loss:
        logits, target, pad = out.permute(0, 2, 1), y.reshape(b, n), -n % WIDE_LOSS_PAD  # [B, K, N], [B, N]
        if pad:
            logits, target = F.pad(logits, (0, pad)), F.pad(target, (0, pad))
        return F.cross_entropy(logits, target, reduction="none")[:, :n].mean(0)
    return F.cross_entropy(out.reshape(b * n, k), y.reshape(b * n), reduction="none").view(b, n).mean(0)


def predictions(out: Tensor) -> Tensor:
    """``out.argmax(-1)`` (the first maximal class; NaN counts as maximal) computed as ``out.max(-1).indices``,
    which documents the same choice and on the CPU takes ~0.4x the time of ``argmax`` over 10 classes."""
    return out.max(-1).indices


def gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x[idx]`` for a 2-D index ``idx`` ``[A, B]`` into the rows of ``x`` ``[n, ...]``: ``[A, B, ...]``, copied as
    whole rows (``index_select``; advanced indexing copies element by element, 4-5x slower here)."""
    return x.index_select(0, idx.reshape(-1)).view(*idx.shape, *x.shape[1:])
