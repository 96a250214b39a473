"""Linear interpolation between two networks of the same architecture.

``theta(alpha) = (1 - alpha) * theta_a + alpha * theta_b`` over parameters and floating-point buffers
(``alpha = 0`` gives ``model_a`` exactly, ``alpha = 1`` gives ``model_b`` exactly; values outside [0, 1]
extrapolate). Integer buffers (BatchNorm's ``num_batches_tracked``) are taken from the nearer endpoint.

BatchNorm option ``bn_mode``:

- ``"interpolate"``: running statistics are interpolated like any other buffer.
- ``"reset"``: running statistics are reset and re-estimated on training data as an exact cumulative average
  over one pass (:func:`zooscape.connect.bn.recompute_bn_stats`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from zooscape.connect.bn import has_batchnorm, recompute_bn_stats
from zooscape.data.adapt import train_inputs

__all__ = ["BN_MODES", "check_compatible", "check_compatible_states", "check_evaluation", "interpolate",
           "interpolate_state"]

BN_MODES: tuple[str, ...] = ("interpolate", "reset")


def check_bn_mode(bn_mode: str) -> str:
    """Validate a BatchNorm mode name.

    Args:
        bn_mode: ``"interpolate"`` or ``"reset"``.

    Returns:
        ``bn_mode`` unchanged.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    return bn_mode


def check_evaluation(bn_mode: str, method: str, methods: Sequence[str], splits: Sequence[str] | str,
                     batch_size: int, bn_batch_size: int) -> tuple[str, ...]:
    """Validate the settings shared by path and curve evaluations.

    Args:
        bn_mode: ``"interpolate"`` or ``"reset"``.
        method: evaluation method, one of ``methods``.
        methods: the allowed methods.
        splits: one split name or several.
        batch_size: evaluation batch size (a positive int).
        bn_batch_size: batch size of the BatchNorm pass (a positive int).

    Returns:
        ``splits`` as a non-empty tuple.
    """
    check_bn_mode(bn_mode)
    if method not in methods:
        raise ValueError(f"method must be one of {tuple(methods)}, got {method!r}")
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    if not splits:
        raise ValueError("splits must name at least one split")
    for name, value in (("batch_size", batch_size), ("bn_batch_size", bn_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return splits


def check_compatible_states(state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor]) -> None:
    """Raise ``ValueError`` unless two state dicts have the same keys, shapes and dtypes.

    Args:
        state_a: first state dict ``{name: tensor}``.
        state_b: second state dict.

    Returns:
        None.
    """
    keys_a, keys_b = set(state_a), set(state_b)
    if keys_a != keys_b:
        only_a = sorted(keys_a - keys_b)[:5]
        only_b = sorted(keys_b - keys_a)[:5]
        raise ValueError(
            f"models differ in architecture: keys only in model_a {only_a}, keys only in model_b {only_b}"
        )
    for key in state_a:
        a, b = state_a[key], state_b[key]
        if a.shape != b.shape:
            raise ValueError(
                f"models differ in shape at {key!r}: model_a {tuple(a.shape)} vs model_b {tuple(b.shape)}"
            )
        if a.dtype != b.dtype:
            raise ValueError(f"models differ in dtype at {key!r}: model_a {a.dtype} vs model_b {b.dtype}")


def check_compatible(model_a: nn.Module, model_b: nn.Module) -> None:
    """Raise ``ValueError`` unless two models share architecture (module tree) and tensor shapes.

    Compares the module types at every qualified name (so ``ReLU`` vs ``Tanh`` is caught even though the
    state dicts agree) and then every state-dict entry's shape and dtype.

    Args:
        model_a: first network.
        model_b: second network.

    Returns:
        None.
    """
    if not isinstance(model_a, nn.Module) or not isinstance(model_b, nn.Module):
        raise TypeError(
            f"model_a and model_b must be nn.Module, got {type(model_a).__name__}, {type(model_b).__name__}"
        )
    tree_a = [(n, type(m)) for n, m in model_a.named_modules()]
    tree_b = [(n, type(m)) for n, m in model_b.named_modules()]
    if tree_a != tree_b:
        for (na, ta), (nb, tb) in zip(tree_a, tree_b):
            if (na, ta) != (nb, tb):
                raise ValueError(
                    f"models differ in architecture at module {na or nb or '<root>'!r}: "
                    f"model_a has {na!r}: {ta.__name__}, model_b has {nb!r}: {tb.__name__}"
                )
        raise ValueError(
            f"models differ in architecture: model_a has {len(tree_a)} modules, model_b has {len(tree_b)}"
        )
    check_compatible_states(model_a.state_dict(), model_b.state_dict())


@torch.no_grad()
def interpolate_state(
    state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """Interpolate two state dicts: ``(1 - alpha) * a + alpha * b`` for floating tensors.

    Args:
        state_a: state dict of the ``alpha = 0`` endpoint.
        state_b: state dict of the ``alpha = 1`` endpoint (same keys, shapes, dtypes).
        alpha: interpolation coefficient (any real; outside [0, 1] extrapolates).

    Returns:
        New state dict on ``state_a``'s devices; non-floating tensors are copied from the nearer endpoint.

    References:
        Frankle, Dziugaite, Roy, Carbin (2020), "Linear Mode Connectivity and the Lottery Ticket Hypothesis".
    """
    check_compatible_states(state_a, state_b)
    alpha = float(alpha)
    out: dict[str, Tensor] = {}
    for key, a in state_a.items():
        b = state_b[key].to(a.device)
        if a.is_floating_point() or a.is_complex():
            out[key] = torch.lerp(a.detach(), b.detach(), alpha)
        else:
            out[key] = (a if alpha < 0.5 else b).detach().clone()
    return out


def interpolate(
    model_a: nn.Module,
    model_b: nn.Module,
    alpha: float,
    *,
    bn_mode: str = "interpolate",
    data: Any = None,
    batch_size: int = 256,
) -> nn.Module:
    """A new model with ``theta = (1 - alpha) * theta_a + alpha * theta_b`` (parameters and buffers).

    Args:
        model_a: ``alpha = 0`` endpoint (its copy is the returned module; neither input is modified).
        model_b: ``alpha = 1`` endpoint, same architecture and shapes.
        alpha: interpolation coefficient.
        bn_mode: ``"interpolate"`` the BatchNorm running statistics, or ``"reset"`` them and re-estimate on
            ``data`` (exact cumulative average over one pass).
        data: training inputs for ``bn_mode="reset"``: a tensor ``[n, *input_shape]``, an ``(x, y)`` pair,
            or a data object whose ``"train"`` split is used. Not needed without BatchNorm.
        batch_size: batch size of the re-estimation pass.

    Returns:
        The interpolated module, on ``model_a``'s device and in ``model_a``'s train/eval mode.

    References:
        Frankle et al. (2020); Garipov et al. (2018) for the BatchNorm re-estimation.
    """
    check_bn_mode(bn_mode)
    check_compatible(model_a, model_b)
    model = copy.deepcopy(model_a)
    state = interpolate_state(model_a.state_dict(), model_b.state_dict(), alpha)
    model.load_state_dict(state)
    if bn_mode == "reset" and has_batchnorm(model):
        if data is None:
            raise ValueError("bn_mode='reset' needs training data: pass data=<inputs or dataset>")
        recompute_bn_stats(model, train_inputs(data), batch_size=batch_size)
    return model
