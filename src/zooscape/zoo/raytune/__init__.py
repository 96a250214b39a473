"""Import and export of the Ray Tune folder layout of the published zoos (Model Zoos, phase-transition zoos).

The layout (one folder per trial, anywhere below the given directory)::

    <trial>/
      params.json                    flat config, keys "model::nlin", "optim::lr", "training::batchsize", "seed", ...
      result.json                    JSON Lines; line 0 = evaluation before training, line k = after epoch k
      checkpoint_000000/checkpoints  torch.save(state_dict) (keys may carry a "module." prefix)
      checkpoint_000000/optimizer    torch.save(optimizer.state_dict()) (optional)
      checkpoint_000001/...

:func:`import_raytune` turns such a directory into a normal zoo of ours (``spec.toml``, catalog, shards).
Checkpoints are read with ``torch.load(weights_only=True)`` only, never by full unpickling. Each config is mapped
onto our ``dataset``/``model``/``training`` sections (:data:`PARAM_MAP`) and keeps its original keys in
``derived.source.params``; CNN-s ("CNN") and CNN-l ("CNN3") are re-instantiated with ``create_model`` and every
checkpoint must load into that model strictly, so ``zoo.load_model`` evaluates to the recorded accuracy on the same
data. Broken trials (missing or truncated files, unreadable or non-finite checkpoints, checkpoints that do not fit
the model) are reported in :class:`ImportReport` and skipped, and so are hostile ones: symbolic links are not
followed (by default; on request only those that stay inside the import root), only regular files are opened
(never blocking on a FIFO), JSON and checkpoint files are capped in size and JSON in nesting depth, epoch numbers
are bounded, and checkpoints are checked against the model's shapes computed on the ``meta`` device (no model is
ever allocated from a trial's ``params.json``). See :class:`ImportLimits` and ``docs/security.md``.
:func:`export_raytune` writes a zoo of ours back in
that layout for users of the old tools (with a ``zooscape::config`` key, so that re-importing gives the same model
ids).

References:
    Schürholt, Taskiran, Knyazev, Giró-i-Nieto & Borth (2022), "Model Zoos: A Dataset of Diverse Populations of
    Neural Network Models"; the phase-transition model zoo (ModelZoos/PhaseTransitionModelZoo); Liaw et al. (2018),
    "Tune: A Research Platform for Distributed Model Selection and Training" (the folder layout).
"""

from __future__ import annotations

from zooscape.zoo.raytune.exporter import ExportReport, export_raytune
from zooscape.zoo.raytune.importer import ImportReport, import_raytune
from zooscape.zoo.raytune.layout import (
    MODEL_TYPES,
    PARAM_MAP,
    ImportLimits,
    RayTrial,
    TrialError,
    find_trials,
    optimizer_from_torch,
    optimizer_to_torch,
    read_state_dict,
    read_trial,
)
from zooscape.zoo.raytune.mapping import map_params

__all__ = [
    "MODEL_TYPES",
    "PARAM_MAP",
    "ExportReport",
    "ImportLimits",
    "ImportReport",
    "RayTrial",
    "TrialError",
    "export_raytune",
    "find_trials",
    "import_raytune",
    "map_params",
    "optimizer_from_torch",
    "optimizer_to_torch",
    "read_state_dict",
    "read_trial",
]
