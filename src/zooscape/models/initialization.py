"""Weight initialisation schemes applied to every Linear/Conv layer of a model."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

INIT_SCHEMES: tuple[str, ...] = (
    "default",
    "uniform",
    "normal",
    "kaiming_uniform",
    "kaiming_normal",
    "xavier_uniform",
    "xavier_normal",
)
"""Valid ``scheme`` names (``None`` is accepted as an alias of ``"default"``)."""

_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def check_init(scheme: str | None) -> str:
    """Validate an initialisation scheme name.

    Args:
        scheme: one of :data:`INIT_SCHEMES` or None.

    Returns:
        The canonical name (``None`` -> ``"default"``).
    """
    if scheme is None:
        return "default"
    if not isinstance(scheme, str) or scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; valid choices: {[None, *INIT_SCHEMES]}")
    return scheme


def _fan_in(weight: Tensor) -> int:
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    return weight.shape[1] * receptive


def _init_weight(weight: Tensor, scheme: str, generator: torch.Generator | None) -> None:
    if scheme == "default":
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    elif scheme == "uniform":
        nn.init.uniform_(weight, 0.0, 1.0, generator=generator)
    elif scheme == "normal":
        nn.init.normal_(weight, 0.0, 1.0, generator=generator)
    elif scheme == "kaiming_uniform":
        nn.init.kaiming_uniform_(weight, generator=generator)
    elif scheme == "kaiming_normal":
        nn.init.kaiming_normal_(weight, generator=generator)
    elif scheme == "xavier_uniform":
        nn.init.xavier_uniform_(weight, generator=generator)
    else:  # xavier_normal
        nn.init.xavier_normal_(weight, generator=generator)


def init_weights(
    model: nn.Module, scheme: str | None, generator: torch.Generator | None = None, *, bias: float = 0.0
) -> nn.Module:
    """Re-initialise ``model`` in place with a named scheme, drawing only from ``generator``.

    Every ``nn.Linear`` and ``nn.Conv*d`` weight is drawn from the scheme; their biases are set to the
    constant ``bias`` (0 by default; Model Zoos used 0.01). Normalisation layers (BatchNorm, GroupNorm,
    LayerNorm) get weight 1 and bias 0, and BatchNorm running statistics are reset.
    Schemes, with ``fan_in = C_in * k * k``:

    - ``"default"`` / None: PyTorch's own default, reproduced with ``generator``: weights
      ``kaiming_uniform(a=sqrt(5))`` = U(-1/sqrt(fan_in), 1/sqrt(fan_in)) and biases from the same range
      (``bias`` is ignored).
    - ``"uniform"``: U(0, 1) and ``"normal"``: N(0, 1) -- exactly as Model Zoos (``torch.nn.init.uniform_`` /
      ``normal_`` with their default arguments), i.e. *not* scaled by the fan.
    - ``"kaiming_uniform"`` / ``"kaiming_normal"``: PyTorch defaults (fan_in mode, gain sqrt(2)): normal std
      sqrt(2 / fan_in), uniform bound sqrt(6 / fan_in).
    - ``"xavier_uniform"`` / ``"xavier_normal"``: gain 1, std sqrt(2 / (fan_in + fan_out)).

    Args:
        model: the module to initialise (modified in place).
        scheme: one of :data:`INIT_SCHEMES` or None.
        generator: CPU ``torch.Generator`` for every draw; None uses the global RNG. Parameters must be on the
            generator's device.
        bias: constant for Linear/Conv biases (ignored by ``"default"``).

    Returns:
        ``model`` (the same object).

    References:
        He, Zhang, Ren & Sun, 2015 (Kaiming init); Glorot & Bengio, 2010 (Xavier init); Schürholt et al., 2022
        (Model Zoos: init_type uniform/normal/kaiming/xavier, biases 0.01).
    """
    scheme = check_init(scheme)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    bias = float(bias)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                _init_weight(module.weight, scheme, generator)
                if module.bias is None:
                    continue
                if scheme == "default":
                    fan_in = _fan_in(module.weight)
                    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
                else:
                    module.bias.fill_(bias)
            elif isinstance(module, _NORM_LAYERS):
                if getattr(module, "weight", None) is not None:
                    module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                    module.reset_running_stats()
    return model
