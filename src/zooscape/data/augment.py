"""Batch augmentations for image tensors ``[B, C, H, W]``, fully determined by a ``torch.Generator``.

All randomness is drawn from the generator passed in (never the global RNG), per sample and vectorised,
so the same generator state always gives the same output regardless of device or batch composition
elsewhere. Random numbers are drawn on the generator's device and moved to the data's device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_crop", "random_hflip", "build_augment", "AUGMENTATIONS"]

Augment = Callable[[Tensor, torch.Generator], Tensor]


def _check_batch(x: Tensor, fn: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{fn} expects a batch of images [B, C, H, W], got {shape}")


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pad each image by ``padding`` pixels per side, then crop back to ``H x W`` at a random offset.

    Offsets ``(dy, dx)`` are drawn per sample uniformly from ``{0, ..., 2 * padding}``; the crop is a single
    ``gather`` on the padded batch (no Python loop over samples). ``padding=0`` returns ``x`` unchanged.

    References:
        Krizhevsky, Sutskever, Hinton (2012); the standard CIFAR "pad 4 + random crop" recipe of He, Zhang,
        Ren, Sun (2016).

    Args:
        x: batch ``[B, C, H, W]``.
        padding: non-negative int.
        generator: source of randomness.

    Returns:
        Tensor ``[B, C, H, W]``: ``out[b, :, i, j] = x[b, :, i + dy_b - padding, j + dx_b - padding]`` (0
        outside ``x``).
    """
    _check_batch(x, "random_crop")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"random_crop padding must be a non-negative int, got {padding!r}")
    b, c, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=generator.device)
    if padding == 0:
        return x
    offsets = offsets.to(x.device)
    wp = w + 2 * padding
    padded = F.pad(x, (padding, padding, padding, padding)).reshape(b, c, -1)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)[None, :]  # [B, H]
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)[None, :]  # [B, W]
    flat_idx = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.gather(2, flat_idx).reshape(b, c, h, w)


def random_hflip(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Flip each image left-right independently with probability ``p``.

    Args:
        x: batch ``[B, C, H, W]``.
        generator: source of randomness (one uniform draw per sample).
        p: flip probability in [0, 1].

    Returns:
        Tensor ``[B, C, H, W]``.
    """
    _check_batch(x, "random_hflip")
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"random_hflip p must be in [0, 1], got {p!r}")
    u = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device)
    flip = (u < p).reshape(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


AUGMENTATIONS = ("crop", "flip")
_KWARGS = {"padding": 4, "flip_p": 0.5}


def build_augment(names: Sequence[str] | str, **kw: Any) -> Augment:
    """Compose named augmentations into one ``fn(x, generator) -> x`` applied in the given order.

    Args:
        names: sequence of names from ``("crop", "flip")``; a string ``"crop,flip"`` (comma or ``+``
            separated) is also accepted; empty -> identity.
        **kw: ``padding`` (crop, default 4) and ``flip_p`` (flip probability, default 0.5).

    Returns:
        Callable mapping a batch ``[B, C, H, W]`` and a ``torch.Generator`` to an augmented batch.
    """
    if isinstance(names, str):
        names = [n for n in names.replace("+", ",").split(",") if n.strip()]
    names = [n.strip().lower() for n in names]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; valid names: {list(AUGMENTATIONS)}")
    bad_kw = sorted(set(kw) - set(_KWARGS))
    if bad_kw:
        raise ValueError(f"unknown augmentation option(s) {bad_kw}; valid options: {sorted(_KWARGS)}")
    opts = {**_KWARGS, **kw}
    steps: list[Augment] = []
    for name in names:
        if name == "crop":
            padding = opts["padding"]
            if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
                raise ValueError(f"augmentation option padding must be a non-negative int, got {padding!r}")
            steps.append(lambda x, g, _p=padding: random_crop(x, _p, g))
        else:
            flip_p = float(opts["flip_p"])
            if not 0.0 <= flip_p <= 1.0:
                raise ValueError(f"augmentation option flip_p must be in [0, 1], got {flip_p!r}")
            steps.append(lambda x, g, _p=flip_p: random_hflip(x, g, _p))

    def augment(x: Tensor, generator: torch.Generator) -> Tensor:
        for step in steps:
            x = step(x, generator)
        return x

    augment.names = tuple(names)  # type: ignore[attr-defined]
    return augment
