"""zooscape.connect: mode connectivity as pure functions of (models, data).

Linear interpolation (:func:`interpolate`), linear paths with loss/error curves, endpoint distance and
barriers (:func:`linear_path`), the three barrier definitions (:mod:`zooscape.connect.barrier`) and exact
BatchNorm re-estimation (:mod:`zooscape.connect.bn`), and the instability (spawn) analysis
(:func:`instability_analysis`, which trains with ``zooscape.train``). Plots: :mod:`zooscape.connect.plot`.
See ``docs/connectivity.md``.

This package never imports ``zooscape.zoo`` or ``zooscape.cli``.
"""

from zooscape.connect.barrier import (
    BARRIER_DEFINITIONS,
    barrier,
    barrier_linear,
    barrier_mean,
    barrier_midpoint,
    barriers,
)
from zooscape.connect.bn import has_batchnorm, recompute_bn_stats, reset_bn_stats
from zooscape.connect.distance import l2_distance
from zooscape.connect.interpolate import (
    BN_MODES,
    check_compatible,
    check_compatible_states,
    interpolate,
    interpolate_state,
)
from zooscape.connect.metrics import evaluate_model
from zooscape.connect.path import LinearPath, linear_path, path_alphas
from zooscape.connect.spawn import InstabilityResult, barrier_table, instability_analysis

__all__ = [
    "BARRIER_DEFINITIONS",
    "BN_MODES",
    "InstabilityResult",
    "LinearPath",
    "barrier",
    "barrier_linear",
    "barrier_mean",
    "barrier_midpoint",
    "barrier_table",
    "barriers",
    "check_compatible",
    "check_compatible_states",
    "evaluate_model",
    "has_batchnorm",
    "instability_analysis",
    "interpolate",
    "interpolate_state",
    "l2_distance",
    "linear_path",
    "path_alphas",
    "recompute_bn_stats",
    "reset_bn_stats",
]
