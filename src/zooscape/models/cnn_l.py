"""Model Zoos' large CNN ("CNN3", CNN-l): 10,853 parameters on 3x32x32."""

from __future__ import annotations

from torch import nn

from zooscape.models.activations import get_activation
from zooscape.models.registry import register_model
from zooscape.models.shapes import InputSize, check_spatial, conv_out, image_size
from zooscape.models.zoo_cnn import ModuleListCNN


class CNNLarge(ModuleListCNN):
    """The exact Model Zoos CNN-l ("CNN3") layout, kept in ``module_list`` with the reference's indices.

    ``module_list`` = 3 x [Conv2d(., ., 3), MaxPool2d(2), act, Dropout] with channels C->16->32->15, then
    [Flatten, Linear(15*h*w, 20), act, Dropout, Linear(20, num_classes)]. Unlike CNN-s, the reference *always*
    inserts the Dropout modules (``if True:  # dropout > 0``), so they are always present here too (an
    ``nn.Dropout(0.0)`` is the identity): Conv2d at 0, 4, 8 and Linear at 13, 16, and Model Zoos checkpoints
    load directly. On 32x32 inputs the final map is 15x2x2 (Linear(60, 20)):
    448 + 4,640 + 4,335 + 1,220 + 210 = 10,853 parameters for C=3.

    Args:
        in_channels: C.
        num_classes: output size (10 in the reference).
        input_hw: input ``(H, W)`` (32x32 in the reference).
        activation: activation name.
        dropout: dropout probability.

    References:
        Schürholt, Taskiran, Knyazev, Giró-i-Nieto & Borth, 2022 (Model Zoos, ``def_net.CNN3``).
    """

    def __init__(self, in_channels: int, num_classes: int, input_hw: tuple[int, int], activation: str,
                 dropout: float):
        super().__init__()
        h, w = input_hw
        layers: list[nn.Module] = []
        channels = (in_channels, 16, 32, 15)
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3), nn.MaxPool2d(2, 2), get_activation(activation),
                       nn.Dropout(dropout)]
            h, w = (conv_out(conv_out(s, 3), 2, 2) for s in (h, w))
            check_spatial((h, w), "cnn_l", input_hw, f"the conv+pool stage with {c_out} channels")
        layers += [nn.Flatten(), nn.Linear(channels[-1] * h * w, 20), get_activation(activation),
                   nn.Dropout(dropout), nn.Linear(20, num_classes)]
        self.module_list = nn.Sequential(*layers)


@register_model("cnn_l", init_bias=0.01)
def cnn_l(*, num_classes: int, in_channels: int, input_size: InputSize, activation: str,
          dropout: float) -> CNNLarge:
    """Model Zoos CNN-l; ``input_size`` None means 32x32. Named ``init`` schemes set biases to 0.01.

    Args:
        num_classes: output size.
        in_channels: C (3 for CIFAR-10 / STL-10 in the reference).
        input_size: ``S``, ``(H, W)`` or ``(C, H, W)``; at least 22x22.
        activation: activation name.
        dropout: dropout probability (Dropout modules always present).

    Returns:
        A :class:`CNNLarge` mapping ``[B, C, H, W]`` to ``[B, num_classes]``.

    References:
        Schürholt et al., 2022 (Model Zoos).
    """
    hw = image_size(input_size, in_channels, (32, 32), "cnn_l")
    return CNNLarge(in_channels, num_classes, hw, activation, dropout)
