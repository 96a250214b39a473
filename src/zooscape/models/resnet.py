"""ResNets with a width knob: ``resnet18`` (4 stages [2,2,2,2]) and ``resnet20`` (CIFAR, 3 stages [3,3,3]).

State-dict keys follow torchvision (``conv1``, ``bn1``, ``layer{i}.{j}.conv1/bn1/conv2/bn2``,
``layer{i}.{j}.downsample.{0,1}``, ``fc``), so torchvision-style checkpoints such as the phase-transition
zoo's ResNet-18 (built with ``stem="imagenet"``) load directly.
Norm layers keep the ``bn`` names whatever the norm.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from torch import Tensor, nn

from zooscape.models.activations import get_activation
from zooscape.models.norms import check_norm, norm_2d
from zooscape.models.registry import register_model, reject_dropout
from zooscape.models.shapes import InputSize, image_size

_STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual: ``act2(bn2(conv2(act1(bn1(conv1(x))))) + downsample(x))``.

    The shortcut is ``nn.Identity`` when shapes agree, otherwise a projection ``downsample`` =
    Sequential(Conv2d 1x1 with stride, norm) ("option B"). Convolutions have no bias.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of ``conv1`` and of the projection.
        norm: ``"bn"`` | ``"ln"`` (GroupNorm(1, C)) | ``"none"``.
        activation: activation name (two separate instances).

    References:
        He, Zhang, Ren & Sun, 2016.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_2d(norm, planes)
        self.act1 = get_activation(activation)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm_2d(norm, planes)
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), norm_2d(norm, planes)
            )
        else:
            self.downsample = nn.Identity()
        self.act2 = get_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        """Residual block.

        Args:
            x: ``[B, in_planes, H, W]``.

        Returns:
            ``[B, planes, H / stride, W / stride]``.
        """
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.downsample(x))


class ResNet(nn.Module):
    """Stem, stages of :class:`BasicBlock` (first block of stages 2.. strides 2), global average pool, Linear.

    Stem ``"cifar"``: Conv2d 3x3 stride 1 and no max-pool (``maxpool`` is ``nn.Identity``); ``"imagenet"``:
    Conv2d 7x7 stride 2 + MaxPool2d(3, 2, 1) (torchvision; used by the phase-transition zoo even on CIFAR).

    Args:
        blocks: blocks per stage, e.g. ``(2, 2, 2, 2)``.
        planes: channels per stage, e.g. ``(64, 128, 256, 512)``.
        in_channels: C.
        num_classes: output size.
        norm: ``"bn"`` | ``"ln"`` | ``"none"``.
        activation: activation name.
        stem: ``"cifar"`` | ``"imagenet"``.

    References:
        He, Zhang, Ren & Sun, 2016.
    """

    def __init__(self, blocks: Sequence[int], planes: Sequence[int], in_channels: int, num_classes: int,
                 norm: str, activation: str, stem: str):
        super().__init__()
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, planes[0], 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, planes[0], 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = norm_2d(norm, planes[0])
        self.act = get_activation(activation)
        names = []
        in_planes = planes[0]
        for i, (n_blocks, p) in enumerate(zip(blocks, planes)):
            stage = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                stage.append(BasicBlock(in_planes, p, stride, norm, activation))
                in_planes = p
            names.append(f"layer{i + 1}")
            self.add_module(names[-1], nn.Sequential(*stage))
        self.stage_names = tuple(names)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits.

        Args:
            x: ``[B, C, H, W]``.

        Returns:
            ``[B, num_classes]``.
        """
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(self.flatten(self.avgpool(x)))


def _check_width(width: object) -> int:
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    return int(width)


@register_model("resnet18")
def resnet18(*, num_classes: int, in_channels: int, input_size: InputSize, activation: str, dropout: float,
             width: int = 64, norm: str = "bn", stem: str = "cifar") -> ResNet:
    """ResNet-18 with stage planes ``width * (1, 2, 4, 8)`` as in the phase-transition zoo (64 = standard).

    11,173,962 parameters for width 64, 3 input channels, 10 classes and the CIFAR stem.

    Args:
        num_classes: output size.
        in_channels: C.
        input_size: only validated (global average pooling accepts any size >= 1 after the stem).
        activation: activation name.
        dropout: must be 0.
        width: base planes (>= 1).
        norm: ``"bn"`` | ``"ln"`` | ``"none"``.
        stem: ``"cifar"`` (3x3, no max-pool) | ``"imagenet"`` (7x7/2 + max-pool, as torchvision/PTMZ).

    Returns:
        A :class:`ResNet` mapping ``[B, C, H, W]`` to ``[B, num_classes]``.

    References:
        He, Zhang, Ren & Sun, 2016; Schürholt et al. (phase-transition model zoo: ResNet-18 with width knob).
    """
    reject_dropout("resnet18", dropout)
    width = _check_width(width)
    check_norm(norm)
    if stem not in _STEMS:
        raise ValueError(f"unknown stem {stem!r} for resnet18; valid choices: {list(_STEMS)}")
    image_size(input_size, in_channels, (32, 32), "resnet18")
    planes = tuple(width * m for m in (1, 2, 4, 8))
    return ResNet((2, 2, 2, 2), planes, in_channels, num_classes, norm, activation, stem)


@register_model("resnet20")
def resnet20(*, num_classes: int, in_channels: int, input_size: InputSize, activation: str, dropout: float,
             width: int = 16, norm: str = "bn") -> ResNet:
    """CIFAR ResNet-20: 3x3 stem, 3 stages of 3 blocks, planes ``width * (1, 2, 4)`` (16 = He et al.).

    Down-sampling shortcuts are 1x1 projections ("option B"; the paper's CIFAR nets used zero-padding "option
    A", which concatenates channels and is not population-compatible): 272,474 parameters for width 16,
    3 channels, 10 classes (option A: 269,722).

    Args:
        num_classes: output size.
        in_channels: C.
        input_size: only validated.
        activation: activation name.
        dropout: must be 0.
        width: base planes (>= 1).
        norm: ``"bn"`` | ``"ln"`` (GroupNorm(1, C), as git re-basin's ResNet-20) | ``"none"``.

    Returns:
        A :class:`ResNet` mapping ``[B, C, H, W]`` to ``[B, num_classes]``.

    References:
        He, Zhang, Ren & Sun, 2016 (Section 4.2); Ainsworth, Hayase & Srinivasa, 2023 (layer-norm ResNet-20).
    """
    reject_dropout("resnet20", dropout)
    width = _check_width(width)
    check_norm(norm)
    image_size(input_size, in_channels, (32, 32), "resnet20")
    planes = tuple(width * m for m in (1, 2, 4))
    return ResNet((3, 3, 3), planes, in_channels, num_classes, norm, activation, "cifar")
