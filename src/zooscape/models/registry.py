"""Model registry: ``register_model`` / ``create_model`` / ``list_models`` (timm style).

Each family module registers its variants with ``@register_model("name")``. A registered builder is a function
with the keyword-only common arguments ``num_classes, in_channels, input_size, activation, dropout`` plus any
family keyword arguments with defaults; ``create_model`` validates names and arguments, builds the model
(deterministically when ``seed`` is given, without touching the global RNG), applies ``init`` and records the
full construction config in ``model.zoo_config`` so that ``create_model(**model.zoo_config)`` rebuilds it.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import json
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zooscape.models.activations import ACTIVATIONS
from zooscape.models.initialization import check_init, init_weights
from zooscape.models.shapes import normalize_input_size

COMMON_ARGS: tuple[str, ...] = ("num_classes", "in_channels", "input_size", "activation", "dropout")
"""Arguments every registered builder takes (keyword-only); ``init`` and ``seed`` are handled here."""

_RESERVED = ("name", "init", "seed", "device")


@dataclass(frozen=True)
class ModelEntry:
    """One registered model variant.

    Args:
        name: registry name.
        builder: function building the module from the common and family keyword arguments.
        init_bias: bias constant used by ``create_model(..., init=scheme)`` for non-default schemes.
        family_kwargs: names of the builder's family-specific keyword arguments.
    """

    name: str
    builder: Callable[..., nn.Module]
    init_bias: float
    family_kwargs: tuple[str, ...]
    alias_of: str | None = None
    fixed: tuple[tuple[str, Any], ...] = ()


_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {}


def register_alias(alias: str, target: str, **fixed: Any) -> None:
    """Register ``alias`` as another name of ``target`` with some family arguments fixed.

    ``create_model(alias, **kw)`` builds ``create_model(target, **fixed, **kw)`` and records the *target* name
    and the fixed arguments in ``model.zoo_config`` (so configs are canonical). Aliases are accepted wherever a
    model name is (specs, ``get_model_entry``) but listed only by ``list_models(..., aliases=True)`` and
    :func:`list_aliases`.

    Args:
        alias: the other name (e.g. the Rethink Re-Basin code's ``"cifar_vgg16_bn_4x"``).
        target: a registered model name.
        **fixed: family arguments the alias fixes (e.g. ``width=4.0``).
    """
    if alias in _REGISTRY or alias in _ALIASES:
        raise ValueError(f"model name {alias!r} is already registered")
    entry = get_model_entry(target)
    unknown = sorted(set(fixed) - set(entry.family_kwargs))
    if unknown:
        raise ValueError(f"alias {alias!r} fixes {unknown}, which are not family arguments of {target!r}")
    _ALIASES[alias] = (target, dict(fixed))


def list_aliases(pattern: str = "*") -> dict[str, tuple[str, dict[str, Any]]]:
    """Registered aliases matching a pattern: ``{alias: (target, fixed arguments)}``, sorted by alias.

    Args:
        pattern: ``fnmatch`` pattern.

    Returns:
        dict.
    """
    return {a: (t, dict(f)) for a, (t, f) in sorted(_ALIASES.items()) if fnmatch.fnmatchcase(a, pattern)}


def register_model(name: str, *, init_bias: float = 0.0) -> Callable[[Callable[..., nn.Module]], Callable]:
    """Decorator registering a model builder under ``name``.

    Args:
        name: unique registry name (e.g. ``"resnet18"``).
        init_bias: constant that Linear/Conv biases get when ``create_model`` applies a named ``init`` scheme
            (0.0; the Model Zoos families use 0.01 as their reference does).

    Returns:
        A decorator that registers the builder and returns it unchanged.
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"model name must be a non-empty string without surrounding spaces, got {name!r}")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        params = inspect.signature(builder).parameters
        missing = [a for a in COMMON_ARGS if a not in params]
        if missing:
            raise ValueError(f"builder for model {name!r} lacks the common argument(s) {missing}")
        family = []
        for p in params.values():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.kind == p.POSITIONAL_ONLY:
                raise ValueError(f"builder for model {name!r} must take named keyword arguments only ({p})")
            if p.name in _RESERVED:
                raise ValueError(f"builder for model {name!r} uses the reserved argument name {p.name!r}")
            if p.name not in COMMON_ARGS:
                if p.default is p.empty:
                    raise ValueError(f"family argument {p.name!r} of model {name!r} needs a default")
                family.append(p.name)
        _REGISTRY[name] = ModelEntry(name, builder, float(init_bias), tuple(family))
        return builder

    return decorator


