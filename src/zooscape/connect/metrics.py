"""Loss and error of network outputs, summed over samples, for one model or a stack of models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zooscape.connect.bn import batch_slices

__all__ = ["evaluate_model", "loss_error_sums"]


def loss_error_sums(outputs: Tensor, y: Tensor, task: str) -> tuple[Tensor, Tensor | None]:
    """Summed per-sample loss and error count of a batch of outputs.

    Classification: cross-entropy and misclassification count. Regression: mean squared error over output
    dimensions per sample (no error).

    Args:
        outputs: network outputs, shape ``[*lead, B, C]`` (``lead`` may be empty or a stack of models).
        y: targets, shape ``[B]`` (class indices) or ``[B, C]`` / ``[B]`` (regression targets).
        task: ``"classification"`` or ``"regression"``.

    Returns:
        ``(loss_sum, error_count)`` each of shape ``[*lead]`` in float64; ``error_count`` is None for
        regression.
    """
    if outputs.dim() < 2:
        raise ValueError(f"outputs must have shape [..., B, C], got {tuple(outputs.shape)}")
    n = outputs.shape[-2]
    if y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} samples but outputs have {n} (shape {tuple(outputs.shape)})")
    if task == "classification":
        if y.dim() != 1:
            raise ValueError(f"classification targets must have shape [B], got {tuple(y.shape)}")
        logp = F.log_softmax(outputs.to(torch.float64), dim=-1)
        index = y.to(outputs.device).expand(*outputs.shape[:-1]).unsqueeze(-1)
        loss = -logp.gather(-1, index).squeeze(-1).sum(-1)
        errors = (outputs.argmax(-1) != index.squeeze(-1)).sum(-1).to(torch.float64)
        return loss, errors
    if task == "regression":
        target = y.to(outputs.device, torch.float64)
        if target.dim() == 1:
            target = target.unsqueeze(-1)
        if target.shape[-1] != outputs.shape[-1]:
            raise ValueError(
                f"regression targets shape {tuple(y.shape)} does not match outputs {tuple(outputs.shape)}"
            )
        loss = (outputs.to(torch.float64) - target).pow(2).mean(-1).sum(-1)
        return loss, None
    raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")


@torch.no_grad()
def evaluate_model(
    model: nn.Module, x: Tensor, y: Tensor, task: str, batch_size: int = 1024
) -> tuple[float, float | None]:
    """Mean loss and error rate of one model in evaluation mode (mode restored afterwards).

    Args:
        model: the network; inputs are moved to its device.
        x: inputs, shape ``[n, *input_shape]``.
        y: targets, shape ``[n]`` or ``[n, k]``.
        task: ``"classification"`` or ``"regression"``.
        batch_size: evaluation batch size.

    Returns:
        ``(loss, error)``; ``error`` is the misclassified fraction in [0, 1], or None for regression.
    """
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64)
    errors = torch.zeros((), dtype=torch.float64)
    try:
        for sl in batch_slices(x.shape[0], batch_size):
            part, e = loss_error_sums(model(x[sl].to(device)), y[sl], task)
            loss += part.cpu()
            if e is not None:
                errors += e.cpu()
    finally:
        model.train(was_training)
    n = x.shape[0]
    return float(loss / n), (float(errors / n) if task == "classification" else None)
