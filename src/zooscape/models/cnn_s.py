"""Model Zoos' small CNN ("CNN", CNN-s): 2,464 parameters on 1x28x28, 2,864 on 3x28x28."""

from __future__ import annotations

from torch import nn

from zooscape.models.activations import get_activation
from zooscape.models.registry import register_model
from zooscape.models.shapes import InputSize, check_spatial, conv_out, image_size
from zooscape.models.zoo_cnn import ModuleListCNN


class CNNSmall(ModuleListCNN):
    """The exact Model Zoos CNN-s layout, kept in ``module_list`` with the reference's indices.

    ``module_list`` = [Conv2d(C,8,5), MaxPool2d(2), act, (Dropout), Conv2d(8,6,5), MaxPool2d(2), act,
    (Dropout), Conv2d(6,4,2), act, Flatten, Linear(4*h*w, 20), act, (Dropout), Linear(20, num_classes)].
    Dropout modules exist only when ``dropout > 0`` (as in the reference), so without dropout the
    parametrised layers sit at indices 0, 3, 6, 9, 11 and Model Zoos checkpoints (``module_list.{i}.weight``)
    load directly. On 28x28 inputs the final map is 4x3x3 (Linear(36, 20)); other sizes change only that
    Linear's input size (3x32x32 gives Linear(64, 20) and 3,424 parameters).

    Args:
        in_channels: C.
        num_classes: output size (10 in the reference).
        input_hw: input ``(H, W)``; Model Zoos used 28x28 for every data set (CIFAR-10 was resized to 28x28).
        activation: activation name.
        dropout: dropout probability.

    References:
        Schürholt, Taskiran, Knyazev, Giró-i-Nieto & Borth, 2022 (Model Zoos, ``def_net.CNN``).
    """

    def __init__(self, in_channels: int, num_classes: int, input_hw: tuple[int, int], activation: str,
                 dropout: float):
        super().__init__()
        h, w = input_hw
        for conv_kernel in (5, 5):
            h, w = (conv_out(conv_out(s, conv_kernel), 2, 2) for s in (h, w))
            check_spatial((h, w), "cnn_s", input_hw, "a conv+pool stage")
        h, w = conv_out(h, 2), conv_out(w, 2)
        check_spatial((h, w), "cnn_s", input_hw, "the third convolution")

        def drop() -> list[nn.Module]:
            return [nn.Dropout(dropout)] if dropout > 0 else []

        self.module_list = nn.Sequential(
            nn.Conv2d(in_channels, 8, 5), nn.MaxPool2d(2, 2), get_activation(activation), *drop(),
            nn.Conv2d(8, 6, 5), nn.MaxPool2d(2, 2), get_activation(activation), *drop(),
            nn.Conv2d(6, 4, 2), get_activation(activation),
            nn.Flatten(),
            nn.Linear(4 * h * w, 20), get_activation(activation), *drop(),
            nn.Linear(20, num_classes),
        )  # fmt: skip


@register_model("cnn_s", init_bias=0.01)
def cnn_s(*, num_classes: int, in_channels: int, input_size: InputSize, activation: str,
          dropout: float) -> CNNSmall:
    """Model Zoos CNN-s; ``input_size`` None means 28x28. Named ``init`` schemes set biases to 0.01.

    Args:
        num_classes: output size.
        in_channels: C (1 for MNIST/F-MNIST, 3 for CIFAR-10/SVHN).
        input_size: ``S``, ``(H, W)`` or ``(C, H, W)``; at least 20x20.
        activation: activation name.
        dropout: dropout probability (Dropout modules only when > 0).

    Returns:
        A :class:`CNNSmall` mapping ``[B, C, H, W]`` to ``[B, num_classes]``.

    References:
        Schürholt et al., 2022 (Model Zoos).
    """
    hw = image_size(input_size, in_channels, (28, 28), "cnn_s")
    return CNNSmall(in_channels, num_classes, hw, activation, dropout)
