"""Builders: turn the sections of a model config into library objects (data, model, TrainConfig, Member).

These are the only places where the zoo layer calls ``zooscape.data``, ``zooscape.models`` and
``zooscape.train``, so the zoo runner, the reader and validation build everything the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from torch import nn

from zooscape.zoo.grid import canonical_json

__all__ = [
    "build_meta_model",
    "check_fits",
    "data_model_args",
    "build_member",
    "build_model",
    "build_train_config",
    "count_parameters",
    "load_data",
]

_DATA_CACHE: OrderedDict[str, Any] = OrderedDict()
_DATA_CACHE_SIZE = 2


def load_data(dataset: Mapping[str, Any], cache: bool = True) -> Any:
    """Load the data set of a ``[dataset]`` section (small per-process cache of the last two).

    Args:
        dataset: section with ``name`` and the options of ``zooscape.data.load_dataset``.
        cache: reuse a previously loaded identical data set.

    Returns:
        DataSplits.
    """
    from zooscape.data import load_dataset

    key = canonical_json(dict(dataset))
    if cache and key in _DATA_CACHE:
        _DATA_CACHE.move_to_end(key)
        return _DATA_CACHE[key]
    options = {k: v for k, v in dataset.items() if k != "name"}
    data = load_dataset(dataset["name"], **options)
    if cache:
        _DATA_CACHE[key] = data
        while len(_DATA_CACHE) > _DATA_CACHE_SIZE:
            _DATA_CACHE.popitem(last=False)
    return data


def data_model_args(data: Any) -> dict[str, Any]:
    """``create_model`` arguments implied by a data set: ``num_classes``, ``in_channels``, ``input_size``.

    Args:
        data: DataSplits (uses ``num_outputs`` and ``input_shape``).

    Returns:
        dict; ``in_channels`` only for image inputs ``(C, H, W)``; ``input_size`` is ``list(input_shape)``.
    """
    shape = [int(s) for s in data.input_shape]
    args: dict[str, Any] = {"num_classes": int(data.num_outputs), "input_size": shape}
    if len(shape) == 3:
        args["in_channels"] = shape[0]
    return args


def build_model(model: Mapping[str, Any], seed: int, model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """Create the model of a ``[model]`` section: ``create_model(name, seed=seed, **model_args, **kwargs)``.

    Args:
        model: section with ``name``, optional ``init`` and the other keyword arguments of ``create_model``.
        seed: initialisation seed (``training.seed``).
        model_args: data-dependent arguments (see :func:`data_model_args`); the section's own values win.

    Returns:
        nn.Module.
    """
    from zooscape.models import create_model

    kwargs = {**(model_args or {}), **{k: v for k, v in model.items() if k != "name"}}
    return create_model(model["name"], seed=int(seed), **kwargs)


def _first_layer(model: nn.Module) -> str | None:
    for name, mod in model.named_modules():
        for attr in ("in_features", "in_channels"):
            if isinstance(getattr(mod, attr, None), int):
                return f"its first layer {name or type(mod).__name__} ({type(mod).__name__}) takes {attr} = " \
                       f"{getattr(mod, attr)}"
    return None


def check_fits(model: nn.Module, data: Any, n: int = 2) -> None:
    """Check that a model maps ``n`` training samples of a data set to ``[n, num_outputs]`` (before training).

    Args:
        model: the model (run in eval mode, then restored to its previous mode).
        data: DataSplits (``train_x`` ``[N, ...]``, ``num_outputs``), or a tuple ``(sample, num_outputs)``.
        n: number of samples to try.

    Raises:
        ValueError: the model rejects the inputs or gives another output shape; the message names the input
            shape, what the model's first layer takes and the output shape needed.
    """
    import torch

    sample, num_outputs = data if isinstance(data, tuple) else (data.train_x[:n], int(data.num_outputs))
    need = (int(sample.shape[0]), int(num_outputs))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample.to(next(model.parameters()).device) if any(True for _ in model.parameters())
                        else sample)
    except Exception as exc:
        layer = _first_layer(model)
        raise ValueError(f"the model does not fit the data: inputs of shape {tuple(sample.shape)}"
                         + (f", but {layer}" if layer else "") + f" ({type(exc).__name__}: {exc})") from None
    finally:
        model.train(was_training)
    if tuple(out.shape) != need:
        raise ValueError(f"the model maps inputs {tuple(sample.shape)} to {tuple(out.shape)}, the data set needs "
                         f"{need}")


def build_meta_model(model: Mapping[str, Any], model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """The model of a ``[model]`` section on the ``meta`` device: shapes and names only, no memory allocated
    (for checks of untrusted configs and size estimates; ``init`` is ignored).

    Args:
        model: section with ``name`` and the keyword arguments of ``create_model``.
        model_args: data-dependent arguments (the section's own values win).

    Returns:
        nn.Module whose parameters and buffers live on ``meta``.
    """
    import torch

    from zooscape.models import create_model

    kwargs = {**(model_args or {}), **{k: v for k, v in model.items() if k not in ("name", "init")}}
    with torch.device("meta"):
        return create_model(model["name"], **kwargs)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable-or-not parameters (buffers excluded).

    Args:
        module: the model.

    Returns:
        int.
    """
    return sum(p.numel() for p in module.parameters())


@functools.cache
def _tuple_fields() -> frozenset[str]:
    """TrainConfig fields typed as tuples (the type hints are evaluated once per process)."""
    from zooscape.train import TrainConfig

    try:
        hints = typing.get_type_hints(TrainConfig)
    except Exception:
        hints = {}
    out = set()
    for f in dataclasses.fields(TrainConfig):
        ann = hints.get(f.name)
        if isinstance(f.default, tuple) or typing.get_origin(ann) is tuple:
            out.add(f.name)
    return frozenset(out)


def build_train_config(training: Mapping[str, Any]) -> Any:
    """Create the ``TrainConfig`` of a ``[training]`` section (``seed``/``data_seed`` are member-level).

    Args:
        training: section (TrainConfig fields plus seed/data_seed).

    Returns:
        TrainConfig.
    """
    from zooscape.train import Member, TrainConfig

    config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    member_only = {k for k in Member.keys() if k not in config_fields}  # seed, data_seed
    tuples = _tuple_fields()
    kwargs = {}
    for k, v in training.items():
        if k in member_only:
            continue
        kwargs[k] = tuple(v) if k in tuples and isinstance(v, list) else v
    return TrainConfig(**kwargs)


def build_member(training: Mapping[str, Any]) -> Any:
    """Create the ``Member`` of a model from its ``[training]`` section.

    Args:
        training: section; ``seed`` (default 0), ``data_seed``, ``lr``, ``weight_decay``, ``momentum``.

    Returns:
        Member with the per-model values set (None where the section does not set them).
    """
    from zooscape.train import Member

    values = {k: training[k] for k in Member.keys() if k in training}
    values["seed"] = int(values.get("seed", 0))
    return Member(**values)
