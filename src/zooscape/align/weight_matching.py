"""Weight matching: coordinate descent over permutation groups with linear assignment (Git Re-Basin)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from .permutation import AlignResult, Permutation, apply_permutation
from .spec import PermutationSpec, expand_index
from .trace import permutation_spec

__all__ = ["weight_matching", "weight_matching_state_dicts", "infer_example_input", "resolve_spec"]


def infer_example_input(model: nn.Module) -> torch.Tensor:
    """Guess a small input accepted by ``model`` from its first Linear / Conv / Embedding layer.

    Linear -> ``[2, in_features]``; ConvNd -> ``[2, in_channels, s, ...]`` for the first spatial size ``s``
    in (8, 28, 32, 16, 64, 224, 4) that runs through the model; Embedding -> ``[2, 4]`` indices.  Any input
    that runs yields the same spec (only the flatten block sizes depend on it, and those are fixed by the
    Linear layer after the flatten).

    Args:
        model: the model.

    Returns:
        an input tensor on the device/dtype of the model's first parameter.
    """
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                                                nn.Embedding))), None)
    param = next(model.parameters(), None)
    if first is None or param is None:
        raise ValueError(f"cannot infer an example input for {type(model).__name__}; pass example_input")
    kw = {"device": param.device, "dtype": param.dtype}
    if isinstance(first, nn.Embedding):
        return torch.zeros(2, 4, dtype=torch.long, device=param.device)
    if isinstance(first, nn.Linear):
        candidates = [torch.zeros(2, first.in_features, **kw)]
    else:
        nsp = first.weight.ndim - 2
        candidates = [torch.zeros(2, first.in_channels, *([s] * nsp), **kw) for s in (8, 28, 32, 16, 64, 224, 4)]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for x in candidates:
            try:
                with torch.no_grad():
                    model(x)
                return x
            except Exception:  # noqa: BLE001 - try the next size
                continue
    finally:
        for m, mode in modes.items():
            m.training = mode
    raise ValueError(f"cannot infer an example input for {type(model).__name__}; pass example_input")


def resolve_spec(model: nn.Module, spec: PermutationSpec | None,
                 example_input: torch.Tensor | None = None) -> PermutationSpec:
    """Return ``spec`` or derive it with :func:`permutation_spec` (inferring the input when needed).

    Args:
        model: the model the spec describes.
        spec: an existing spec (returned unchanged) or None.
        example_input: input ``[B, ...]`` for tracing; inferred by :func:`infer_example_input` when None.

    Returns:
        :class:`PermutationSpec`.
    """
    if spec is not None:
        if not isinstance(spec, PermutationSpec):
            raise ValueError(f"spec must be a PermutationSpec, got {type(spec).__name__}")
        return spec
    if example_input is None:
        example_input = infer_example_input(model)
    return permutation_spec(model, example_input)


def _unit_major(t: torch.Tensor, axis: int, n: int, inner: int) -> torch.Tensor:
    """View axis ``axis`` (length outer*n*inner) as units: returns ``[n, rest]``."""
    shape = t.shape
    outer = shape[axis] // (n * inner)
    t = t.reshape(*shape[:axis], outer, n, inner, *shape[axis + 1:])
    return t.movedim(axis + 1, 0).reshape(n, -1)


class _Problem:
    """Cost matrices of every group, built chunk-wise and cached.

    The entries (tensor, axis) of a group are split into *chunks* by the set of other groups that also
    permute the tensor (e.g. ``{}`` for biases and BatchNorm vectors, ``{"fc1"}`` for ``fc2.weight``'s
    output axis).  Model A's side of a chunk is one precomputed ``[n, total]`` matrix; the chunk's
    contribution ``A_chunk @ B_chunk^T`` is recomputed only when one of its other groups changed.
    """

    def __init__(self, spec: PermutationSpec, sd_a: Mapping[str, torch.Tensor], sd_b: Mapping[str, torch.Tensor],
                 dtype: torch.dtype) -> None:
        self.spec = spec
        self.groups = list(spec.group_sizes)
        # blocks are gathered in the models' own dtype and converted once per chunk
        self.dtype = dtype
        device = next(iter(sd_b.values())).device
        self.sd_a = {k: sd_a[k].detach().to(device) for k in spec.axes}
        self.sd_b = {k: sd_b[k].detach() for k in spec.axes}
        self.chunks: dict[str, dict[tuple[str, ...], list[tuple[str, int, int]]]] = {}
        self.a_chunk: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}
        for g, entries in spec.group_axes().items():
            n = spec.group_sizes[g]
            by_sig: dict[tuple[str, ...], list[tuple[str, int, int]]] = {}
            for key, axis, inner in entries:
                sig = tuple(sorted({ap.group for ax, ap in enumerate(spec.axes[key]) if ap is not None and ax != axis}))
                by_sig.setdefault(sig, []).append((key, axis, inner))
            self.chunks[g] = by_sig
            for sig, members in by_sig.items():
                blocks = [_unit_major(self.sd_a[k], ax, n, inner) for k, ax, inner in members]
                self.a_chunk[(g, sig)] = torch.cat(blocks, dim=1).to(dtype)
        self.neighbours = {g: tuple(sorted({h for sig in self.chunks[g] for h in sig})) for g in self.groups}
        self.cache: dict[tuple[str, tuple[str, ...]], tuple[tuple[int, ...], torch.Tensor]] = {}

    def _b_block(self, key: str, axis: int, inner: int, n: int, perm: Mapping[str, torch.Tensor]) -> torch.Tensor:
        spec_axes = self.spec.axes[key]
        t = self.sd_b[key]
        for ax, ap in enumerate(spec_axes):
            if ap is not None and ax != axis:
                t = t.index_select(ax, expand_index(perm[ap.group], t.shape[ax], ap.inner))
        return _unit_major(t, axis, n, inner)

    def objective(self, perm: Mapping[str, torch.Tensor]) -> float:
        """``sum_k <A_k, perm(B_k)>`` over every spec'd tensor."""
        total = 0.0
        for key, spec_axes in self.spec.axes.items():
            t = self.sd_b[key]
            for ax, ap in enumerate(spec_axes):
                if ap is not None:
                    t = t.index_select(ax, expand_index(perm[ap.group], t.shape[ax], ap.inner))
            total += float((self.sd_a[key].to(self.dtype) * t.to(self.dtype)).sum())
        return total

    def cost(self, g: str, perm: Mapping[str, torch.Tensor], version: Mapping[str, int]) -> torch.Tensor:
        """``[n, n]`` matrix ``C[i, j] = <A unit i, B unit j>`` with all other groups of B permuted."""
        n = self.spec.group_sizes[g]
        total = None
        for sig, members in self.chunks[g].items():
            stamp = tuple(version[h] for h in sig)
            hit = self.cache.get((g, sig))
            if hit is None or hit[0] != stamp:
                b = torch.cat([self._b_block(k, ax, inner, n, perm) for k, ax, inner in members], dim=1).to(self.dtype)
                hit = (stamp, self.a_chunk[(g, sig)] @ b.T)
                self.cache[(g, sig)] = hit
            total = hit[1] if total is None else total + hit[1]
        return total if total is not None else torch.zeros(n, n, dtype=self.dtype)


