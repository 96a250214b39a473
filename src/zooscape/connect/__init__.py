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
from zooscape.connect.bn import clear_bn_stats, has_batchnorm, recompute_bn_stats, reset_bn_stats
from zooscape.connect.distance import l2_distance
from zooscape.connect.interpolate import (
    BN_MODES,
    check_compatible,
    check_compatible_states,
    interpolate,
    interpolate_state,
)
from zooscape.connect.metrics import evaluate_model
from zooscape.connect.path import LinearPath, linear_path, linear_paths, path_alphas
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
    "linear_paths",
    "path_alphas",
    "clear_bn_stats",
    "recompute_bn_stats",
    "reset_bn_stats",
]

# Curve mode connectivity (Bezier / PolyChain curves, curve training, evaluation with mc, planes); see docs/curves.md.
from zooscape.connect.curve import (  # noqa: E402
    CURVE_KINDS,
    Curve,
    bezier_coefficients,
    curve_coefficients,
    load_curve,
    polychain_coefficients,
    save_curve,
)
from zooscape.connect.curve_eval import (  # noqa: E402
    CurveEvaluation,
    curve_stats,
    curve_ts,
    evaluate_curve,
    evaluate_curves,
    mode_connectivity,
    segment_lengths,
)
from zooscape.connect.curve_population import train_curves  # noqa: E402
from zooscape.connect.curve_train import (  # noqa: E402
    CurveTrainConfig,
    CurveTrainResult,
    garipov_lr_factor,
    train_curve,
)
from zooscape.connect.plane import Plane, PlaneGrid, curve_plane, evaluate_plane  # noqa: E402

__all__ += [
    "CURVE_KINDS",
    "Curve",
    "CurveEvaluation",
    "CurveTrainConfig",
    "CurveTrainResult",
    "Plane",
    "PlaneGrid",
    "bezier_coefficients",
    "curve_coefficients",
    "curve_plane",
    "curve_stats",
    "curve_ts",
    "evaluate_curve",
    "evaluate_curves",
    "evaluate_plane",
    "garipov_lr_factor",
    "load_curve",
    "mode_connectivity",
    "polychain_coefficients",
    "save_curve",
    "segment_lengths",
    "train_curve",
    "train_curves",
]