def list_models(pattern: str = "*", aliases: bool = False) -> list[str]:
    """Registered model names matching a shell-style pattern, sorted.

    Args:
        pattern: ``fnmatch`` pattern (e.g. ``"vgg*_bn"``).
        aliases: also list the aliases (:func:`register_alias`).

    Returns:
        Sorted list of names.
    """
    if not isinstance(pattern, str):
        raise ValueError(f"pattern must be a string, got {pattern!r}")
    names = list(_REGISTRY) + (list(_ALIASES) if aliases else [])
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def get_model_entry(name: str) -> ModelEntry:
    """Registry entry of ``name``.

    Args:
        name: registered model name or alias (an alias's entry has ``alias_of`` and ``fixed`` set and lacks the
            fixed arguments in ``family_kwargs``).

    Returns:
        The :class:`ModelEntry`.
    """
    if isinstance(name, str) and name in _ALIASES:
        target, fixed = _ALIASES[name]
        base = _REGISTRY[target]
        return ModelEntry(name, base.builder, base.init_bias,
                          tuple(k for k in base.family_kwargs if k not in fixed), target, tuple(fixed.items()))
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY) + list(_ALIASES), n=3)
        hint = f" (did you mean {close}?)" if close else ""
        raise ValueError(f"unknown model name {name!r}{hint}; valid choices: {list_models()}")
    return _REGISTRY[name]


def _check_common(num_classes: Any, in_channels: Any, activation: Any, dropout: Any, seed: Any) -> None:
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid choices: {list(ACTIVATIONS)}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63
    ):
        raise ValueError(f"seed must be None or an integer in [0, 2**63), got {seed!r}")


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int | Sequence[int] | None = None,
    activation: str = "relu",
    init: str | None = None,
    dropout: float = 0.0,
    seed: int | None = None,
    device: torch.device | str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model.

    With ``seed`` the model is built on the CPU under ``torch.random.fork_rng`` with the CPU generator seeded
    from ``seed`` (the global RNG state is restored afterwards), then ``init`` draws from a fresh
    ``torch.Generator`` seeded with ``seed``: the same (name, arguments, seed) give bitwise identical weights
    on every device. Without ``seed`` the global RNG is used as PyTorch does.

    Args:
        name: registered model name (see :func:`list_models`) or alias (see :func:`list_aliases`).
        num_classes: output size (logits ``[B, num_classes]``).
        in_channels: input channels C of ``[B, C, H, W]`` inputs.
        input_size: ``S``, ``(H, W)``, ``(C, H, W)`` or, for ``mlp``, the flat size ``D``; None -> the family
            default (see each family).
        activation: one of ``relu, leakyrelu, tanh, sigmoid, gelu, silu``.
        init: None/``"default"`` (PyTorch default) or a scheme of :func:`init_weights`.
        dropout: dropout probability in [0, 1); families without dropout in their reference reject > 0.
        seed: makes construction and init deterministic without touching the global RNG.
        device: device to move the finished model to (weights are always drawn on the CPU).
        **kwargs: family arguments (e.g. ``width``, ``depth``, ``norm``); unknown names raise ``ValueError``.

    Returns:
        The module, with ``model.zoo_config`` = ``{"name": name, <all resolved arguments>, "init", "seed"}``
        (JSON-serialisable).

    References:
        Registry design after timm (Wightman, 2019).
    """
    entry = get_model_entry(name)
    if entry.alias_of is not None:
        clash = sorted(set(kwargs) & {k for k, _ in entry.fixed})
        if clash:
            raise ValueError(f"model {name!r} is an alias of {entry.alias_of!r} that fixes {clash}; "
                             f"use {entry.alias_of!r} to set them")
        name, kwargs = entry.alias_of, {**dict(entry.fixed), **kwargs}
        entry = get_model_entry(name)
    _check_common(num_classes, in_channels, activation, dropout, seed)
    init_name = check_init(init)
    unknown = sorted(set(kwargs) - set(entry.family_kwargs))
    if unknown:
        raise ValueError(
            f"unknown keyword argument(s) {unknown} for model {name!r}; valid family arguments: "
            f"{list(entry.family_kwargs)} (common: {list(COMMON_ARGS) + ['init', 'seed', 'device']})"
        )
    args = {
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
        "input_size": normalize_input_size(input_size),
        "activation": activation,
        "dropout": float(dropout),
        **kwargs,
    }
    bound = inspect.signature(entry.builder).bind(**args)
    bound.apply_defaults()
    config = {
        "name": name,
        **bound.arguments,
        "init": None if init_name == "default" else init_name,
        "seed": None if seed is None else int(seed),
    }
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"arguments of model {name!r} must be JSON-serialisable: {config!r} ({err})"
        ) from None

    if seed is None:
        model = entry.builder(**bound.arguments)
        if init_name != "default":
            init_weights(model, init_name, None, bias=entry.init_bias)
    else:
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            torch.default_generator.manual_seed(int(seed))
            model = entry.builder(**bound.arguments)
        if init_name != "default":
            generator = torch.Generator().manual_seed(int(seed))
            init_weights(model, init_name, generator, bias=entry.init_bias)
    model.zoo_config = config
    if device is not None:
        model.to(device)
    return model


def reject_dropout(model: str, dropout: float) -> None:
    """Raise ``ValueError`` if ``dropout > 0`` for a family whose reference architecture has no dropout.

    Args:
        model: model name for the message.
        dropout: requested probability.
    """
    if dropout > 0:
        raise ValueError(
            f"dropout={dropout} is not supported by model {model!r} (its reference has no dropout)"
        )
