"""Model averaging and model soups as pure functions of models, state dicts and data.

The phase-transition study asks whether averaging helps in each phase (Schürholt et al. 2024, "Phase
Transitions in Model Zoos"): (a) the uniform average of one training run's last ``k`` checkpoints (epoch
averaging, as in stochastic weight averaging, Izmailov et al. 2018), (b) the uniform average of a grid cell's
seeds, naive or after weight matching (Ainsworth et al. 2023, "Git Re-Basin"; MergeMany from
:func:`zooscape.align.merge`), and (c) model soups (Wortsman et al. 2022, "Model soups"): the uniform soup and
the greedy soup.

Every floating-point tensor of the state dict -- weights, biases, norm affine parameters and BatchNorm running
statistics -- is averaged (:func:`zooscape.align.average_state_dicts`; the reference code skips biases, this
module does not). When the model has BatchNorm layers and ``bn_data`` is given, the running statistics of an
average of two or more models are then re-estimated on ``bn_data`` with the project's one BatchNorm
re-estimator, :func:`zooscape.connect.bn.recompute_bn_stats` (exact cumulative average over one pass,
``num_batches_tracked`` recounted). The average of a single model is that model (no re-estimation).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from zooscape.align import average_state_dicts, merge
from zooscape.connect.bn import has_batchnorm, recompute_bn_stats
from zooscape.connect.metrics import evaluate_model

__all__ = [
    "ALIGN_MODES",
    "SoupResult",
    "average_models",
    "average_states",
    "epoch_average",
    "greedy_soup",
    "uniform_soup",
]

#: ``align`` values of :func:`average_models`: plain averaging or weight matching first.
ALIGN_MODES = ("none", "weight")


def _check_bn_data(bn_data: Tensor | None) -> None:
    if bn_data is not None and (not isinstance(bn_data, Tensor) or bn_data.dim() < 1 or bn_data.shape[0] == 0):
        raise ValueError(f"bn_data must be a non-empty input tensor [n, ...], got {getattr(bn_data, 'shape', bn_data)}")


def _renormalize(model: nn.Module, bn_data: Tensor | None, batch_size: int) -> nn.Module:
    if bn_data is not None and has_batchnorm(model):
        recompute_bn_stats(model, bn_data, batch_size=batch_size)
    return model


def average_states(
    template: nn.Module,
    states: Sequence[Mapping[str, Tensor]],
    bn_data: Tensor | None = None,
    weights: Sequence[float] | None = None,
    batch_size: int = 256,
) -> nn.Module:
    """A copy of ``template`` holding the (weighted) average of ``states``, BatchNorm re-estimated.

    Args:
        template: a model of the architecture of the states (not modified; its mode is kept).
        states: K >= 1 state dicts with identical keys and shapes (parameters and buffers).
        bn_data: inputs ``[n, *input_shape]`` to re-estimate BatchNorm statistics of an average of K >= 2 states
            (None: keep the averaged running statistics).
        weights: K non-negative averaging weights (uniform when None).
        batch_size: batch size of the BatchNorm pass.

    Returns:
        A new model. For K = 1 its state equals ``states[0]`` exactly.

    Raises:
        ValueError: no states, keys/shapes that differ between states or from the template.
    """
    states = list(states)
    if not states:
        raise ValueError("states must not be empty")
    keys = set(template.state_dict())
    for i, sd in enumerate(states):
        if set(sd) != keys:
            diff = sorted(set(sd) ^ keys)[:5]
            raise ValueError(f"states[{i}] keys differ from the template's state dict: {diff}")
    model = copy.deepcopy(template)
    if len(states) == 1:
        model.load_state_dict({k: v.detach().clone() for k, v in states[0].items()})
        return model
    _check_bn_data(bn_data)
    model.load_state_dict(average_state_dicts(states, weights))
    return _renormalize(model, bn_data, batch_size)


def epoch_average(
    template: nn.Module,
    checkpoints: Sequence[Mapping[str, Tensor]],
    bn_data: Tensor | None = None,
    batch_size: int = 256,
) -> nn.Module:
    """Uniform average of one training run's checkpoints (e.g. its last ``k`` epochs), BatchNorm re-estimated.

    Args:
        template: a model of the run's architecture.
        checkpoints: the K >= 1 state dicts to average (any order).
        bn_data: training inputs ``[n, *input_shape]`` for BatchNorm re-estimation (None: averaged statistics).
        batch_size: batch size of the BatchNorm pass.

    Returns:
        A new model; a constant trajectory averages to its own state.

    References:
        Izmailov, Podoprikhin, Garipov, Vetrov, Wilson (2018), "Averaging Weights Leads to Wider Optima and
        Better Generalization"; Schürholt et al. (2024), "Phase Transitions in Model Zoos" (last 5 epochs).
    """
    return average_states(template, checkpoints, bn_data=bn_data, batch_size=batch_size)


def average_models(
    models: Sequence[nn.Module],
    align: str = "none",
    bn_data: Tensor | None = None,
    weights: Sequence[float] | None = None,
    batch_size: int = 256,
    seed: int = 0,
    max_iter: int = 100,
) -> nn.Module:
    """Average K models of one architecture, naively or after weight matching, BatchNorm re-estimated.

    Args:
        models: K >= 1 models with identical state-dict keys and shapes.
        align: ``"none"`` (average as they are) or ``"weight"`` (MergeMany weight matching to a common basis,
            :func:`zooscape.align.merge`, then average).
        bn_data: training inputs ``[n, *input_shape]`` for BatchNorm re-estimation (None: averaged statistics).
        weights: K non-negative averaging weights (uniform when None).
        batch_size: batch size of the BatchNorm pass.
        seed: seed of MergeMany's visiting order.
        max_iter: most MergeMany / weight-matching sweeps.

    Returns:
        A new model (a copy of ``models[0]`` with the averaged state); for K = 1 an exact copy.

    References:
        Ainsworth, Hayase, Srinivasa (2023), "Git Re-Basin"; Schürholt et al. (2024) ("gitrebasin" averaging).
    """
    models = list(models)
    if not models:
        raise ValueError("models must not be empty")
    if align not in ALIGN_MODES:
        raise ValueError(f"align must be one of {ALIGN_MODES}, got {align!r}")
    if len(models) == 1 or align == "none":
        return average_states(models[0], [m.state_dict() for m in models], bn_data=bn_data, weights=weights,
                              batch_size=batch_size)
    _check_bn_data(bn_data)
    device = next((t.device for t in models[0].parameters()), None)
    example = bn_data[:2].to(device) if bn_data is not None else None  # tracing input on the models' device
    merged = merge(models, weights, align="weight", example_input=example, max_iter=max_iter, seed=seed).model
    return _renormalize(merged, bn_data, batch_size)


def uniform_soup(models: Sequence[nn.Module], bn_data: Tensor | None = None, batch_size: int = 256) -> nn.Module:
    """The uniform soup: the plain average of all ingredients (no alignment), BatchNorm re-estimated.

    Args:
        models: K >= 1 fine-tuned / trained models of one architecture.
        bn_data: training inputs for BatchNorm re-estimation (None: averaged statistics).
        batch_size: batch size of the BatchNorm pass.

    Returns:
        A new model; the soup of one model is that model.

    References:
        Wortsman et al. (2022), "Model soups: averaging weights of multiple fine-tuned models improves accuracy
        without increasing inference time".
    """
    return average_models(models, "none", bn_data=bn_data, batch_size=batch_size)


@dataclass
class SoupResult:
    """Result of :func:`greedy_soup`.

    Attributes:
        model: the soup.
        ingredients: indices (into the input list) of the models in the soup, in the order they were added.
        order: all indices sorted by held-out accuracy, best first (the order they were tried).
        accuracies: held-out accuracy of each input model (input order).
        accuracy: held-out accuracy of the soup.
        history: held-out accuracy of each tried candidate soup (``order[1:]``), whether added or not.
    """

    model: nn.Module
    ingredients: list[int]
    order: list[int]
    accuracies: list[float]
    accuracy: float
    history: list[float] = field(default_factory=list)


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> float:
    _, error = evaluate_model(model, x, y, "classification", batch_size=max(batch_size, 1))
    return 1.0 - float(error)


def greedy_soup(
    models: Sequence[nn.Module],
    x_val: Tensor,
    y_val: Tensor,
    bn_data: Tensor | None = None,
    batch_size: int = 256,
) -> SoupResult:
    """The greedy soup: add ingredients best-first, keeping each one only if held-out accuracy does not drop.

    Ingredients are sorted by accuracy on ``(x_val, y_val)``; the soup starts as the best model (unchanged) and
    each next model is added when the average of the soup's ingredients plus it (BatchNorm re-estimated on
    ``bn_data``) has held-out accuracy >= the current soup's. Hence the soup's held-out accuracy is never below
    its best ingredient's.

    Args:
        models: K >= 1 models of one architecture (classifiers).
        x_val: held-out inputs ``[n, *input_shape]`` (the selection split).
        y_val: held-out class labels ``[n]``.
        bn_data: training inputs for BatchNorm re-estimation (None: averaged statistics).
        batch_size: batch size of evaluation and of the BatchNorm pass.

    Returns:
        :class:`SoupResult`.

    References:
        Wortsman et al. (2022), "Model soups" (Recipe 1, GreedySoup).
    """
    models = list(models)
    if not models:
        raise ValueError("models must not be empty")
    if x_val.shape[0] != y_val.shape[0] or x_val.shape[0] == 0:
        raise ValueError(f"x_val {tuple(x_val.shape)} and y_val {tuple(y_val.shape)} need the same, non-zero "
                         "number of samples")
    accs = [_accuracy(m, x_val, y_val, batch_size) for m in models]
    order = sorted(range(len(models)), key=lambda i: (-accs[i], i))
    ingredients = [order[0]]
    soup = copy.deepcopy(models[order[0]])
    best = accs[order[0]]
    history = []
    for i in order[1:]:
        candidate = average_models([models[j] for j in ingredients + [i]], "none", bn_data=bn_data,
                                   batch_size=batch_size)
        acc = _accuracy(candidate, x_val, y_val, batch_size)
        history.append(acc)
        if acc >= best:
            ingredients.append(i)
            soup, best = candidate, acc
    return SoupResult(model=soup, ingredients=ingredients, order=order, accuracies=accs, accuracy=best,
                      history=history)

