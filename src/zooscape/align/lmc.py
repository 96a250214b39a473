"""Linear mode connectivity after alignment and renormalisation: the re-basin barrier of one pair of models.

:func:`renormalized_path` is the linear path ``theta(alpha) = (1 - alpha) theta_a + alpha theta_b`` of
:func:`zooscape.connect.linear_path` where every point is renormalised before it is evaluated:

- ``"none"``: nothing (BatchNorm running statistics interpolated);
- ``"reset_bn"``: BatchNorm statistics re-estimated on the training inputs at every alpha (the vectorised path of
  :func:`~zooscape.connect.linear_path` with ``bn_mode="reset"``);
- ``"repair"`` / ``"rescale"`` / ``"reshift"``: the interpolated model is corrected at every alpha towards the
  interpolated channel statistics of the endpoints (:func:`~zooscape.align.renorm.repair` with weights
  ``[1 - alpha, alpha]``), one model per alpha (as the Rethink Re-Basin code does).

:func:`pair_barriers_aligned` runs the three stages of a re-basin experiment on one pair: the naive path, the
path after aligning ``model_b`` to ``model_a`` (weight or activation matching), and the aligned path with
renormalisation; it returns the three :class:`~zooscape.connect.LinearPath` objects, the permutation and its
objective. Pure function of models and data (imports ``zooscape.connect``, never ``zoo`` or ``cli``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zooscape.connect import (
    LinearPath,
    barriers,
    check_compatible,
    check_compatible_states,
    evaluate_model,
    has_batchnorm,
    interpolate,
    l2_distance,
    path_alphas,
)
from zooscape.connect.batched import batched_bn_stats, batched_evaluate, stack_interpolated
from zooscape.connect.path import linear_paths
from zooscape.connect.population import pick_method
from zooscape.data.adapt import get_split, infer_task, train_inputs

from .activation_matching import activation_matching
from .permutation import Permutation, permute_state_dict
from .renorm import repair
from .spec import PermutationSpec
from .weight_matching import infer_example_input, resolve_spec, weight_matching_state_dicts

__all__ = ["ALIGN_METHODS", "PATH_RENORMS", "PairAlignment", "align_pair", "align_states", "pair_barriers_aligned",
           "renormalized_path", "state_pair_barriers", "state_pairs_barriers", "state_path"]

#: Alignment methods of :func:`align_pair` (``"none"`` keeps ``model_b`` as it is).
ALIGN_METHODS: tuple[str, ...] = ("none", "weight", "activation")
#: Renormalisations of :func:`renormalized_path`.
PATH_RENORMS: tuple[str, ...] = ("none", "reset_bn", "repair", "rescale", "reshift")


def _check(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def _prepare(data: Any, splits: Sequence[str] | str, n_points: int) -> tuple[tuple[str, ...], torch.Tensor,
                                                                        dict[str, Any], str]:
    """Splits as a tuple, the alphas ``[n]``, each split's ``(x, y)`` and the task of a path evaluation."""
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    if not splits:
        raise ValueError("splits must name at least one split")
    split_data = {s: get_split(data, s) for s in splits}
    return splits, path_alphas(n_points), split_data, infer_task(data, next(iter(split_data.values()))[1], None)


