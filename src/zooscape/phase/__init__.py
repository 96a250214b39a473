"""zooscape.phase: phase-transition studies of model zoos (temperature x load diagrams).

Pure parts (functions of models, data and tables; this package never imports :mod:`zooscape.zoo`):

- averaging and soups: :func:`epoch_average`, :func:`average_models` (naive or weight-matched seed averaging),
  :func:`uniform_soup`, :func:`greedy_soup`;
- tables: :func:`cell_table` (long records -> one row per grid cell, mean/std over seeds), :func:`add_log_metrics`;
- classification: :func:`classify` into the phases of Yang et al. (2021) with :data:`DEFAULT_THRESHOLDS`;
- figures: :func:`plot_phases` (one PNG per metric, the phase map, the overview).

The study itself (training the grid, computing every metric, committing rows to the zoo's catalog) lives in
:mod:`zooscape.studies.phase`; ``run_study``, ``phase_table`` and ``study_records`` are re-exported here lazily.
See ``docs/phase.md``.
"""

from __future__ import annotations

from typing import Any

from zooscape.phase.averaging import (
    ALIGN_MODES,
    SoupResult,
    average_models,
    average_states,
    epoch_average,
    greedy_soup,
    uniform_soup,
)
from zooscape.phase.classify import (
    DEFAULT_THRESHOLDS,
    PHASES,
    UNCERTAIN,
    UNCLASSIFIED,
    classify,
    classify_values,
    threshold_settings,
)
from zooscape.phase.plot import metric_figure, overview_figure, phase_map_figure, plot_phases
from zooscape.phase.table import LOG_METRICS, add_log_metrics, cell_table, metric_names

__all__ = [
    "ALIGN_MODES",
    "DEFAULT_THRESHOLDS",
    "LOG_METRICS",
    "PHASES",
    "UNCERTAIN",
    "UNCLASSIFIED",
    "SoupResult",
    "add_log_metrics",
    "average_models",
    "average_states",
    "cell_table",
    "classify",
    "classify_values",
    "epoch_average",
    "greedy_soup",
    "metric_figure",
    "metric_names",
    "overview_figure",
    "phase_map_figure",
    "phase_table",
    "plot_phases",
    "run_study",
    "study_records",
    "threshold_settings",
    "uniform_soup",
]

_STUDY = ("run_study", "phase_table", "study_records")


def __getattr__(name: str) -> Any:
    if name in _STUDY:
        from zooscape.studies import phase as study

        return getattr(study, name)
    raise AttributeError(f"module 'zooscape.phase' has no attribute {name!r}")
