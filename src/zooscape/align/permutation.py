"""Permutations of hidden units and their application to models and state dicts.

Convention: applying a permutation ``p`` of a group makes *new unit i = old unit p[i]*; so
``apply_permutation(apply_permutation(m, p), q) == apply_permutation(m, p.then(q))`` with
``p.then(q)[g] = p[g][q[g]]``.  Matching ``model_b`` to ``model_a`` returns the ``p`` for which
``apply_permutation(model_b, p)`` resembles ``model_a``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .spec import PermutationSpec, expand_index

__all__ = ["AlignResult", "Permutation", "apply_permutation", "permute_state_dict"]


class Permutation(Mapping[str, torch.Tensor]):
    """One permutation per group of a :class:`PermutationSpec` (a read-only mapping group -> ``[n]`` int64).

    Args:
        spec: the spec whose groups are permuted.
        indices: group name -> permutation of ``range(n)`` (tensor, array or list); missing groups
            default to the identity.
    """

    def __init__(self, spec: PermutationSpec, indices: Mapping[str, object] | None = None) -> None:
        indices = dict(indices or {})
        unknown = [g for g in indices if g not in spec.group_sizes]
        if unknown:
            raise KeyError(f"permutation names groups {unknown} that the spec does not have")
        self._spec = spec
        self._perm: dict[str, torch.Tensor] = {}
        for g, n in spec.group_sizes.items():
            p = torch.as_tensor(indices[g], dtype=torch.long).cpu() if g in indices else torch.arange(n)
            if p.shape != (n,) or not torch.equal(torch.sort(p).values, torch.arange(n)):
                raise ValueError(f"indices[{g!r}] is not a permutation of range({n})")
            self._perm[g] = p

    @property
    def spec(self) -> PermutationSpec:
        """The spec this permutation belongs to."""
        return self._spec

    def __getitem__(self, group: str) -> torch.Tensor:
        return self._perm[group]

    def __iter__(self) -> Iterator[str]:
        return iter(self._perm)

    def __len__(self) -> int:
        return len(self._perm)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return set(self) == set(other) and all(torch.equal(self[g], torch.as_tensor(other[g])) for g in self)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        moved = sum(int((p != torch.arange(p.numel())).sum()) for p in self._perm.values())
        return f"Permutation({len(self)} groups, {moved} units moved)"

    @classmethod
    def identity(cls, spec: PermutationSpec) -> Permutation:
        """The identity permutation of every group of ``spec``.

        Args:
            spec: the spec.

        Returns:
            :class:`Permutation` with ``p[g] = arange(n)`` for every group.
        """
        return cls(spec)

    @classmethod
    def random(cls, spec: PermutationSpec, generator: torch.Generator | None = None) -> Permutation:
        """A uniformly random permutation of every group.

        Args:
            spec: the spec.
            generator: CPU ``torch.Generator`` (the global RNG is used when None).

        Returns:
            :class:`Permutation`.
        """
        return cls(spec, {g: torch.randperm(n, generator=generator) for g, n in spec.group_sizes.items()})

    def inverse(self) -> Permutation:
        """The permutation that undoes this one: ``p.then(p.inverse())`` is the identity.

        Returns:
            :class:`Permutation` with ``inv[g][p[g]] = arange(n)``.
        """
        return Permutation(self._spec, {g: torch.argsort(p) for g, p in self._perm.items()})

    def then(self, other: Mapping[str, torch.Tensor]) -> Permutation:
        """Apply this permutation, then ``other``: result ``[g] = self[g][other[g]]``.

        Args:
            other: mapping group -> ``[n]`` permutation (same groups).

        Returns:
            :class:`Permutation` ``r`` with ``apply(apply(m, self), other) == apply(m, r)``.
        """
        return Permutation(self._spec, {g: p[torch.as_tensor(other[g])] for g, p in self._perm.items()})

    def is_identity(self) -> bool:
        """Whether every group is the identity.

        Returns:
            bool.
        """
        return all(torch.equal(p, torch.arange(p.numel())) for p in self._perm.values())


def permute_state_dict(
    state_dict: Mapping[str, torch.Tensor], perm: Mapping[str, torch.Tensor], spec: PermutationSpec
) -> dict[str, torch.Tensor]:
    """Permute every spec'd axis of every tensor in a state dict (parameters *and* buffers).

    Args:
        state_dict: key -> tensor, keys and shapes as in ``spec.shapes``.
        perm: group -> ``[n]`` permutation.
        spec: the permutation spec.

    Returns:
        a new dict (tensors not in ``spec.axes`` are shared, not copied).
    """
    spec.check_state_dict(state_dict, "state_dict")
    missing = [g for g in spec.group_sizes if g not in perm]
    if missing:
        raise KeyError(f"perm has no entry for groups {missing}")
    out = dict(state_dict)
    for key, spec_axes in spec.axes.items():
        t = state_dict[key]
        for axis, ap in enumerate(spec_axes):
            if ap is None:
                continue
            p = torch.as_tensor(perm[ap.group], device=t.device)
            t = t.index_select(axis, expand_index(p, t.shape[axis], ap.inner))
        out[key] = t
    return out


def apply_permutation(model: nn.Module, perm: Permutation, spec: PermutationSpec | None = None) -> nn.Module:
    """Return a copy of ``model`` with its hidden units permuted; it computes the same function.

    Parameters and buffers (BatchNorm running statistics included) are permuted along every axis the spec
    lists.  The input model is not modified.

    Args:
        model: model matching ``spec``.
        perm: a :class:`Permutation` (or a mapping group -> ``[n]`` tensor together with ``spec``).
        spec: needed only when ``perm`` is a plain mapping.

    Returns:
        a deep copy of ``model`` of the same class with permuted tensors.

    References:
        Ainsworth, Hayase & Srinivasa (2023), "Git Re-Basin".
    """
    if spec is None:
        if not isinstance(perm, Permutation):
            raise ValueError("spec is required when perm is not a Permutation")
        spec = perm.spec
    state = permute_state_dict(model.state_dict(), perm, spec)
    # deep-copy the module tree but hand it the permuted tensors directly (no second copy of the weights)
    memo: dict[int, object] = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    ):
        if name in state and id(t) not in memo:
            new_t = state[name] if name in spec.axes else t.detach().clone()
            memo[id(t)] = nn.Parameter(new_t, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) \
                else new_t
    return copy.deepcopy(model, memo)


@dataclass
class AlignResult:
    """Result of aligning ``model_b`` to ``model_a``.

    Attributes:
        perm: the :class:`Permutation` with ``apply_permutation(model_b, perm) ~ model_a``.
        model: ``model_b`` with ``perm`` applied (a new model of the same class).
        iterations: coordinate-descent sweeps (weight matching) or 1 (activation matching).
        objective: final matching objective (sum of inner products, or of correlations).
        info: extra diagnostics.
    """

    perm: Permutation
    model: nn.Module
    iterations: int = 1
    objective: float = float("nan")
    info: dict = field(default_factory=dict)
