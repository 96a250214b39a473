"""Permutation specs: which axes of which tensors share which hidden-unit permutation.

A :class:`PermutationSpec` is the contract between the tracer that derives it
(:func:`zooscape.align.permutation_spec`) and everything that permutes or matches models
(:func:`~zooscape.align.apply_permutation`, weight and activation matching, merging).

Conventions
-----------
* A *group* is a set of hidden units that must be permuted together, e.g. the output channels of
  ``conv1``, the input channels of ``conv2`` and the statistics of the BatchNorm in between.  A
  residual stream is one group.  Groups are named after the first layer that produces them.
* Every ``state_dict`` key with at least one permuted axis has an entry in :attr:`PermutationSpec.axes`:
  one :class:`AxisPerm` (or ``None``) per tensor axis.  An axis of length ``outer * n * inner`` whose
  group has ``n`` units is permuted in blocks: index ``(a, c, b)`` (row-major) moves with unit ``c``.
  ``inner > 1`` arises when a ``[B, C, H, W]`` feature map is flattened into a Linear layer
  (``inner = H * W``).
* Every other key is listed in :attr:`PermutationSpec.unpermuted` with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["ActivationPoint", "AxisPerm", "PermutationSpec", "expand_index"]


@dataclass(frozen=True)
class AxisPerm:
    """How one tensor axis follows a permutation group.

    Args:
        group: name of the permutation group.
        inner: block size; the axis has length ``outer * n * inner`` for a group of ``n`` units.
    """

    group: str
    inner: int = 1


@dataclass(frozen=True)
class ActivationPoint:
    """A traced tensor whose ``dim`` carries the units of a group (used by activation matching).

    Args:
        node: name of the torch.fx node (the input of a layer that consumes the group).
        dim: the permuted dimension of that tensor.
        inner: block size along ``dim`` (see :class:`AxisPerm`).
    """

    node: str
    dim: int
    inner: int = 1


@dataclass(frozen=True)
class PermutationSpec:
    """Which ``state_dict`` axes follow which permutation group.

    Args:
        group_sizes: group name -> number of units ``n``.
        axes: state_dict key -> per-axis :class:`AxisPerm` or ``None`` (keys with >= 1 permuted axis).
        shapes: every state_dict key -> its shape (used to validate models against the spec).
        unpermuted: state_dict key -> why no axis of it is permuted.
        frozen_groups: name -> reason, for groups found in the graph but fixed to the identity.
        activation_points: group name -> traced tensors carrying its units.

    References:
        Ainsworth, Hayase & Srinivasa (2023), "Git Re-Basin" (PermutationSpec).
    """

    group_sizes: Mapping[str, int]
    axes: Mapping[str, tuple[AxisPerm | None, ...]]
    shapes: Mapping[str, tuple[int, ...]]
    unpermuted: Mapping[str, str] = field(default_factory=dict)
    frozen_groups: Mapping[str, str] = field(default_factory=dict)
    activation_points: Mapping[str, tuple[ActivationPoint, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, spec_axes in self.axes.items():
            if key not in self.shapes:
                raise ValueError(f"axes key {key!r} has no entry in shapes")
            shape = self.shapes[key]
            if len(spec_axes) != len(shape):
                raise ValueError(f"axes[{key!r}] has {len(spec_axes)} entries for a tensor of shape {shape}")
            for axis, ap in enumerate(spec_axes):
                if ap is None:
                    continue
                if ap.group not in self.group_sizes:
                    raise ValueError(f"axes[{key!r}][{axis}] names unknown group {ap.group!r}")
                block = self.group_sizes[ap.group] * ap.inner
                if shape[axis] % block:
                    raise ValueError(
                        f"axes[{key!r}][{axis}]: length {shape[axis]} is not a multiple of "
                        f"group {ap.group!r} size {self.group_sizes[ap.group]} x inner {ap.inner}"
                    )

    def group_axes(self) -> dict[str, list[tuple[str, int, int]]]:
        """Invert :attr:`axes`: group -> list of ``(state_dict key, axis, inner)``.

        Returns:
            dict keyed by every group name (insertion order of :attr:`group_sizes`).
        """
        out: dict[str, list[tuple[str, int, int]]] = {g: [] for g in self.group_sizes}
        for key, spec_axes in self.axes.items():
            for axis, ap in enumerate(spec_axes):
                if ap is not None:
                    out[ap.group].append((key, axis, ap.inner))
        return out

    def check_state_dict(self, state_dict: Mapping[str, torch.Tensor], name: str = "model") -> None:
        """Raise ``ValueError`` unless ``state_dict`` has exactly this spec's keys and shapes.

        Args:
            state_dict: mapping key -> tensor.
            name: how to call the model in the error message.
        """
        missing = [k for k in self.shapes if k not in state_dict]
        extra = [k for k in state_dict if k not in self.shapes]
        if missing or extra:
            raise ValueError(f"{name} does not match the spec: missing keys {missing[:5]}, unexpected keys {extra[:5]}")
        for key, shape in self.shapes.items():
            if tuple(state_dict[key].shape) != tuple(shape):
                raise ValueError(
                    f"{name}: state_dict[{key!r}] has shape {tuple(state_dict[key].shape)}, spec expects {tuple(shape)}"
                )

    def report(self) -> str:
        """A human-readable table of the groups and of every unpermuted tensor with its reason.

        Returns:
            multi-line string.
        """
        lines = [f"PermutationSpec: {len(self.group_sizes)} groups"]
        for g, members in self.group_axes().items():
            where = ", ".join(f"{k}[{a}]" + (f"/{i}" if i > 1 else "") for k, a, i in members)
            lines.append(f"  {g} (n={self.group_sizes[g]}): {where}")
        if self.frozen_groups:
            lines.append("frozen groups (kept as identity):")
            lines += [f"  {g}: {r}" for g, r in self.frozen_groups.items()]
        if self.unpermuted:
            lines.append("unpermuted tensors:")
            lines += [f"  {k}: {r}" for k, r in self.unpermuted.items()]
        return "\n".join(lines)


def expand_index(perm: torch.Tensor, length: int, inner: int) -> torch.Tensor:
    """Expand a unit permutation to an index over an axis of ``outer * n * inner`` entries.

    Args:
        perm: ``[n]`` int64 permutation of the group's units.
        length: length of the axis (``outer * n * inner``).
        inner: block size.

    Returns:
        ``[length]`` int64 index ``idx`` with ``idx[(a*n + c)*inner + b] = (a*n + perm[c])*inner + b``.
    """
    n = perm.numel()
    if length == n and inner == 1:
        return perm
    if length % (n * inner):
        raise ValueError(f"axis length {length} is not a multiple of n={n} x inner={inner}")
    outer = length // (n * inner)
    a = torch.arange(outer, device=perm.device).view(outer, 1, 1) * (n * inner)
    b = torch.arange(inner, device=perm.device).view(1, 1, inner)
    return (a + perm.view(1, n, 1) * inner + b).reshape(-1)
