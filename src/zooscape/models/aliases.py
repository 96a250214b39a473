"""Other codebases' model names as registry aliases (:func:`~zooscape.models.registry.register_alias`).

The Rethink Re-Basin code (Qu & Horvath, 2024; open_lth naming) names its models ``cifar_vgg{11,13,16,19}`` with
the suffixes ``_bn`` (BatchNorm), ``_ln`` (layer norm), ``_nobias`` and a width multiplier ``_{N}x``, and
``cifar_resnet20`` with ``_ln``, the prefix ``plain_`` (no normalisation layers) and ``_{N}x``. Registering them
as aliases lets its training scripts' settings be written one to one in a zoo spec (``[model] name =
"cifar_vgg16_bn_4x"``); the built model and its recorded config are the canonical ones (``vgg16_bn`` with
``width = 4.0``). Multipliers 1, 2, 4, 8 and 16 are registered (the ones its scripts use). Table and the
architectural differences: ``docs/alignment.md`` ("Model names of the Rethink Re-Basin code").

Not registered: ``fixup_cifar_resnet*`` (Fixup initialisation and scalar multipliers/biases are a different
parametrisation, not a setting of ``resnet20``) and ResNet depths other than 20.
"""

from __future__ import annotations

from typing import Any

from zooscape.models import resnet, vgg  # noqa: F401  (the aliased families are registered first)
from zooscape.models.registry import register_alias

__all__ = ["REBASIN_ALIASES"]

_MULTIPLIERS = (1, 2, 4, 8, 16)


def _rethink_aliases() -> dict[str, tuple[str, dict[str, Any]]]:
    table: dict[str, tuple[str, dict[str, Any]]] = {}
    for m in _MULTIPLIERS:
        tail = "" if m == 1 else f"_{m}x"
        for depth in (11, 13, 16, 19):
            for variant in ("", "_bn", "_ln", "_nobias"):
                table[f"cifar_vgg{depth}{variant}{tail}"] = (f"vgg{depth}{variant}", {"width": float(m)})
        for alias, norm in (("cifar_resnet20", "bn"), ("cifar_resnet20_ln", "ln"), ("plain_cifar_resnet20", "none")):
            table[f"{alias}{tail}"] = ("resnet20", {"norm": norm, "width": 16 * m})
    return table


#: ``{alias: (registered name, fixed arguments)}`` of the Rethink Re-Basin model names.
REBASIN_ALIASES: dict[str, tuple[str, dict[str, Any]]] = _rethink_aliases()

for _alias, (_target, _fixed) in REBASIN_ALIASES.items():
    register_alias(_alias, _target, **_fixed)
