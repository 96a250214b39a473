"""Activation matching: pair hidden units of two models by the correlation of their activations."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from .permutation import AlignResult, Permutation, apply_permutation
from .spec import PermutationSpec
from .stats import CrossStats, iter_batches, model_device, on_device, unit_columns
from .weight_matching import resolve_spec

__all__ = ["activation_matching", "capture_activations"]


class _Capture(fx.Interpreter):
    """Runs a traced model and keeps the outputs of selected nodes."""

    def __init__(self, gm: fx.GraphModule, names: set[str]) -> None:
        super().__init__(gm)
        self.names = names
        self.captured: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.names:
            self.captured[n.name] = out
        return out


def capture_activations(model: nn.Module, x: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``x`` and return the outputs of the named torch.fx nodes.

    Args:
        model: a traceable model, traced and run in its current mode (call ``.eval()`` first for inference).
        x: input batch ``[B, ...]``.
        names: node names, e.g. from ``spec.activation_points``.

    Returns:
        dict node name -> tensor.
    """
    gm = fx.symbolic_trace(model)
    missing = names - {n.name for n in gm.graph.nodes}
    if missing:
        raise KeyError(f"nodes {sorted(missing)} are not in the traced graph of {type(model).__name__}")
    cap = _Capture(gm, names)
    cap.run(x)
    return cap.captured


def activation_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    spec: PermutationSpec | None = None,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    eps: float = 1e-4,
) -> AlignResult:
    """Permute ``model_b``'s units to maximise the correlation of its activations with ``model_a``'s.

    Both models run in eval mode on ``data``; for every group the activations at its activation points
    (the inputs of the layers that consume the group, i.e. post-activations; spatial positions and
    flatten blocks count as samples) are accumulated as streaming float64 moments, and one linear
    assignment on the Pearson correlation matrix gives the permutation.  Groups are independent, so no
    iteration is needed.

    Args:
        model_a: reference model.
        model_b: model to permute (same architecture).
        data: input tensor ``[N, ...]`` or iterable of batches (see :func:`~zooscape.align.stats.iter_batches`).
        spec: permutation spec; derived from ``model_a`` and the first batch when None.
        batch_size: chunk size when ``data`` is a tensor.
        device: where to run the models (the device of ``model_a`` when None).
        eps: added to the product of standard deviations in the correlation.

    Returns:
        :class:`AlignResult` (``objective`` = sum of matched correlations, ``info["correlation"]`` = mean
        matched correlation per group).

    References:
        Ainsworth, Hayase & Srinivasa (2023), "Git Re-Basin"; Jordan et al. (2023), "REPAIR".
    """
    device = torch.device(device) if device is not None else model_device(model_a)
    run_a, run_b = on_device(model_a, device), on_device(model_b, device)
    if spec is None:
        first = next(iter_batches(data, batch_size, device))
        spec = resolve_spec(run_a, None, first[:2])
    spec.check_state_dict(model_b.state_dict(), "model_b")
    points = {g: pts for g, pts in spec.activation_points.items() if g in spec.group_sizes and pts}
    names = {p.node for pts in points.values() for p in pts}
    stats = {g: CrossStats(spec.group_sizes[g], device) for g in points}
    modes = {m: m.training for m in list(run_a.modules()) + list(run_b.modules())}
    try:
        run_a.eval()  # before tracing: forward code may branch on self.training
        run_b.eval()
        gm_a, gm_b = fx.symbolic_trace(run_a), fx.symbolic_trace(run_b)
        for gm, who in ((gm_a, "model_a"), (gm_b, "model_b")):
            missing = names - {n.name for n in gm.graph.nodes}
            if missing:
                raise KeyError(f"activation points {sorted(missing)} are not in the traced graph of {who}")
        with torch.no_grad():
            for x in iter_batches(data, batch_size, device):
                cap_a, cap_b = _Capture(gm_a, names), _Capture(gm_b, names)
                cap_a.run(x)
                cap_b.run(x)
                for g, pts in points.items():
                    n = spec.group_sizes[g]
                    for p in pts:
                        stats[g].update(unit_columns(cap_a.captured[p.node], p.dim, n, p.inner),
                                        unit_columns(cap_b.captured[p.node], p.dim, n, p.inner))
    finally:
        for m, mode in modes.items():
            m.training = mode
    from scipy.optimize import linear_sum_assignment  # here: importing align (or sparsify) stays scipy-free

    indices, per_group = {}, {}
    objective = 0.0
    for g, st in stats.items():
        corr = st.correlation(eps).cpu().numpy()
        rows, cols = linear_sum_assignment(corr, maximize=True)
        indices[g] = torch.as_tensor(cols, dtype=torch.long)
        per_group[g] = float(corr[rows, cols].mean())
        objective += float(corr[rows, cols].sum())
    perm = Permutation(spec, indices)
    return AlignResult(perm=perm, model=apply_permutation(model_b, perm), iterations=1, objective=objective,
                       info={"correlation": per_group})
