"""Normalisation layers by name ("none" | "bn" | "ln") for feature vectors and convolutional maps."""

from __future__ import annotations

from torch import nn

NORMS: tuple[str, ...] = ("none", "bn", "ln")
"""Valid normalisation names."""


def check_norm(norm: str) -> str:
    """Validate a normalisation name.

    Args:
        norm: ``"none"``, ``"bn"`` or ``"ln"``.

    Returns:
        ``norm`` unchanged.
    """
    if not isinstance(norm, str) or norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid choices: {list(NORMS)}")
    return norm


def norm_1d(norm: str, num_features: int) -> nn.Module:
    """Normalisation for feature vectors ``[B, F]``.

    Args:
        norm: ``"bn"`` -> ``nn.BatchNorm1d(F)``; ``"ln"`` -> ``nn.LayerNorm(F)``;
            ``"none"`` -> ``nn.Identity``.
        num_features: F.

    Returns:
        A module mapping ``[B, F]`` to ``[B, F]``.

    References:
        Ioffe & Szegedy, 2015 (batch norm); Ba, Kiros & Hinton, 2016 (layer norm).
    """
    check_norm(norm)
    if norm == "bn":
        return nn.BatchNorm1d(num_features)
    if norm == "ln":
        return nn.LayerNorm(num_features)
    return nn.Identity()


def norm_2d(norm: str, num_channels: int) -> nn.Module:
    """Normalisation for convolutional maps ``[B, C, H, W]``.

    ``"ln"`` is ``nn.GroupNorm(1, C)``: one group, i.e. a layer norm over ``(C, H, W)`` of each sample with a
    per-channel affine transform (what "LayerNorm" means for conv maps in the re-basin literature).

    Args:
        norm: ``"bn"`` -> ``nn.BatchNorm2d(C)``; ``"ln"`` -> ``nn.GroupNorm(1, C)``;
            ``"none"`` -> ``nn.Identity``.
        num_channels: C.

    Returns:
        A module mapping ``[B, C, H, W]`` to ``[B, C, H, W]``.

    References:
        Ioffe & Szegedy, 2015 (batch norm); Wu & He, 2018 (group norm); Ainsworth, Hayase & Srinivasa, 2023
        (layer-normed ResNets/VGGs for weight matching).
    """
    check_norm(norm)
    if norm == "bn":
        return nn.BatchNorm2d(num_channels)
    if norm == "ln":
        return nn.GroupNorm(1, num_channels)
    return nn.Identity()
