"""Instability analysis: spawn children from a main training branch and measure their linear barriers.

Frankle et al. (2020) train a network to epoch ``k1``, make copies that continue with different data orders
(different SGD noise), and ask whether the copies end up linearly connected. This module implements the
efficient k1/k2 variant of the Shapira LMC study:

1. The *main branch* trains for ``config.epochs`` epochs; after each spawn epoch ``k1`` its full training state
   (weights, BatchNorm statistics, optimizer state) is kept, and its weights are kept at every comparison epoch.
2. At each ``k1`` one or more *children* are spawned from that state with a different data seed (data order,
   dropout masks, augmentation) and train to the same total length ``config.epochs`` under the same schedule.
   All children train together as one population: the population starts at the smallest ``k1`` and grows
   when the run reaches the next ``k1`` (it is paused and resumed with the new children appended; resuming is
   exact, see ``zooscape.train``).
3. At every comparison epoch ``k2 > k1`` the child is compared with the main branch *at the same absolute
   epoch* ``k2`` (both trained for ``k2`` epochs in total): :func:`zooscape.connect.linear_path` gives loss and
   error along the straight line, barriers (three definitions) and the L2 distance.

Only the main branch is reused for every ``k1``; a child with the main branch's own data seed reproduces the
main branch (barrier 0), which the tests use as a control.

This module uses ``zooscape.train`` but never ``zooscape.zoo`` or ``zooscape.cli``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from zooscape.connect.interpolate import check_bn_mode
from zooscape.connect.path import LinearPath, linear_path
from zooscape.train import Member, PopulationState, TrainConfig, resolve_device, train_population

__all__ = ["InstabilityResult", "barrier_table", "child_data_seed", "instability_analysis"]


def child_data_seed(seed: int, k1: int, replicate: int) -> int:
    """Default data seed of the child spawned at ``k1`` (replicate ``replicate``) of a main branch with ``seed``.

    Args:
        seed: the main branch's data seed.
        k1: spawn epoch.
        replicate: index among the children spawned at ``k1``.

    Returns:
        A 31-bit integer, deterministic, distinct from ``seed`` for practical purposes.
    """
    digest = hashlib.blake2b(f"spawn:{int(seed)}:{int(k1)}:{int(replicate)}".encode(), digest_size=4).digest()
    value = int.from_bytes(digest, "little") & 0x7FFFFFFF
    return value if value != seed else value ^ 1


@dataclass
class InstabilityResult:
    """Outcome of :func:`instability_analysis`.

    Attributes:
        records: one flat dict per (k1, replicate, k2): ``k1, k2, replicate, epochs_after_spawn,
            main_data_seed, child_data_seed, distance``, every ``barrier_<metric>_<split>_<definition>``, and
            ``main_<metric>`` / ``child_<metric>`` training metrics at ``k2``.
        paths: the :class:`LinearPath` of every record, same order.
        main_history: main branch metrics, one dict per epoch from 0.
        child_history: ``{(k1, replicate): [metric dict per epoch after k1]}``.
        main_checkpoints: main branch training state after every ``k1`` (one-member :class:`PopulationState`).
        main_weights: main branch state dict at every ``k2``.
        child_final_states: ``{(k1, replicate): state dict after the last epoch}``.
        config: the settings, JSON-ready.
    """

    records: list[dict[str, Any]]
    paths: list[LinearPath]
    main_history: list[dict[str, float]]
    child_history: dict[tuple[int, int], list[dict[str, float]]]
    main_checkpoints: dict[int, PopulationState] = field(repr=False)
    main_weights: dict[int, dict[str, Tensor]] = field(repr=False, default_factory=dict)
    child_final_states: dict[tuple[int, int], dict[str, Tensor]] = field(repr=False, default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def barrier_table(
        self, metric: str = "loss", split: str = "test", definition: str = "linear"
    ) -> dict[int, dict[int, float]]:
        """Barriers arranged ``{k2: {k1: mean over replicates}}`` (one line per k2 in the plot).

        Args:
            metric: ``"loss"`` or ``"error"``.
            split: data split of the barrier.
            definition: ``"linear"``, ``"mean"`` or ``"midpoint"``.

        Returns:
            Nested dict of floats.
        """
        return barrier_table(self.records, metric, split, definition)


def barrier_table(
    records: Sequence[dict[str, Any]], metric: str = "loss", split: str = "test", definition: str = "linear"
) -> dict[int, dict[int, float]]:
    """Arrange instability records as ``{k2: {k1: barrier averaged over replicates}}``.

    Args:
        records: rows with ``k1``, ``k2`` and ``barrier_<metric>_<split>_<definition>`` keys (as produced by
            :func:`instability_analysis` or read back from a catalog).
        metric: ``"loss"`` or ``"error"``.
        split: data split of the barrier.
        definition: ``"linear"``, ``"mean"`` or ``"midpoint"``.

    Returns:
        Nested dict, both levels sorted by epoch.
    """
    key = f"barrier_{metric}_{split}_{definition}"
    sums: dict[int, dict[int, list[float]]] = {}
    for rec in records:
        if key not in rec:
            raise KeyError(f"records have no {key!r}; available: {sorted(k for k in rec if 'barrier' in k)}")
        sums.setdefault(int(rec["k2"]), {}).setdefault(int(rec["k1"]), []).append(float(rec[key]))
    return {k2: {k1: sum(v) / len(v) for k1, v in sorted(row.items())} for k2, row in sorted(sums.items())}


class _Pause(Exception):
    """Raised from a training callback to stop a run at a spawn epoch (the state is captured first)."""


def _validate_epochs(k1s: Sequence[int], k2s: Sequence[int] | None, epochs: int) -> tuple[list[int], list[int]]:
    if epochs < 1:
        raise ValueError(f"config.epochs must be >= 1 for an instability analysis, got {epochs}")
    k1_list = sorted({int(k) for k in k1s})
    if not k1_list:
        raise ValueError("k1s must name at least one spawn epoch")
    bad = [k for k in k1_list if k < 0 or k >= epochs]
    if bad:
        raise ValueError(f"k1s must lie in [0, config.epochs - 1] = [0, {epochs - 1}], got {bad}")
    if k2s is None:
        k2_list = list(range(k1_list[0] + 1, epochs + 1))
    else:
        k2_list = sorted({int(k) for k in k2s})
        bad = [k for k in k2_list if k < 1 or k > epochs]
        if bad:
            raise ValueError(f"k2s must lie in [1, config.epochs] = [1, {epochs}], got {bad}")
        if not any(k2 > k1_list[0] for k2 in k2_list):
            raise ValueError(f"no comparison epoch in k2s={k2_list} is later than the smallest k1={k1_list[0]}")
    return k1_list, k2_list


def _clone_state(state: PopulationState, index: int, copies: int) -> tuple[list, list, list]:
    models = [{k: v.clone() for k, v in state.model_states[index].items()} for _ in range(copies)]
    optims = [{k: v.clone() for k, v in state.optimizer_states[index].items()} for _ in range(copies)]
    extra = [copy.deepcopy(state.member_extra[index]) for _ in range(copies)]
    return models, optims, extra


def instability_analysis(
    model: nn.Module,
    data: Any,
    config: TrainConfig,
    k1s: Sequence[int],
    k2s: Sequence[int] | None = None,
    *,
    seed: int = 0,
    replicates: int = 1,
    child_data_seeds: Sequence[int] | None = None,
    n_points: int = 25,
    splits: Sequence[str] = ("train", "test"),
    bn_mode: str = "interpolate",
    device: str | torch.device = "auto",
    path_batch_size: int = 1024,
    progress: Callable[[str], None] | None = None,
) -> InstabilityResult:
    """Train a main branch, spawn children at every ``k1``, and measure barriers and distances at every ``k2``.

    Args:
        model: the initialised network (epoch 0 of the main branch; not modified).
        data: a ``zooscape.data.DataSplits``.
        config: training configuration shared by main branch and children (``config.epochs`` = total length T).
        k1s: spawn epochs in ``[0, T - 1]``, e.g. ``(0, 1, 2, 3, 5, 7, 10)``.
        k2s: comparison epochs (absolute, in ``[1, T]``); pairs with ``k2 <= k1`` are skipped. Default: every
            epoch after the smallest ``k1``.
        seed: the main branch's seed and data seed.
        replicates: children spawned at each ``k1`` (each with its own data seed).
        child_data_seeds: explicit data seeds, ``len(k1s) * replicates`` of them ordered by (sorted k1,
            replicate). Default: :func:`child_data_seed`.
        n_points: alphas per linear path (0.5 is always included).
        splits: splits on which loss/error paths and barriers are measured.
        bn_mode: BatchNorm handling along the path (``"interpolate"`` or ``"reset"``).
        device: training and evaluation device (``"auto"``, ``"cpu"``, ``"cuda"``, ...).
        path_batch_size: evaluation batch size of the linear paths.
        progress: optional ``fn(message)`` called at each stage.

    Returns:
        :class:`InstabilityResult` with one record per (k1, replicate, k2).

    References:
        Frankle, Dziugaite, Roy, Carbin (2020), "Linear Mode Connectivity and the Lottery Ticket Hypothesis"
        (instability analysis); Shapira (2023), LMC k1/k2 study (one main branch reused for every k1).
    """
    check_bn_mode(bn_mode)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a zooscape.train.TrainConfig, got {type(config).__name__}")
    if not isinstance(replicates, int) or replicates < 1:
        raise ValueError(f"replicates must be a positive integer, got {replicates!r}")
    if config.early_stopping_patience is not None:
        raise ValueError("config.early_stopping_patience must be None: branches must train to the same length")
    k1_list, k2_list = _validate_epochs(k1s, k2s, config.epochs)
    n_children = len(k1_list) * replicates
    if child_data_seeds is None:
        seeds = [child_data_seed(seed, k1, r) for k1 in k1_list for r in range(replicates)]
    else:
        seeds = [int(s) for s in child_data_seeds]
        if len(seeds) != n_children:
            raise ValueError(
                f"child_data_seeds must hold len(k1s) * replicates = {n_children} seeds, got {len(seeds)}"
            )
    dev = resolve_device(device)
    say = progress or (lambda message: None)
    k2_set = set(k2_list)

    # ---- main branch: keep full state at every k1 and weights at every k2
    main_ckpt: dict[int, PopulationState] = {}
    main_weights: dict[int, dict[str, Tensor]] = {}
    main_metrics: dict[int, dict[str, float]] = {}

    def on_main(report: Any) -> None:
        if report.status[0] == "failed":
            raise RuntimeError(f"main branch failed at epoch {report.epoch}: {report.reasons[0]}")
        main_metrics[report.epoch] = dict(report.metrics[0])
        if report.epoch in k1_list:
            main_ckpt[report.epoch] = report.state()
        if report.epoch in k2_set:
            main_weights[report.epoch] = report.state_dicts()[0]

    say(f"main branch: {config.epochs} epochs")
    main = train_population(
        [copy.deepcopy(model)], data, config, [Member(seed=seed, data_seed=seed)], device=dev, callback=on_main
    )
    main_history = main.history[0]

    # ---- children: one growing population, paused at each k1 to append the children spawned there
    template_a = copy.deepcopy(model).to(dev)
    template_b = copy.deepcopy(model).to(dev)
    labels: list[tuple[int, int]] = []  # (k1, replicate) per child, population order
    members: list[Member] = []
    child_history: dict[tuple[int, int], list[dict[str, float]]] = {}
    records: list[dict[str, Any]] = []
    paths: list[LinearPath] = []
    final_states: dict[tuple[int, int], dict[str, Tensor]] = {}
    state: PopulationState | None = None

    def compare(report: Any) -> None:
        k2 = report.epoch
        if k2 not in k2_set:
            return
        weights = report.state_dicts()
        template_a.load_state_dict(main_weights[k2])
        for i, (k1, rep) in enumerate(labels):
            if k2 <= k1:
                continue
            template_b.load_state_dict(weights[i])
            path = linear_path(
                template_a, template_b, data, n_points, splits=splits, bn_mode=bn_mode,
                batch_size=path_batch_size, device=dev,
            )  # fmt: skip
            row: dict[str, Any] = {
                "k1": k1, "k2": k2, "replicate": rep, "epochs_after_spawn": k2 - k1,
                "main_data_seed": seed, "child_data_seed": members[i].data_seed, "distance": path.distance,
            }  # fmt: skip
            row.update(path.flat_barriers())
            row.update({f"main_{k}": v for k, v in main_metrics[k2].items()})
            row.update({f"child_{k}": v for k, v in report.metrics[i].items()})
            records.append(row)
            paths.append(path)

    for stage, k1 in enumerate(k1_list):
        new_models, new_optims, new_extra = _clone_state(main_ckpt[k1], 0, replicates)
        if state is None:
            state = PopulationState(k1, new_models, new_optims, new_extra)
        else:
            if state.epoch != k1:
                raise RuntimeError(f"children population paused at epoch {state.epoch}, expected {k1}")
            state = PopulationState(
                k1, state.model_states + new_models, state.optimizer_states + new_optims,
                state.member_extra + new_extra,
            )  # fmt: skip
        for r in range(replicates):
            labels.append((k1, r))
            members.append(Member(seed=seed, data_seed=seeds[stage * replicates + r]))
            child_history[(k1, r)] = []
        stop_at = k1_list[stage + 1] if stage + 1 < len(k1_list) else None
        captured: dict[str, PopulationState] = {}

        def on_child(report: Any, stop_at: int | None = stop_at, captured: dict = captured) -> None:
            for i, label in enumerate(labels):
                child_history[label].append(dict(report.metrics[i], epoch=report.epoch))
            compare(report)
            if report.epoch == config.epochs:
                final_states.update(zip(labels, report.state_dicts()))
            if stop_at is not None and report.epoch == stop_at:
                captured["state"] = report.state()
                raise _Pause

        say(f"children spawned at k1={k1}: population of {len(members)}, epochs {k1 + 1}..{stop_at or config.epochs}")
        models = [copy.deepcopy(model) for _ in members]
        try:
            train_population(models, data, config, list(members), device=dev, resume=state, callback=on_child)
        except _Pause:
            state = captured["state"]
        else:
            if stop_at is not None:
                raise RuntimeError(f"children run ended before the next spawn epoch {stop_at}")

    settings = {
        "k1s": k1_list, "k2s": k2_list, "seed": seed, "replicates": replicates, "child_data_seeds": seeds,
        "n_points": n_points, "splits": list(splits), "bn_mode": bn_mode, "train": config.to_dict(),
    }  # fmt: skip
    return InstabilityResult(
        records, paths, main_history, child_history, main_ckpt, main_weights, final_states, settings
    )
