"""Linear mode connectivity measured *during* training (``[lmc] every = ...`` in a zoo spec; ``zoo train``).

The Rethink Re-Basin code trains a pair of models together and measures their linear interpolation every
``--lmc-freq`` percent of training; a zoo population already holds every member of a grid cell that trains in it,
so :class:`TrainingLmc` measures, at the epochs of :func:`~zooscape.zoo.lmc_section.measure_epochs`, the barrier
between every pair of members of one grid cell (:mod:`zooscape.studies.cells`) in the population:

- the members' parameters and buffers are read as **views into the population's stacked tensors**
  (``EpochReport.member_views``) and evaluated functionally (:func:`zooscape.align.lmc.state_pair_barriers`:
  ``torch.func.functional_call`` under ``vmap`` on one template module): no member is copied out for the naive
  path or with ``renorm = "reset_bn"``; weight matching (``align = "weight"``) reads the views and permutes a copy
  of the second member only. REPAIR/RESCALE/RESHIFT and activation matching need modules (forward hooks, fused
  corrections), so for those the two members are copied into modules once per measurement.
- values and names are those of ``zooscape lmc pairs`` (:func:`zooscape.studies.lmc.pair_values`), computed by
  the same functions from the same tensors, so the last measurement equals ``lmc pairs`` on the final checkpoints.
- rows are ``analyses`` with ``model_id`` < ``other_id``, ``epoch`` = the training epoch, ``params.experiment =
  "lmc_train"`` plus the settings and ``epochs`` (for the training-progress axis). They are sent to the zoo's driver
  as an ``"analyses"`` event and also kept in ``ZOO/lmc/train/<group_id>.json`` (rewritten atomically after
  every measurement); when a killed group restarts from its resume file, the stored rows are replayed (idempotent
  upserts) and training continues from the resume epoch, so the series has neither gaps nor duplicates.

Pairs are only formed *within* a population: members of one cell that train in different populations (a cell larger
than ``[population] max_size``) are not compared during training (``lmc pairs`` compares them afterwards).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zooscape._io import atomic_write_bytes, json_ready
from zooscape.studies.cells import cell_key
from zooscape.zoo.lmc_section import measure_epochs

__all__ = ["LMC_DIR", "TRAIN_EXPERIMENT", "TrainingLmc", "pair_values", "plot_training_lmc", "seed_pairs",
           "training_lmc_records", "training_params"]

TRAIN_EXPERIMENT = "lmc_train"
#: Folder of a zoo with the LMC studies' files (spawn results, permutations, during-training rows).
LMC_DIR = "lmc"
TRAIN_DIR = "train"


def _prefixed(prefix: str, path: Any) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in [("distance", path.distance), *path.flat_barriers().items()]}


def pair_values(paths: Mapping[str, Any], alignment: Any) -> dict[str, float]:
    """The stored values of one pair: final, naive and aligned barriers and distances, the alignment objective.

    Args:
        paths: output of :func:`zooscape.align.lmc.pair_barriers_aligned` (``naive``, ``aligned``, ``final``).
        alignment: its :class:`~zooscape.align.lmc.PairAlignment`.

    Returns:
        ``{"distance", "barrier_<metric>_<split>_<definition>", "naive_...", "aligned_...", "align_objective",
        "align_iterations"}`` (``aligned_*`` and ``align_*`` only when the pair was aligned).
    """
    out = {**_prefixed("", paths["final"]), **_prefixed("naive_", paths["naive"])}
    if "aligned" in paths:
        out.update(_prefixed("aligned_", paths["aligned"]))
        out["align_objective"] = float(alignment.objective)
        out["align_iterations"] = float(alignment.iterations)
    return out


def training_params(settings: Mapping[str, Any], epochs: int) -> dict[str, Any]:
    """The ``params`` stored with every during-training row.

    Args:
        settings: output of :func:`zooscape.zoo.lmc_section.training_lmc`.
        epochs: training epochs of the population.

    Returns:
        JSON-ready dict with ``experiment = "lmc_train"``.
    """
    return {"experiment": TRAIN_EXPERIMENT, "every": float(settings["every"]), "pairs": settings["pairs"],
            "align": settings["align"], "renorm": settings["renorm"], "seed": int(settings["seed"]),
            "n_points": int(settings["n_points"]), "splits": list(settings["splits"]), "epochs": int(epochs)}


def seed_pairs(configs: Sequence[Mapping[str, Any]], model_ids: Sequence[str]) -> list[tuple[int, int]]:
    """Pairs of population members in one grid cell, each as ``(i, j)`` with ``model_ids[i] < model_ids[j]``.

    Args:
        configs: one nested config per member.
        model_ids: the members' ids (population order).

    Returns:
        member index pairs, sorted by the pair's ids.
    """
    by_cell: dict[str, list[int]] = {}
    for i, cfg in enumerate(configs):
        by_cell.setdefault(cell_key(cfg), []).append(i)
    out = []
    for members in by_cell.values():
        members = sorted(members, key=lambda i: model_ids[i])
        out += [(members[a], members[b]) for a in range(len(members)) for b in range(a + 1, len(members))]
    return sorted(out, key=lambda p: (model_ids[p[0]], model_ids[p[1]]))


class TrainingLmc:
    """The during-training LMC measurement of one training population (used by :func:`zooscape.zoo.task.run_group`).

    Args:
        root: zoo directory.
        group_id: the population's group.
        model_ids: members in population order.
        configs: one nested config per member.
        settings: output of :func:`zooscape.zoo.lmc_section.training_lmc`.
        data: the population's ``DataSplits``.
        template: a module of the members' architecture (its own tensors are not used).
    """

    def __init__(self, root: str | Path, group_id: str, model_ids: Sequence[str],
                 configs: Sequence[Mapping[str, Any]], settings: Mapping[str, Any], data: Any,
                 template: Any) -> None:
        self.path = Path(root) / LMC_DIR / TRAIN_DIR / f"{group_id}.json"
        self.model_ids = list(model_ids)
        epochs = int(configs[0]["training"]["epochs"])
        self.settings = dict(settings)
        self.params = training_params(settings, epochs)
        self.epochs = set(measure_epochs(float(settings["every"]), epochs))
        self.pairs = seed_pairs(configs, self.model_ids)
        self.data = data
        self.template = template
        self.rows: dict[tuple[str, str, int, str], dict[str, Any]] = {}
        if self.path.exists():
            for row in json.loads(self.path.read_text(encoding="utf-8"))["rows"]:
                self.rows[(row["model_id"], row["other_id"], int(row["epoch"]), row["metric"])] = row

    def stored_rows(self) -> list[dict[str, Any]]:
        """Rows measured before (a restarted group replays them to the driver).

        Returns:
            catalog rows.
        """
        return list(self.rows.values())

    def measure(self, report: Any) -> list[dict[str, Any]]:
        """Measure every seed pair at ``report.epoch`` if it is a measurement epoch; keep and return the rows.

        Args:
            report: the trainer's ``EpochReport`` (``epoch``, ``status``, ``member_views(i)``).

        Returns:
            catalog rows of this epoch (empty when it is not a measurement epoch or no pair is left).
        """
        from zooscape.align.lmc import state_pair_barriers

        if report.epoch not in self.epochs or not self.pairs:
            return []
        s = self.settings
        out = []
        first = next(iter(report.member_views(0).values()))
        if next(self.template.parameters()).device != first.device:  # once: the template follows the population
            self.template = self.template.to(first.device)
        for i, j in self.pairs:
            if "failed" in (report.status[i], report.status[j]):
                continue
            paths, alignment = state_pair_barriers(
                self.template, report.member_views(i), report.member_views(j), self.data, s["align"], s["renorm"],
                int(s["n_points"]), splits=tuple(s["splits"]), seed=int(s["seed"]),
            )  # fmt: skip
            pair = {"model_id": self.model_ids[i], "other_id": self.model_ids[j], "epoch": int(report.epoch)}
            out += [{**pair, "metric": k, "value": v, "params": self.params}
                    for k, v in pair_values(paths, alignment).items()]
        if out:
            for row in out:
                self.rows[(row["model_id"], row["other_id"], row["epoch"], row["metric"])] = row
            self.path.parent.mkdir(parents=True, exist_ok=True)
            payload = {"params": self.params, "rows": sorted(self.rows.values(), key=lambda r: (
                r["model_id"], r["other_id"], r["epoch"], r["metric"]))}
            atomic_write_bytes(self.path, json.dumps(json_ready(payload)).encode())
        return out


def training_lmc_records(zoo_dir: str | Path) -> list[dict[str, Any]]:
    """The stored during-training barriers of a zoo, one flat record per (pair, epoch).

    Args:
        zoo_dir: a zoo directory.

    Returns:
        dicts with ``model_id``, ``other_id``, ``epoch``, ``progress`` (epoch / training epochs), ``cell`` (index),
        ``cell_label``, ``params`` and every stored value, sorted by cell, pair and epoch.

    Raises:
        FileNotFoundError: not a zoo directory.
    """
    from zooscape.studies.cells import zoo_cells
    from zooscape.studies.jobs import experiment_records, zoo_store
    from zooscape.zoo.reader import open_zoo

    store = zoo_store(zoo_dir)
    with open_zoo(store.root) as zoo:
        records = experiment_records(zoo.catalog, TRAIN_EXPERIMENT)
        cell_of = {m: c for c in zoo_cells(zoo) for m in c.model_ids}
    for r in records:
        cell = cell_of.get(r["model_id"])
        r["progress"] = r["epoch"] / max(1, int(r["params"]["epochs"]))
        r["cell"], r["cell_label"] = (-1, "") if cell is None else (cell.index, cell.label)
    return sorted(records, key=lambda r: (r["cell"], r["model_id"], r["other_id"], r["epoch"]))


def plot_training_lmc(records: Sequence[Mapping[str, Any]], metric: str = "error", split: str = "test",
                      definition: str = "linear", title: str | None = None) -> Any:
    """Barrier vs training progress, one panel per grid cell (thin lines: pairs; thick: their mean).

    Args:
        records: output of :func:`training_lmc_records`.
        metric: ``"loss"`` or ``"error"``.
        split: data split.
        definition: barrier definition.
        title: figure title.

    Returns:
        matplotlib Figure (stages: naive dashed, aligned dotted, final solid, when stored).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"barrier_{metric}_{split}_{definition}"
    cells = sorted({(r["cell"], r["cell_label"]) for r in records})
    if not cells:
        raise ValueError("no during-training LMC records to plot")
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.4), squeeze=False, sharey=True)
    for ax, (index, label) in zip(axes[0], cells):
        rows = [r for r in records if r["cell"] == index]
        params = rows[0]["params"]
        stages = [("naive_" + key, "naive", "--")]
        if params["align"] != "none":
            stages.append(("aligned_" + key, params["align"], ":"))
        if params["renorm"] != "none":
            stages.append((key, f"{params['align']}+{params['renorm']}", "-"))
        for stage, name, style in stages:
            by_pair: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for r in rows:
                if stage in r:
                    by_pair.setdefault((r["model_id"], r["other_id"]), []).append((r["progress"], r[stage]))
            if not by_pair:
                continue
            xs = sorted({x for pts in by_pair.values() for x, _ in pts})
            mean = [sum(v for pts in by_pair.values() for x2, v in pts if x2 == x)
                    / sum(1 for pts in by_pair.values() for x2, _ in pts if x2 == x) for x in xs]
            line = ax.plot(xs, mean, style, lw=2, label=f"{name} (mean of {len(by_pair)})")[0]
            for pts in by_pair.values():
                ax.plot(*zip(*sorted(pts)), style, lw=0.6, alpha=0.4, color=line.get_color())
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("fraction of training")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"{definition} {split} {metric} barrier")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
