"""CIFAR-style VGG-11/13/16/19 with a width multiplier: ``vgg{11,13,16,19}{,_bn,_ln,_nobias}``.

Layout as in the re-basin literature's ``cifar_vgg``: torchvision's VGG configurations without the last
max-pool, each conv 3x3/pad 1 followed by [norm] and the activation, then global average pooling and a single
Linear classifier. Keys (``features.{i}``, ``classifier.0``) match that code. Two deliberate generalisations:
``nn.AdaptiveAvgPool2d(1)`` instead of ``AvgPool2d(2)`` and ``MaxPool2d(2, 2, ceil_mode=True)``, so any input
size works (28x28 -> 14, 7, 4, 2); on 32x32 both are identical to the reference.
"""

from __future__ import annotations

import math
import numbers

from torch import Tensor, nn

from zooscape.models.activations import get_activation
from zooscape.models.norms import norm_2d
from zooscape.models.registry import register_model, reject_dropout
from zooscape.models.shapes import InputSize, image_size

VGG_CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512),
}
"""Conv channels per depth (``"M"`` = 2x2 max-pool), before the width multiplier."""

_VARIANTS = {"": ("none", True), "_bn": ("bn", True), "_ln": ("ln", True), "_nobias": ("none", False)}


class VGG(nn.Module):
    """VGG feature extractor + global average pool + Linear classifier.

    Args:
        config: channel plan (ints and ``"M"``), already scaled.
        in_channels: C.
        num_classes: output size.
        norm: ``"none"`` | ``"bn"`` (BatchNorm2d) | ``"ln"`` (GroupNorm(1, C): layer norm over C, H, W).
        bias: biases in every conv and in the classifier.
        activation: activation name.

    References:
        Simonyan & Zisserman, 2015; Qu & Horvath, 2024 (Rethink Model Re-Basin: cifar_vgg variants).
    """

    def __init__(self, config: tuple[int | str, ...], in_channels: int, num_classes: int, norm: str,
                 bias: bool, activation: str):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                continue
            layers.append(nn.Conv2d(channels, int(v), 3, padding=1, bias=bias))
            if norm != "none":
                layers.append(norm_2d(norm, int(v)))
            layers.append(get_activation(activation))
            channels = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Linear(channels, num_classes, bias=bias))

    def forward(self, x: Tensor) -> Tensor:
        """Logits.

        Args:
            x: ``[B, C, H, W]``.

        Returns:
            ``[B, num_classes]``.
        """
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def scaled_config(depth: int, width: float) -> tuple[int | str, ...]:
    """VGG channel plan with every conv width multiplied by ``width`` (rounded, at least 1).

    Args:
        depth: 11, 13, 16 or 19.
        width: multiplier > 0 (1.0 = standard 64..512 channels).

    Returns:
        The scaled plan.
    """
    valid = not isinstance(width, bool) and isinstance(width, numbers.Real) and math.isfinite(width)
    if not valid or width <= 0:
        raise ValueError(f"width must be a positive finite number, got {width!r}")
    if depth not in VGG_CONFIGS:
        raise ValueError(f"unknown VGG depth {depth!r}; valid choices: {sorted(VGG_CONFIGS)}")
    return tuple(v if v == "M" else max(1, int(round(int(v) * width))) for v in VGG_CONFIGS[depth])


def _make_builder(name: str, depth: int, norm: str, bias: bool):
    norm_text = {"none": "no normalisation", "bn": "BatchNorm2d", "ln": "GroupNorm(1, C) layer norm"}[norm]

    def builder(*, num_classes: int, in_channels: int, input_size: InputSize, activation: str,
                dropout: float, width: float = 1.0) -> VGG:
        reject_dropout(name, dropout)
        config = scaled_config(depth, width)
        image_size(input_size, in_channels, (32, 32), name)
        return VGG(config, in_channels, num_classes, norm, bias, activation)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"""CIFAR-style VGG-{depth}, {norm_text}, {"with" if bias else "without"} biases.

    Args:
        num_classes: output size.
        in_channels: C.
        input_size: only validated (any size >= 1x1 works).
        activation: activation name.
        dropout: must be 0 (the reference has none).
        width: channel multiplier (1.0 = 64..512 channels).

    Returns:
        A :class:`VGG` mapping ``[B, C, H, W]`` to ``[B, num_classes]``.

    References:
        Simonyan & Zisserman, 2015; Qu & Horvath, 2024.
    """
    return register_model(name)(builder)


for _depth in VGG_CONFIGS:
    for _suffix, (_norm, _bias) in _VARIANTS.items():
        _name = f"vgg{_depth}{_suffix}"
        globals()[_name] = _make_builder(_name, _depth, _norm, _bias)
