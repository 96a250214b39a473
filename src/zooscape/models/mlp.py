"""Multi-layer perceptron family (``mlp``)."""

from __future__ import annotations

import numbers

from torch import Tensor, nn

from zooscape.models.activations import get_activation
from zooscape.models.norms import check_norm, norm_1d
from zooscape.models.registry import register_model
from zooscape.models.shapes import InputSize, flat_size


class MLP(nn.Module):
    """Flatten, then ``depth`` x [Linear, (norm), activation, (Dropout)], then a Linear classifier.

    The layers live in ``module_list`` (an ``nn.Sequential``); without norm the indices match Model Zoos' MLP
    (Linear at 0, 2, ... or 0, 3, ... with dropout).

    Args:
        in_features: flattened input size D.
        num_classes: output size.
        depth: number of hidden layers (0 gives a linear model).
        width: hidden width.
        activation: activation name.
        dropout: dropout probability after each hidden activation (module present only when > 0).
        bias: use biases in the Linear layers.
        norm: ``"none"``, ``"bn"`` (BatchNorm1d) or ``"ln"`` (LayerNorm) after each hidden Linear.

    References:
        Rumelhart, Hinton & Williams, 1986; Schürholt et al., 2022 (Model Zoos MLP layout).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        depth: int,
        width: int,
        activation: str,
        dropout: float,
        bias: bool,
        norm: str,
    ):
        super().__init__()
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        features = in_features
        for _ in range(depth):
            layers.append(nn.Linear(features, width, bias=bias))
            if norm != "none":
                layers.append(norm_1d(norm, width))
            layers.append(get_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            features = width
        layers.append(nn.Linear(features, num_classes, bias=bias))
        self.module_list = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Logits.

        Args:
            x: ``[B, ...]`` with ``prod(...) == in_features``.

        Returns:
            ``[B, num_classes]``.
        """
        return self.module_list(self.flatten(x))


@register_model("mlp")
def mlp(
    *,
    num_classes: int,
    in_channels: int,
    input_size: InputSize,
    activation: str,
    dropout: float,
    depth: int = 2,
    width: int = 64,
    bias: bool = True,
    norm: str = "none",
) -> MLP:
    """MLP classifier; ``input_size`` None means ``in_channels`` x 28 x 28 images.

    Args:
        num_classes: output size.
        in_channels: C of image inputs (used when ``input_size`` is None or ``(H, W)``).
        input_size: flat size D (int), ``(D,)``, ``(H, W)`` or ``(C, H, W)``.
        activation: activation name.
        dropout: dropout after hidden activations.
        depth: hidden layers (>= 0).
        width: hidden width (>= 1).
        bias: Linear biases.
        norm: ``"none"`` | ``"bn"`` | ``"ln"``.

    Returns:
        An :class:`MLP` mapping ``[B, ...]`` to ``[B, num_classes]``.

    References:
        Rumelhart, Hinton & Williams, 1986.
    """
    for arg, value, low in (("depth", depth, 0), ("width", width, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{arg} must be an integer >= {low}, got {value!r}")
    if not isinstance(bias, bool):
        raise ValueError(f"bias must be a bool, got {bias!r}")
    check_norm(norm)
    in_features = flat_size(input_size, in_channels, (28, 28))
    return MLP(in_features, num_classes, int(depth), int(width), activation, dropout, bias, norm)
