"""Merging N >= 2 models: alignment to a common basis (MergeMany), weighted averaging, renormalisation."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .activation_matching import activation_matching
from .permutation import Permutation, apply_permutation, permute_state_dict
from .renorm import renormalize
from .spec import PermutationSpec
from .stats import iter_batches, normalize_weights
from .weight_matching import resolve_spec, weight_matching_state_dicts

__all__ = ["MergeResult", "average_state_dicts", "merge"]


def average_state_dicts(
    state_dicts: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Weighted average of state dicts (floating tensors, accumulated in float64; others from the first).

    Args:
        state_dicts: K state dicts with identical keys and shapes.
        weights: K non-negative weights (uniform when None; normalised to sum 1).

    Returns:
        averaged state dict (dtypes and devices of the first).
    """
    if len(state_dicts) < 1:
        raise ValueError("state_dicts must not be empty")
    w = normalize_weights(weights, len(state_dicts)).tolist()
    first = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], 1):
        if set(sd) != set(first):
            raise ValueError(f"state_dicts[{i}] keys differ from state_dicts[0]: {sorted(set(sd) ^ set(first))[:5]}")
    out = {}
    for key, t in first.items():
        if torch.is_floating_point(t) or torch.is_complex(t):
            acc = sum(wk * sd[key].detach().to(t.device, torch.float64) for wk, sd in zip(w, state_dicts))
            out[key] = acc.to(t.dtype)
        else:
            out[key] = t.clone()
    return out


@dataclass
class MergeResult:
    """Result of :func:`merge`.

    Attributes:
        model: the merged model (same class as the inputs).
        models: the inputs after alignment (``apply_permutation(models[i], perms[i])``).
        perms: one :class:`Permutation` per input (None when ``align=None``).
        iterations: MergeMany sweeps (weight alignment), else 1.
        info: diagnostics.
    """

    model: nn.Module
    models: list[nn.Module]
    perms: list[Permutation] | None
    iterations: int = 1
    info: dict = field(default_factory=dict)


def _merge_many(sds, spec, weights, max_iter, seed):
    """MergeMany: repeatedly match each model to the weighted mean of the others, until nothing changes."""
    k = len(sds)
    perms = [Permutation.identity(spec) for _ in range(k)]
    permuted = [dict(sd) for sd in sds]
    rng = np.random.default_rng(seed)
    sweeps = 0
    for _ in range(int(max_iter)):
        sweeps += 1
        progress = False
        for i in rng.permutation(k):
            others = [j for j in range(k) if j != i]
            w_others = [weights[j] for j in others]
            if sum(w_others) <= 0:
                w_others = [1.0] * len(others)
            target = average_state_dicts([permuted[j] for j in others], w_others)
            p, _, _ = weight_matching_state_dicts(target, sds[i], spec, max_iter=max_iter,
                                                  seed=int(rng.integers(2**31)), init=perms[i])
            if p != perms[i]:
                progress = True
                perms[i] = p
                permuted[i] = permute_state_dict(sds[i], p, spec)
        if not progress:
            break
    return perms, sweeps


def merge(
    models: Sequence[nn.Module],
    weights: Sequence[float] | torch.Tensor | None = None,
    align: str | None = "weight",
    *,
    data: Any = None,
    renorm: str | Sequence[str] | None = None,
    spec: PermutationSpec | None = None,
    example_input: torch.Tensor | None = None,
    max_iter: int = 100,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> MergeResult:
    """Merge N >= 2 models of one architecture into one model of the same class.

    ``align="weight"`` runs MergeMany (each model is weight-matched to the weighted mean of the others,
    sweeping in random order until no permutation changes); ``align="activation"`` activation-matches every
    model to ``models[0]`` on ``data``; ``align=None`` averages the weights as they are (plain interpolation:
    ``merge([a, b], [1 - t, t], align=None)`` is the point ``t`` of the linear path).  The aligned models are
    averaged with ``weights`` and, if ``renorm`` is given, renormalised on ``data`` (see
    :func:`~zooscape.align.renorm.renormalize`: ``"reset_bn"``, ``"repair"``, ``"rescale"``, ``"reshift"``
    or a sequence such as ``("reset_bn", "repair")``).

    Args:
        models: N >= 2 models with identical state_dict keys and shapes.
        weights: N non-negative averaging weights (uniform when None).
        align: ``"weight"``, ``"activation"`` or None.
        data: inputs ``[N, ...]`` or iterable of batches (needed by activation alignment and renorm).
        renorm: renormalisation method(s) or None.
        spec: permutation spec (derived from ``models[0]`` when None).
        example_input: input for tracing when ``spec`` is None (inferred, or taken from ``data``).
        max_iter: maximum sweeps of MergeMany and of each weight matching.
        seed: seed of the visiting orders.
        batch_size: chunk size when ``data`` is a tensor.
        device: where to run activation matching / renormalisation.

    Returns:
        :class:`MergeResult`.

    References:
        Ainsworth, Hayase & Srinivasa (2023), "Git Re-Basin" (MergeMany); Jordan et al. (2023), "REPAIR".
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"merge needs at least 2 models, got {len(models)}")
    if align not in ("weight", "activation", None):
        raise ValueError(f"align must be 'weight', 'activation' or None, got {align!r}")
    if (align == "activation" or renorm) and data is None:
        raise ValueError("data is required for align='activation' and for renorm")
    w = normalize_weights(weights, len(models)).tolist()
    sds = [m.state_dict() for m in models]
    for i, sd in enumerate(sds[1:], 1):
        if set(sd) != set(sds[0]) or any(sd[k].shape != sds[0][k].shape for k in sd):
            raise ValueError(f"models[{i}] does not have the architecture of models[0]")
    perms: list[Permutation] | None = None
    iterations = 1
    if align is not None:
        if spec is None and example_input is None and data is not None:
            example_input = next(iter_batches(data, batch_size))[:2]
        spec = resolve_spec(models[0], spec, example_input)
    if align == "weight":
        perms, iterations = _merge_many(sds, spec, w, max_iter, seed)
        aligned = [apply_permutation(m, p) for m, p in zip(models, perms)]
    elif align == "activation":
        perms = [Permutation.identity(spec)]
        aligned = [models[0]]
        for m in models[1:]:
            res = activation_matching(models[0], m, data, spec, batch_size=batch_size, device=device)
            perms.append(res.perm)
            aligned.append(res.model)
    else:
        aligned = models
    merged = copy.deepcopy(models[0])
    merged.load_state_dict(average_state_dicts([m.state_dict() for m in aligned], w))
    if renorm:
        merged = renormalize(merged, data, renorm, endpoints=aligned, weights=w, batch_size=batch_size,
                             device=device)
    return MergeResult(model=merged, models=aligned, perms=perms, iterations=iterations)