def weight_matching_state_dicts(
    sd_a: Mapping[str, torch.Tensor],
    sd_b: Mapping[str, torch.Tensor],
    spec: PermutationSpec,
    *,
    max_iter: int = 100,
    seed: int = 0,
    init: Mapping[str, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Permutation, int, float]:
    """Weight matching on state dicts; see :func:`weight_matching`.

    Returns:
        ``(perm, iterations, objective)`` where ``objective = sum_w <W_a, perm(W_b)>``.
    """
    spec.check_state_dict(sd_a, "model_a")
    spec.check_state_dict(sd_b, "model_b")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    device = next(iter(sd_b.values())).device if len(sd_b) else torch.device("cpu")
    prob = _Problem(spec, sd_a, sd_b, dtype)
    start = Permutation(spec, init) if init is not None else Permutation.identity(spec)
    perm = {g: start[g].to(device) for g in spec.group_sizes}
    from scipy.optimize import linear_sum_assignment  # here: importing align (or sparsify) stays scipy-free

    version = dict.fromkeys(spec.group_sizes, 0)
    solved: dict[str, tuple[int, ...]] = {}
    rng = np.random.default_rng(seed)
    iterations = 0
    for _ in range(int(max_iter)):
        iterations += 1
        progress = False
        for gi in rng.permutation(len(prob.groups)):
            g = prob.groups[gi]
            n = spec.group_sizes[g]
            stamp = tuple(version[h] for h in prob.neighbours[g])
            if solved.get(g) == stamp:
                continue  # same cost matrix as at this group's last solve: the LAP would change nothing
            solved[g] = stamp
            cost = prob.cost(g, perm, version)
            cost_np = cost.cpu().numpy()
            rows, cols = linear_sum_assignment(cost_np, maximize=True)
            old = float(cost_np[np.arange(n), perm[g].cpu().numpy()].sum())
            new = float(cost_np[rows, cols].sum())
            if new > old + 1e-12 * max(1.0, abs(old)):
                progress = True
                perm[g] = torch.as_tensor(cols, dtype=torch.long, device=device)
                version[g] += 1
        if not progress:
            break
    final = Permutation(spec, {g: p.cpu() for g, p in perm.items()})
    objective = prob.objective(perm)
    return final, iterations, objective


def weight_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    spec: PermutationSpec | None = None,
    max_iter: int = 100,
    seed: int = 0,
    *,
    example_input: torch.Tensor | None = None,
    init: Mapping[str, torch.Tensor] | None = None,
) -> AlignResult:
    """Permute ``model_b``'s hidden units to maximise ``sum_w <W_a, P(W_b)>`` over all spec'd tensors.

    Coordinate descent: each sweep visits the groups in a random order (seeded) and solves one linear
    assignment problem (scipy ``linear_sum_assignment``) per group with every other group fixed; it stops
    after a sweep without improvement or after ``max_iter`` sweeps.  The cost matrix of a group is one
    matrix product per chunk of tensors that depend on the same other groups (BatchNorm statistics
    included), in float64, recomputed only when those groups changed; a group whose cost matrix did not
    change since its last assignment is skipped (its assignment could not change).  The result is the
    same as the reference algorithm's for the same visiting order.

    Args:
        model_a: reference model.
        model_b: model to permute (same architecture).
        spec: permutation spec; derived with :func:`permutation_spec` when None.
        max_iter: maximum number of sweeps.
        seed: seed of the group visiting order.
        example_input: input used to trace ``model_a`` when ``spec`` is None (inferred when omitted).
        init: starting permutation (identity when None).

    Returns:
        :class:`AlignResult` with ``perm``, ``model`` (= ``apply_permutation(model_b, perm)``), the number of
        sweeps in ``iterations`` and the final objective.

    References:
        Ainsworth, Hayase & Srinivasa (2023), "Git Re-Basin: Merging Models modulo Permutation Symmetries".
    """
    spec = resolve_spec(model_a, spec, example_input)
    perm, iterations, objective = weight_matching_state_dicts(
        model_a.state_dict(), model_b.state_dict(), spec, max_iter=max_iter, seed=seed, init=init
    )
    return AlignResult(perm=perm, model=apply_permutation(model_b, perm), iterations=iterations,
                       objective=objective)