def _barriers(losses: Mapping[str, torch.Tensor], errors: Mapping[str, torch.Tensor],
              alphas: torch.Tensor) -> dict[str, dict[str, dict[str, float]]]:
    """``{split: {"loss"|"error": {definition: barrier}}}`` of curves ``[n]`` over ``alphas``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for s, values in losses.items():
        out[s] = {"loss": barriers(values, alphas)}
        if s in errors:
            out[s]["error"] = barriers(errors[s], alphas)
    return out


def renormalized_path(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    renorm: str = "none",
    n_points: int = 25,
    *,
    splits: Sequence[str] = ("train", "test"),
    batch_size: int = 1024,
    renorm_batch_size: int = 256,
    device: str | torch.device | None = None,
) -> LinearPath:
    """Loss and error along the straight line between two models, every point renormalised first.

    Args:
        model_a: ``alpha = 0`` endpoint (not modified).
        model_b: ``alpha = 1`` endpoint, same architecture (typically already aligned to ``model_a``).
        data: ``DataSplits``-like object (``.split(name) -> (x, y)``) or mapping ``{split: (x, y)}``; the
            renormalisation statistics are measured on the ``"train"`` inputs ``[N, ...]``.
        renorm: one of :data:`PATH_RENORMS`.
        n_points: evenly spaced alphas including both endpoints (0.5 added when even).
        splits: splits to evaluate.
        batch_size: evaluation batch size.
        renorm_batch_size: batch size of the statistics passes.
        device: where to evaluate (default: ``model_a``'s device).

    Returns:
        :class:`~zooscape.connect.LinearPath` (``bn_mode`` holds ``renorm``; ``method`` is ``"vmap"`` for
        none/reset_bn and ``"loop"`` otherwise) with barriers in all three definitions.

    References:
        Jordan et al. (2023), "REPAIR: REnormalizing Permuted Activations for Interpolation Repair"; Qu & Horvath
        (2024), "Rethink Model Re-Basin and the Linear Mode Connectivity".
    """
    _check("renorm", renorm, PATH_RENORMS)
    if renorm in ("none", "reset_bn"):
        check_compatible(model_a, model_b)
        return state_path(model_a, model_a.state_dict(), model_b.state_dict(), data, n_points, splits=splits,
                          renorm=renorm, batch_size=batch_size, renorm_batch_size=renorm_batch_size, device=device)
    splits, alphas, split_data, task = _prepare(data, splits, n_points)
    dev = torch.device(device) if device is not None else next(
        (t.device for t in model_a.parameters()), torch.device("cpu"))
    a, b = _on(model_a, dev), _on(model_b, dev)
    x_train = train_inputs(data).to(dev)
    losses: dict[str, list[float]] = {s: [] for s in splits}
    errors: dict[str, list[float]] = {s: [] for s in splits}
    for alpha in alphas.tolist():
        mid = interpolate(a, b, alpha)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # points that cannot absorb a shift are left alone (docs/alignment.md)
            mid = repair(mid, [a, b], x_train, [1.0 - alpha, alpha], method=renorm, batch_size=renorm_batch_size,
                         device=dev)
        for split, (x, y) in split_data.items():
            loss, err = evaluate_model(mid, x, y, task, batch_size=batch_size)
            losses[split].append(loss)
            if err is not None:
                errors[split].append(err)
    loss_t = {s: torch.tensor(v, dtype=torch.float64) for s, v in losses.items()}
    err_t = {s: torch.tensor(v, dtype=torch.float64) for s, v in errors.items() if v}
    return LinearPath(alphas=alphas, loss=loss_t, error=err_t, distance=l2_distance(a, b),
                      barriers=_barriers(loss_t, err_t, alphas),
                      bn_mode=renorm, task=task, method="loop", splits=splits)


@torch.no_grad()
def state_path(
    template: nn.Module,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    data: Any,
    n_points: int = 25,
    *,
    splits: Sequence[str] = ("train", "test"),
    renorm: str = "none",
    batch_size: int = 1024,
    renorm_batch_size: int = 256,
    device: str | torch.device | None = None,
    method: str = "auto",
) -> LinearPath:
    """The linear path between two *state dicts* of one architecture, evaluated functionally (no model copies).

    Every alpha's parameters are stacked (:func:`zooscape.connect.batched.stack_interpolated`) and run through
    ``template`` with ``torch.func.functional_call`` under ``vmap``; the endpoint tensors may be views into
    other storage (e.g. the stacked parameters of a training population) and are only read.

    Args:
        template: a module of the architecture (its own tensors are not used; its mode is restored).
        state_a: ``alpha = 0`` parameters and buffers ``{name: tensor}`` (keys of ``template.state_dict()``).
        state_b: ``alpha = 1`` parameters and buffers, same keys and shapes.
        data: ``DataSplits``-like object or mapping ``{split: (x, y)}``.
        n_points: evenly spaced alphas including both endpoints (0.5 added when even).
        splits: splits to evaluate.
        renorm: ``"none"`` (BatchNorm statistics interpolated) or ``"reset_bn"`` (re-estimated per alpha on the
            training inputs, exact cumulative average).
        batch_size: evaluation batch size.
        renorm_batch_size: batch size of the BatchNorm pass.
        device: where to evaluate (default: ``state_a``'s device).
        method: ``"auto"`` (the fastest for this network, :func:`zooscape.connect.population.pick_method`),
            ``"population"`` (the alphas as members of a :class:`zooscape.train.Population`,
            :func:`zooscape.connect.path.linear_paths`), ``"vmap"`` (all alphas in one vmapped pass) or
            ``"loop"`` (one alpha per pass); vmap and loop are functional (no module copies).

    Returns:
        :class:`~zooscape.connect.LinearPath` (``method`` = the resolved one).

    References:
        Frankle et al. (2020); Entezari et al. (2022).
    """
    if renorm not in ("none", "reset_bn"):
        raise ValueError(f"state_path renormalises with 'none' or 'reset_bn', got {renorm!r}")
    check_compatible_states(state_a, state_b)
    splits, alphas, split_data, task = _prepare(data, splits, n_points)
    dev = torch.device(device) if device is not None else next(iter(state_a.values())).device
    names = {n for n, _ in template.named_parameters()}
    pa = {k: v.detach().to(dev) for k, v in state_a.items() if k in names}
    pb = {k: v.detach().to(dev) for k, v in state_b.items() if k in names}
    ba = {k: v.detach().to(dev) for k, v in state_a.items() if k not in names}
    bb = {k: v.detach().to(dev) for k, v in state_b.items() if k not in names}
    resolved = pick_method(template, split_data[splits[0]][0][:1], method)
    if resolved == "population":
        path = linear_paths([(state_a, state_b)], data, n_points, template=template, splits=splits,
                            bn_mode="reset" if renorm == "reset_bn" else "interpolate", batch_size=batch_size,
                            bn_batch_size=renorm_batch_size, device=dev)[0]
        path.bn_mode = renorm
        return path
    # all alphas in one vmapped pass for small networks; one alpha per pass where vmap is slower (connect.batched)
    chunk = len(alphas) if resolved == "vmap" else 1
    bn_x = train_inputs(data) if renorm == "reset_bn" and has_batchnorm(template) else None
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(alphas), chunk):
        sub = alphas[start:start + chunk]
        params, buffers = stack_interpolated(pa, pb, sub), stack_interpolated(ba, bb, sub)
        if bn_x is not None:
            buffers.update(batched_bn_stats(template, params, bn_x, batch_size=renorm_batch_size, buffers=buffers))
        for split, (x, y) in split_data.items():
            loss, err = batched_evaluate(template, params, buffers, x, y, task, batch_size=batch_size)
            parts.setdefault(f"loss/{split}", []).append(loss)
            if err is not None:
                parts.setdefault(f"error/{split}", []).append(err)
    losses = {s: torch.cat(parts[f"loss/{s}"]) for s in splits}
    errors = {s: torch.cat(parts[f"error/{s}"]) for s in splits if f"error/{s}" in parts}
    total = torch.zeros((), dtype=torch.float64)
    for k in pa:
        total += (pa[k].to("cpu", torch.float64) - pb[k].to("cpu", torch.float64)).pow(2).sum()
    return LinearPath(alphas=alphas, loss=losses, error=errors, distance=float(total.sqrt()),
                      barriers=_barriers(losses, errors, alphas),
                      bn_mode=renorm, task=task, method="vmap" if chunk > 1 else "loop", splits=splits)


def _on(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` itself when it is on ``device``, else a copy there (the input is never moved)."""
    import copy

    here = next((t.device for t in model.parameters()), torch.device("cpu"))
    return model if here == device else copy.deepcopy(model).to(device)


@dataclass
class PairAlignment:
    """Result of :func:`align_pair` / :func:`align_states`.

    Attributes:
        method: ``"none"``, ``"weight"`` or ``"activation"``.
        perm: the permutation with ``apply_permutation(model_b, perm)`` = the aligned model (None for ``"none"``).
        state: the aligned ``model_b`` as a state dict (``state_b`` itself for ``"none"``).
        objective: the matching objective of ``perm`` (sum of inner products for weight matching, sum of
            correlations for activation matching; NaN for ``"none"``).
        iterations: coordinate-descent sweeps (1 for activation matching, 0 for none).
    """

    method: str
    perm: Permutation | None
    state: Mapping[str, torch.Tensor]
    objective: float
    iterations: int


def _module(template: nn.Module, state: Mapping[str, torch.Tensor], device: torch.device | None) -> nn.Module:
    """A copy of ``template`` holding ``state`` (for the analyses that need modules: hooks, REPAIR)."""
    import copy

    m = copy.deepcopy(template)
    m.load_state_dict(state)
    return m if device is None else m.to(device)


def align_states(
    template: nn.Module,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    method: str = "weight",
    data: Any = None,
    *,
    spec: PermutationSpec | None = None,
    seed: int = 0,
    max_iter: int = 100,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    models: tuple[nn.Module, nn.Module] | None = None,
) -> PairAlignment:
    """Align the units of ``state_b`` to ``state_a`` (two state dicts of ``template``'s architecture).

    Weight matching reads the state dicts directly (they may be views, e.g. into a training population's
    stacked parameters); activation matching runs modules (built from the states unless ``models`` are given).

    Args:
        template: a module of the architecture (traced for the spec; its own tensors are not used).
        state_a: reference parameters and buffers.
        state_b: parameters and buffers to permute.
        method: one of :data:`ALIGN_METHODS`.
        data: training inputs ``[N, ...]`` or a data object with ``train_x`` (activation matching; tracing).
        spec: permutation spec (derived from ``template`` when None).
        seed: seed of weight matching's visiting order.
        max_iter: maximum coordinate-descent sweeps.
        batch_size: chunk size of activation passes.
        device: where activation matching runs.
        models: ``(model_a, model_b)`` holding the states, if already built.

    Returns:
        :class:`PairAlignment`.

    References:
        Ainsworth, Hayase & Srinivasa (2023), "Git Re-Basin".
    """
    _check("align", method, ALIGN_METHODS)
    if method == "none":
        return PairAlignment("none", None, state_b, float("nan"), 0)
    x = None if data is None else train_inputs(data)
    if spec is None:
        example = infer_example_input(template) if x is None else x[:2]
        spec = resolve_spec(template, None, example.to(next(template.parameters()).device))
    if method == "weight":
        perm, iterations, objective = weight_matching_state_dicts(state_a, state_b, spec, max_iter=max_iter,
                                                                  seed=seed)
    else:
        if x is None:
            raise ValueError("activation alignment needs data")
        dev = None if device is None else torch.device(device)
        a, b = models if models is not None else (_module(template, state_a, dev), _module(template, state_b, dev))
        res = activation_matching(a, b, x, spec, batch_size=batch_size, device=device)
        perm, iterations, objective = res.perm, res.iterations, res.objective
    return PairAlignment(method, perm, permute_state_dict(state_b, perm, spec), float(objective), int(iterations))


def align_pair(model_a: nn.Module, model_b: nn.Module, method: str = "weight", data: Any = None,
               **kwargs: Any) -> PairAlignment:
    """:func:`align_states` for two models (``model_a`` is the template); keyword arguments as there."""
    return align_states(model_a, model_a.state_dict(), model_b.state_dict(), method, data,
                        models=(model_a, model_b), **kwargs)


def state_pair_barriers(
    template: nn.Module,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    data: Any,
    align: str = "weight",
    renorm: str = "none",
    n_points: int = 25,
    *,
    splits: Sequence[str] = ("train", "test"),
    seed: int = 0,
    device: str | torch.device | None = None,
    models: tuple[nn.Module, nn.Module] | None = None,
) -> tuple[dict[str, LinearPath], PairAlignment]:
    """The re-basin experiment on one pair of state dicts: naive path, aligned path, aligned + renormalised path.

    Paths without REPAIR-family renormalisation are evaluated functionally from the state dicts
    (:func:`state_path`: nothing is copied for ``align="none"``; weight matching permutes a copy of ``state_b``);
    ``repair``/``rescale``/``reshift`` and activation matching need modules, built from the states.

    Args:
        template: a module of the architecture.
        state_a: ``alpha = 0`` endpoint (reference of the alignment).
        state_b: ``alpha = 1`` endpoint (permuted).
        data: ``DataSplits``-like object (the training split drives alignment and renormalisation).
        align: one of :data:`ALIGN_METHODS`.
        renorm: one of :data:`PATH_RENORMS`.
        n_points: alphas per path.
        splits: evaluated splits.
        seed: seed of weight matching.
        device: where to evaluate.
        models: ``(model_a, model_b)`` holding the states, if already built.

    Returns:
        ``(paths, alignment)``: ``paths`` has ``"naive"`` (no alignment, no renormalisation), ``"aligned"``
        (after alignment, no renormalisation; only when ``align != "none"``) and ``"final"`` (after alignment
        and ``renorm``; the same object as the last stage when ``renorm == "none"``).

    References:
        Ainsworth et al. (2023); Jordan et al. (2023); Qu & Horvath (2024).
    """
    _check("align", align, ALIGN_METHODS)
    _check("renorm", renorm, PATH_RENORMS)
    alignment = align_states(template, state_a, state_b, align, data, seed=seed, device=device, models=models)
    kw = {"splits": splits, "device": device}
    paths = {"naive": state_path(template, state_a, state_b, data, n_points, **kw)}
    last = paths["naive"]
    if align != "none":
        paths["aligned"] = last = state_path(template, state_a, alignment.state, data, n_points, **kw)
    if renorm == "reset_bn":
        paths["final"] = state_path(template, state_a, alignment.state, data, n_points, renorm="reset_bn", **kw)
    elif renorm != "none":
        dev = None if device is None else torch.device(device)
        a = models[0] if models is not None else _module(template, state_a, dev)
        b = _module(template, alignment.state, dev)
        paths["final"] = renormalized_path(a, b, data, renorm, n_points, **kw)
    else:
        paths["final"] = last
    return paths, alignment


def pair_barriers_aligned(model_a: nn.Module, model_b: nn.Module, data: Any, align: str = "weight",
                          renorm: str = "none", n_points: int = 25,
                          **kwargs: Any) -> tuple[dict[str, LinearPath], PairAlignment]:
    """:func:`state_pair_barriers` for two models (``model_a`` is the template); keyword arguments (``splits``,
    ``seed``, ``device``) as there."""
    return state_pair_barriers(model_a, model_a.state_dict(), model_b.state_dict(), data, align, renorm, n_points,
                               models=(model_a, model_b), **kwargs)


def state_pairs_barriers(
    template: nn.Module,
    states: Sequence[Mapping[str, torch.Tensor]],
    pairs: Sequence[tuple[int, int]],
    data: Any,
    align: str = "weight",
    renorm: str = "none",
    n_points: int = 25,
    *,
    splits: Sequence[str] = ("train", "test"),
    seed: int = 0,
    device: str | torch.device | None = None,
    models: Sequence[nn.Module] | None = None,
    method: str = "auto",
    progress: Any = None,
) -> list[tuple[dict[str, LinearPath], PairAlignment]]:
    """:func:`state_pair_barriers` for many pairs of one architecture, the paths of all pairs evaluated together.

    Each pair is aligned on its own (:func:`align_states`); the naive and aligned paths of all pairs are then one
    set of population members (:func:`zooscape.connect.path.linear_paths`), and so are the ``reset_bn`` paths;
    ``repair``/``rescale``/``reshift`` stay per pair. If ``method`` resolves to ``"vmap"``/``"loop"``
    (:func:`zooscape.connect.population.pick_method`) each pair runs :func:`state_pair_barriers`. Results equal
    :func:`state_pair_barriers` of each pair within float tolerance.

    Args:
        template: a module of the architecture.
        states: state dicts of the models (``pairs`` index into it).
        pairs: ``[(i, j), ...]``: ``states[i]`` is the ``alpha = 0`` endpoint and reference, ``states[j]`` is
            permuted.
        data: ``DataSplits``-like object.
        align: one of :data:`ALIGN_METHODS`.
        renorm: one of :data:`PATH_RENORMS`.
        n_points: alphas per path.
        splits: evaluated splits.
        seed: seed of weight matching.
        device: where to evaluate.
        models: modules holding ``states`` (activation matching, REPAIR), if already built.
        method: ``"auto"``, ``"population"``, ``"vmap"`` or ``"loop"``.
        progress: ``fn(k)`` called with the path points finished (population) or pairs finished (otherwise).

    Returns:
        One ``(paths, alignment)`` per pair, in order, as :func:`state_pair_barriers`.

    References:
        Frankle et al. (2020); Ainsworth et al. (2023); Jordan et al. (2023); Qu & Horvath (2024).
    """
    _check("align", align, ALIGN_METHODS)
    _check("renorm", renorm, PATH_RENORMS)
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    example = get_split(data, splits[0])[0][:1]
    resolved = pick_method(template, example, method)
    if resolved != "population":
        out = []
        for i, j in pairs:
            pair_models = None if models is None else (models[i], models[j])
            out.append(state_pair_barriers(template, states[i], states[j], data, align, renorm, n_points,
                                           splits=splits, seed=seed, device=device, models=pair_models))
            if progress is not None:
                progress(1)
        return out
    alignments = [align_states(template, states[i], states[j], align, data, seed=seed, device=device,
                               models=None if models is None else (models[i], models[j])) for i, j in pairs]
    ends = [(states[i], states[j]) for i, j in pairs]
    if align != "none":
        ends += [(states[i], al.state) for (i, _), al in zip(pairs, alignments)]
    kw = {"template": template, "splits": splits, "device": device, "progress": progress}
    plain = linear_paths(ends, data, n_points, **kw)
    for path in plain:
        path.bn_mode = "none"
    n = len(pairs)
    naive, aligned = plain[:n], (plain[n:] if align != "none" else plain[:n])
    if renorm == "reset_bn":
        final = linear_paths([(states[i], al.state) for (i, _), al in zip(pairs, alignments)], data, n_points,
                             bn_mode="reset", **kw)
        for path in final:
            path.bn_mode = "reset_bn"
    elif renorm != "none":
        dev = None if device is None else torch.device(device)
        final = []
        for (i, _), al in zip(pairs, alignments):
            a = models[i] if models is not None else _module(template, states[i], dev)
            b = _module(template, al.state, dev)
            final.append(renormalized_path(a, b, data, renorm, n_points, splits=splits, device=device))
    else:
        final = aligned
    out = []
    for k, al in enumerate(alignments):
        paths = {"naive": naive[k]}
        if align != "none":
            paths["aligned"] = aligned[k]
        paths["final"] = final[k]
        out.append((paths, al))
    return out
