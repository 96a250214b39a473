"""Activation functions by name, as fresh ``nn.Module`` instances (one instance per use)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,  # negative slope 0.01 (PyTorch default, as in Model Zoos)
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}

ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATIONS)
"""Valid activation names, in documentation order."""


def get_activation(name: str) -> nn.Module:
    """Return a new activation module for ``name`` (never ``inplace``; a fresh instance per call).

    Args:
        name: one of ``relu``, ``leakyrelu`` (slope 0.01), ``tanh``, ``sigmoid``, ``gelu``, ``silu``.

    Returns:
        An elementwise ``nn.Module`` mapping a tensor of any shape ``[...]`` to the same shape.

    References:
        GELU: Hendrycks & Gimpel, 2016. SiLU: Elfwing, Uchibe & Doya, 2018.
        Leaky ReLU: Maas, Hannun & Ng, 2013.
    """
    if not isinstance(name, str) or name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid choices: {list(ACTIVATIONS)}")
    return _ACTIVATIONS[name]()
