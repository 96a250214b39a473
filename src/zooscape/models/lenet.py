"""LeNet-5 (``lenet5``), adapted to any channel count and input size."""

from __future__ import annotations

from torch import Tensor, nn

from zooscape.models.activations import get_activation
from zooscape.models.registry import register_model, reject_dropout
from zooscape.models.shapes import InputSize, check_spatial, conv_out, image_size

_POOLS = ("avg", "max")


class LeNet5(nn.Module):
    """LeNet-5: C1 conv 6@5x5, S2 pool, C3 conv 16@5x5, S4 pool, C5 conv 120@5x5, F6 Linear 84, output Linear.

    Inputs smaller than 32x32 are zero-padded in C1 (``padding = ceil((32 - S) / 2)`` per axis), so 28x28
    MNIST gets the classic padding of 2 and sees exactly LeNet-5's 32x32 geometry; on 32x32 C5 outputs 1x1.
    Modern simplifications of the 1998 net: C3 is fully connected to S2's maps (no connection table), S2/S4
    are plain pooling (``pool="avg"``, the classic subsampling, or ``"max"``) and the output layer is Linear,
    not RBF. Attributes: ``features`` (convs/pools/acts) and ``classifier`` (Flatten, Linear, act, Linear).
    61,706 parameters for 1 channel and 10 classes.

    Args:
        in_channels: C.
        num_classes: output size.
        input_hw: input ``(H, W)``.
        activation: activation name.
        pool: ``"avg"`` or ``"max"``.

    References:
        LeCun, Bottou, Bengio & Haffner, 1998.
    """

    def __init__(self, in_channels: int, num_classes: int, input_hw: tuple[int, int], activation: str,
                 pool: str):
        super().__init__()
        pad = tuple(max(0, -(-(32 - s) // 2)) for s in input_hw)
        pool_cls = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
        h, w = (conv_out(s, 5, padding=p) for s, p in zip(input_hw, pad))
        h, w = conv_out(h, 2, 2), conv_out(w, 2, 2)
        h, w = conv_out(conv_out(h, 5), 2, 2), conv_out(conv_out(w, 5), 2, 2)
        h, w = conv_out(h, 5), conv_out(w, 5)
        check_spatial((h, w), "lenet5", input_hw, "C5")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=pad), get_activation(activation), pool_cls(2, 2),
            nn.Conv2d(6, 16, 5), get_activation(activation), pool_cls(2, 2),
            nn.Conv2d(16, 120, 5), get_activation(activation),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(120 * h * w, 84), get_activation(activation), nn.Linear(84, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits.

        Args:
            x: ``[B, C, H, W]``.

        Returns:
            ``[B, num_classes]``.
        """
        return self.classifier(self.features(x))


@register_model("lenet5")
def lenet5(*, num_classes: int, in_channels: int, input_size: InputSize, activation: str, dropout: float,
           pool: str = "avg") -> LeNet5:
    """LeNet-5; ``input_size`` None means 28x28 (padded to 32x32 geometry). No dropout (reference has none).

    Args:
        num_classes: output size.
        in_channels: C.
        input_size: ``S``, ``(H, W)`` or ``(C, H, W)``.
        activation: activation name (the 1998 net used a scaled tanh).
        dropout: must be 0.
        pool: ``"avg"`` (classic subsampling) or ``"max"``.

    Returns:
        A :class:`LeNet5` mapping ``[B, C, H, W]`` to ``[B, num_classes]``.

    References:
        LeCun, Bottou, Bengio & Haffner, 1998.
    """
    reject_dropout("lenet5", dropout)
    if pool not in _POOLS:
        raise ValueError(f"unknown pool {pool!r} for lenet5; valid choices: {list(_POOLS)}")
    hw = image_size(input_size, in_channels, (28, 28), "lenet5")
    return LeNet5(in_channels, num_classes, hw, activation, pool)

