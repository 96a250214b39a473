"""Input-size parsing and convolution output-size arithmetic shared by the model families."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

InputSize = int | Sequence[int] | None


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def normalize_input_size(input_size: InputSize) -> int | list[int] | None:
    """Validate ``input_size`` and return it in JSON form (an int, a list of ints, or None).

    Args:
        input_size: None, a positive int, or a sequence of 1-3 positive ints.

    Returns:
        ``None``, an ``int`` or a ``list[int]``.
    """
    if input_size is None:
        return None
    if isinstance(input_size, str) or not isinstance(input_size, (numbers.Integral, Sequence)):
        raise ValueError(f"input_size must be an int, a sequence of ints or None, got {input_size!r}")
    if isinstance(input_size, numbers.Integral):
        return _positive_int(input_size, "input_size")
    if not 1 <= len(input_size) <= 3:
        raise ValueError(
            f"input_size must have 1 to 3 entries ([C,] H, W or a flat size), got {list(input_size)}"
        )
    return [_positive_int(v, "each input_size entry") for v in input_size]


def image_size(
    input_size: InputSize, in_channels: int, default: tuple[int, int], model: str
) -> tuple[int, int]:
    """Spatial size ``(H, W)`` of image inputs ``[B, C, H, W]``.

    Args:
        input_size: None (use ``default``), ``S`` (square), ``(H, W)`` or ``(C, H, W)`` with
            ``C == in_channels``.
        in_channels: C.
        default: ``(H, W)`` used when ``input_size`` is None.
        model: model name for error messages.

    Returns:
        ``(H, W)``.
    """
    size = normalize_input_size(input_size)
    if size is None:
        return default
    if isinstance(size, int):
        return size, size
    if len(size) == 1:
        raise ValueError(f"model {model!r} needs an image input_size (S, (H, W) or (C, H, W)), got {size}")
    if len(size) == 3:
        if size[0] != in_channels:
            raise ValueError(f"input_size {size} has {size[0]} channels but in_channels={in_channels}")
        size = size[1:]
    return size[0], size[1]


def flat_size(input_size: InputSize, in_channels: int, default: tuple[int, int]) -> int:
    """Number of input features after flattening ``[B, ...]`` to ``[B, D]``.

    Args:
        input_size: None (``in_channels * H * W`` with ``default``), ``D`` (an int: the flat size itself),
            ``(D,)``, ``(H, W)`` (``in_channels * H * W``) or ``(C, H, W)`` with ``C == in_channels``.
        in_channels: C.
        default: ``(H, W)`` used when ``input_size`` is None.

    Returns:
        D.
    """
    size = normalize_input_size(input_size)
    if size is None:
        return in_channels * default[0] * default[1]
    if isinstance(size, int):
        return size
    if len(size) == 1:
        return size[0]
    if len(size) == 3:
        if size[0] != in_channels:
            raise ValueError(f"input_size {size} has {size[0]} channels but in_channels={in_channels}")
        size = size[1:]
    return in_channels * size[0] * size[1]


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0, ceil_mode: bool = False) -> int:
    """Output length of a convolution/pooling along one spatial axis (dilation 1).

    Args:
        size: input length.
        kernel: kernel size.
        stride: stride.
        padding: zero padding on each side.
        ceil_mode: round up (pooling with ``ceil_mode=True``; the last window must start inside the input).

    Returns:
        The output length (may be < 1 when the input is too small; callers check).
    """
    numerator = size + 2 * padding - kernel + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1  # floor division, as PyTorch's pooling_output_shape
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def check_spatial(hw: tuple[int, int], model: str, input_hw: tuple[int, int], where: str) -> None:
    """Raise ``ValueError`` if a feature map size collapsed below 1x1.

    Args:
        hw: feature map ``(H, W)`` at ``where``.
        model: model name for the message.
        input_hw: the input ``(H, W)`` for the message.
        where: layer description for the message.
    """
    if hw[0] < 1 or hw[1] < 1:
        raise ValueError(
            f"input_size {input_hw[0]}x{input_hw[1]} is too small for model {model!r}: "
            f"the feature map after {where} would be {hw[0]}x{hw[1]}"
        )
