"""Sparsified twins: a population of variational-dropout (ARD) copies of trained models, trained at once.

:func:`train_twins` swaps every source model's Linear/Conv2d layers for ARD layers (:func:`~zooscape.sparsify.to_ard`)
and trains all of them as one population with :func:`zooscape.train.train_population`, minimising
``CE + kl_weight(epoch) * KL`` per twin (``KL / n_train`` with ``kl_reduction="elbo"``); after every epoch each
twin's metrics gain ``sparsity`` (the fraction of its weights with ``log alpha >= 3``) and ``kl``. Evaluation runs
in eval mode, i.e. on the deterministic sparse network, so ``test_acc`` is the sparsified model's accuracy.

References:
    Molchanov, Ashukha & Vetrov (2017); Schürholt et al. (2022), "Model Zoos" (sparsified model zoo twins).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from zooscape.train import EpochReport, Member, PopulationResult, PopulationState, TrainConfig, train_population

from .ard import LOG_SIGMA2_INIT, THRESHOLD, ARDControl, ard_layers, kl_approx, kl_weight, log_alpha, to_ard

__all__ = ["KL_REDUCTIONS", "TWIN_CONFIG", "population_twin_metrics", "train_twins", "twin_metrics"]

#: How the KL term is scaled in a twin's loss: ``"elbo"`` (``KL / n_train`` per sample, the variational objective
#: of Molchanov et al. 2017) or ``"model_zoos"`` (``KL`` undivided, added to the mean batch loss, as the Model Zoos
#: code; far stronger, hence far sparser twins in the same number of steps).
KL_REDUCTIONS = ("elbo", "model_zoos")

#: Training defaults of the Model Zoos twins: Adam, lr 1e-3, batch size 10 (the zoos' own), 25 epochs.
TWIN_CONFIG = TrainConfig(epochs=25, batch_size=10, optimizer="adam", lr=1e-3)


@torch.no_grad()
def twin_metrics(state: dict[str, torch.Tensor], threshold: float = THRESHOLD) -> dict[str, float]:
    """``{"sparsity", "kl", "n_pruned", "n_weights"}`` of one ARD state dict (weights of ARD layers only)."""
    pruned = total = 0
    kl = 0.0
    for k, ls in state.items():
        if not k.endswith(".log_sigma2"):
            continue
        la = log_alpha(state[k[: -len("log_sigma2")] + "weight"], ls)
        pruned += int((la >= threshold).sum())
        total += la.numel()
        kl += float(kl_approx(la).sum())
    return {"sparsity": pruned / total if total else 0.0, "kl": kl, "n_pruned": float(pruned),
            "n_weights": float(total)}


@torch.no_grad()
def population_twin_metrics(population: nn.Module, threshold: float = THRESHOLD) -> list[dict[str, float]]:
    """:func:`twin_metrics` of every member of a population of ARD models at once, from its stacked ``[N, ...]``
    weights and ``log_sigma2`` (no per-member state dict copies); one dict per member, in population order.

    Args:
        population: a :class:`zooscape.train.Population` (or its ``net``) whose ARD layers are population layers.
        threshold: ``log alpha`` pruning threshold.
    """
    layers = [m for _, m in ard_layers(population) if m.weight.dim() >= 2 and hasattr(m, "n")]
    if not layers:
        raise ValueError("the population has no population ARD layers")
    n = layers[0].n
    pruned = torch.zeros(n, dtype=torch.int64)
    kl = torch.zeros(n, dtype=torch.float64)
    total = 0
    for m in layers:
        la = log_alpha(m.weight, m.log_sigma2).reshape(n, -1)
        pruned += (la >= threshold).sum(1).cpu()
        kl += kl_approx(la).sum(1).double().cpu()
        total += la.shape[1]
    return [{"sparsity": p / total if total else 0.0, "kl": k, "n_pruned": float(p), "n_weights": float(total)}
            for p, k in zip(pruned.tolist(), kl.tolist())]


def train_twins(
    sources: Sequence[nn.Module],
    data: Any,
    config: TrainConfig = TWIN_CONFIG,
    members: Sequence[Member] | None = None,
    *,
    kl_scale: float = 1e-2,
    kl_reduction: str = "model_zoos",
    estimator: str = "weight",
    log_sigma2_init: float = LOG_SIGMA2_INIT,
    threshold: float = THRESHOLD,
    device: str | torch.device = "auto",
    resume: PopulationState | None = None,
    callback: Callable[[EpochReport], None] | None = None,
    progress: bool = False,
) -> PopulationResult:
    """Train the sparsified twins of ``sources`` (one architecture) as one population.

    Args:
        sources: N trained models (not modified); e.g. a zoo's models at their last epoch.
        data: a :class:`zooscape.data.DataSplits`.
        config: training hyperparameters (``epochs`` = sparsification epochs; default :data:`TWIN_CONFIG`).
        members: per-twin seeds / learning rates (:class:`zooscape.train.Member`); default seeds ``0..N-1``.
        kl_scale: the KL weight ramps as ``min(1, kl_scale * epoch / epochs)``.
        kl_reduction: how the KL enters each twin's (mean per sample) loss: ``"model_zoos"`` (default) adds
            ``kl_weight * KL`` undivided, as the Model Zoos twins' ``ELBOLoss`` does; ``"elbo"`` adds
            ``kl_weight * KL / n_train``, the per-sample negative ELBO of Molchanov et al. (2017), ``n_train`` times
            weaker (on digits' 1,257 training images, ``"model_zoos"`` is ``"elbo"`` with ``kl_scale`` x 1,257).
            See :data:`KL_REDUCTIONS`.
        estimator: ``"weight"`` (default: one weight sample per twin and step, Kingma et al. 2015, run through
            the population's own layers: a CNN-s twin costs about what a zoo model costs per epoch) or ``"local"``
            (the local reparameterisation of the papers: two convolutions per layer and a noise map, ~3.5x the time
            for CNN-s, and ~4 points more sparsity at the same accuracy loss after 25 epochs on digits, see
            ``docs/sparsify.md``); see :data:`zooscape.sparsify.ard.ESTIMATORS`.
        log_sigma2_init: initial ``log sigma^2`` (-10).
        threshold: ``log alpha`` pruning threshold (3).
        device: ``"auto"``, ``"cpu"``, ...
        resume: continue from a state a previous run's callback reported (ARD state dicts).
        callback: called with each :class:`zooscape.train.EpochReport`; its ``metrics`` rows already hold
            ``sparsity`` and ``kl``.
        progress: show a progress bar.

    Returns:
        the :class:`zooscape.train.PopulationResult` of the ARD population (state dicts hold ``log_sigma2``;
        :func:`~zooscape.sparsify.sparse_state_dict` gives the deterministic sparse weights), with ``sparsity``
        and ``kl`` in every history row.
    """
    if len(sources) == 0:
        raise ValueError("train_twins needs at least one source model")
    if kl_reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl_reduction must be one of {KL_REDUCTIONS}, got {kl_reduction!r}")
    control = ARDControl(threshold=float(threshold), estimator=estimator)
    twins = [to_ard(m, log_sigma2_init=log_sigma2_init, control=control) for m in sources]
    n_train = int(data.train_x.shape[0])

    def set_epoch(epoch: int) -> None:  # the penalty of the coming epoch
        divisor = n_train if kl_reduction == "elbo" else 1
        control.penalty_scale = kl_weight(epoch, config.epochs, kl_scale) / divisor

    set_epoch(1 if resume is None else resume.epoch + 1)

    def on_report(report: EpochReport) -> None:
        for row, m in zip(report.metrics, population_twin_metrics(report.population, threshold)):
            row["sparsity"], row["kl"] = m["sparsity"], m["kl"]
            row["kl_weight"] = kl_weight(report.epoch, config.epochs, kl_scale)
        set_epoch(report.epoch + 1)
        if callback is not None:
            callback(report)

    return train_population(twins, data, config, members, device=device, resume=resume, callback=on_report,
                            progress=progress)
