"""Phase classification of grid cells (Yang et al. 2021 taxonomy) from stated thresholds.

Yang, Hodgkinson, Theisen, Zou, Gonzalez, Ramchandran, Mahoney (2021), "Taxonomizing local versus global
structure in neural network loss landscapes", sort the cells of a temperature x load grid into five phases:

=======  ============  =========  =========================  ==========
phase    training loss  Hessian   mode connectivity ``mc``    CKA
=======  ============  =========  =========================  ==========
I        high           sharp     ``mc < 0`` (barrier)        --
II       high           sharp     ``mc > 0``                  --
III      low            flat      ``mc < 0`` (barrier)        --
IV-A     low            flat      ``mc ~ 0`` (connected)      low
IV-B     low            flat      ``mc ~ 0`` (connected)      high
=======  ============  =========  =========================  ==========

Each criterion compares one column of a :func:`zooscape.phase.cell_table` (``<metric>_mean`` and
``<metric>_std``, the spread over a cell's seeds or seed pairs) with a threshold (:data:`DEFAULT_THRESHOLDS`):

- loss: ``loss_metric`` above ``loss_threshold`` is "high", below is "low";
- mode connectivity: with high loss, ``mc_metric`` below 0 is phase I and above 0 phase II; with low loss,
  below ``-mc_tol`` is phase III and above it "~ 0" (phase IV);
- CKA: ``cka_metric`` below ``cka_threshold`` is IV-A, above IV-B;
- sharpness (optional, off by default): when ``sharpness_threshold`` is set, ``sharpness_metric`` above it is
  "sharp" (phases I, II) and below it "flat" (III, IV). In Yang et al. sharpness follows the loss, so by
  default the loss alone separates {I, II} from {III, IV}.

A metric *straddles* its threshold when the interval ``mean +- k_std * std`` contains it (a missing std, e.g.
one seed pair, counts as 0; a missing mean straddles every threshold). Every phase consistent with the possible
sides of all criteria is a *candidate*: one candidate is the cell's phase, several make the cell ``uncertain``
(its candidates are listed, nothing is forced), none (e.g. low loss but sharp) makes it ``unclassified``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

__all__ = ["DEFAULT_THRESHOLDS", "PHASES", "UNCERTAIN", "UNCLASSIFIED", "classify", "classify_values",
           "threshold_settings"]

#: The five phases of Yang et al. (2021), in order.
PHASES: tuple[str, ...] = ("I", "II", "III", "IV-A", "IV-B")
#: Label of a cell with several candidate phases.
UNCERTAIN = "uncertain"
#: Label of a cell whose metrics match no phase of the taxonomy.
UNCLASSIFIED = "unclassified"

#: Classification settings (``[phase.thresholds]`` keys of a study spec) and their defaults.
DEFAULT_THRESHOLDS: dict[str, Any] = {
    "loss_metric": "train_loss",                 # training cross-entropy at the study epoch
    "loss_threshold": 0.1,                       # high loss above (nats; ~ 97% training accuracy)
    "mc_metric": "curve_mc_loss_train",          # Bezier mode connectivity of the training loss
    "mc_tol": 0.05,                              # |mc| <= mc_tol counts as "mc ~ 0" (loss units)
    "cka_metric": "cka",                         # linear CKA of the outputs of a cell's seed pairs
    "cka_threshold": 0.9,                        # high CKA above
    "sharpness_metric": "hessian_log_top_eigenvalue",  # log10 of the Hessian's top eigenvalue
    "sharpness_threshold": None,                 # None: sharpness not used (it follows the loss)
    "k_std": 1.0,                                # straddle interval: mean +- k_std * std over seeds
}

_NUMBER_KEYS = ("loss_threshold", "mc_tol", "cka_threshold", "sharpness_threshold", "k_std")
_METRIC_KEYS = ("loss_metric", "mc_metric", "cka_metric", "sharpness_metric")


def threshold_settings(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validated classification settings: :data:`DEFAULT_THRESHOLDS` updated with ``overrides``.

    Args:
        overrides: settings to change (keys of :data:`DEFAULT_THRESHOLDS`).

    Returns:
        dict of settings.

    Raises:
        ValueError: unknown key or invalid value (the message names the key and the value).
    """
    settings = dict(DEFAULT_THRESHOLDS)
    for key, value in (overrides or {}).items():
        if key not in settings:
            raise ValueError(f"unknown threshold setting {key!r} (settings: {', '.join(DEFAULT_THRESHOLDS)})")
        settings[key] = value
    for key in _NUMBER_KEYS:
        value = settings[key]
        if value is None and key == "sharpness_threshold":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"threshold setting {key!r} must be a finite number, got {value!r}")
    for key in ("mc_tol", "k_std"):
        if settings[key] < 0:
            raise ValueError(f"threshold setting {key!r} must be >= 0, got {settings[key]!r}")
    for key in _METRIC_KEYS:
        if not isinstance(settings[key], str) or not settings[key]:
            raise ValueError(f"threshold setting {key!r} must be a metric name, got {settings[key]!r}")
    return settings


def _sides(mean: float, std: float, threshold: float, k: float) -> set[str]:
    """Which sides of ``threshold`` the interval ``mean +- k * std`` reaches: subset of {"below", "above"}."""
    if mean is None or not math.isfinite(mean):
        return {"below", "above"}
    spread = 0.0 if std is None or not math.isfinite(std) else k * abs(std)
    if spread == 0:
        return {"below"} if mean < threshold else {"above"}  # exactly on it: the upper side
    sides = set()
    if mean - spread <= threshold:
        sides.add("below")
    if mean + spread >= threshold:
        sides.add("above")
    return sides


def classify_values(values: Mapping[str, tuple[float, float]], thresholds: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Classify one cell from ``(mean, std)`` of each criterion.

    Args:
        values: ``{"loss": (mean, std), "mc": (...), "cka": (...), "sharpness": (...)}``; a missing entry
            counts as unknown (it straddles).
        thresholds: settings (see :func:`threshold_settings`).

    Returns:
        dict with ``phase`` (a phase, ``"uncertain"`` or ``"unclassified"``), ``candidates`` (tuple of phases),
        ``straddles`` (tuple of criteria whose interval contains their threshold, or that are missing).
    """
    t = threshold_settings(thresholds)
    k = float(t["k_std"])
    nan = (math.nan, math.nan)
    loss = _sides(*values.get("loss", nan), t["loss_threshold"], k)
    mc_high = _sides(*values.get("mc", nan), 0.0, k)
    mc_low = _sides(*values.get("mc", nan), -float(t["mc_tol"]), k)
    cka = _sides(*values.get("cka", nan), t["cka_threshold"], k)
    sharp = {"below", "above"} if t["sharpness_threshold"] is None \
        else _sides(*values.get("sharpness", nan), t["sharpness_threshold"], k)
    candidates = []
    if "above" in loss and "above" in sharp:  # high loss, sharp
        if "below" in mc_high:
            candidates.append("I")
        if "above" in mc_high:
            candidates.append("II")
    if "below" in loss and "below" in sharp:  # low loss, flat
        if "below" in mc_low:
            candidates.append("III")
        if "above" in mc_low:
            if "below" in cka:
                candidates.append("IV-A")
            if "above" in cka:
                candidates.append("IV-B")
    straddles = []
    for name, sides in (("loss", loss), ("sharpness", sharp), ("cka", cka)):
        if len(sides) == 2 and not (name == "sharpness" and t["sharpness_threshold"] is None):
            straddles.append(name)
    if len(mc_high) == 2 and "above" in loss or len(mc_low) == 2 and "below" in loss:
        straddles.append("mc")
    phase = candidates[0] if len(candidates) == 1 else (UNCERTAIN if candidates else UNCLASSIFIED)
    return {"phase": phase, "candidates": tuple(candidates), "straddles": tuple(sorted(straddles))}


def classify(table: pd.DataFrame, thresholds: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Classify every cell (row) of a cell table into a phase of Yang et al. (2021).

    Args:
        table: one row per cell with ``<metric>_mean`` (and optionally ``<metric>_std``) columns for the
            metrics named by the thresholds (:func:`zooscape.phase.cell_table` produces it).
        thresholds: settings overriding :data:`DEFAULT_THRESHOLDS`.

    Returns:
        A copy of ``table`` with columns ``phase`` (one of :data:`PHASES`, ``"uncertain"`` or
        ``"unclassified"``), ``phase_candidates`` (``"|"``-joined candidate phases), ``phase_uncertain`` (bool),
        ``phase_straddles`` (``","``-joined criteria that straddle their threshold) and ``phase_of_means`` (the
        classification of the means alone, i.e. ``k_std = 0``: a best guess for uncertain cells).

    Raises:
        KeyError: a metric column needed by the thresholds is missing (the message lists the columns).
        ValueError: invalid thresholds.

    References:
        Yang et al. (2021), "Taxonomizing local versus global structure in neural network loss landscapes".
    """
    t = threshold_settings(thresholds)
    criteria = {"loss": t["loss_metric"], "mc": t["mc_metric"], "cka": t["cka_metric"]}
    if t["sharpness_threshold"] is not None:
        criteria["sharpness"] = t["sharpness_metric"]
    for name, metric in criteria.items():
        if f"{metric}_mean" not in table.columns:
            raise KeyError(f"classify: column {metric + '_mean'!r} (threshold setting '{name}_metric' = {metric!r}) "
                           f"is not in the table; columns: {sorted(table.columns)}")
    out = table.copy()
    phases, candidates, uncertain, straddles, of_means = [], [], [], [], []
    for _, row in table.iterrows():
        values = {}
        for name, metric in criteria.items():
            std = row[f"{metric}_std"] if f"{metric}_std" in table.columns else math.nan
            values[name] = (float(row[f"{metric}_mean"]), float(std) if std is not None else math.nan)
        res = classify_values(values, t)
        guess = classify_values({n: (m, 0.0) for n, (m, _) in values.items()}, t)
        phases.append(res["phase"])
        candidates.append("|".join(res["candidates"]))
        uncertain.append(res["phase"] == UNCERTAIN)
        straddles.append(",".join(res["straddles"]))
        of_means.append(guess["phase"])
    out["phase"] = phases
    out["phase_candidates"] = candidates
    out["phase_uncertain"] = uncertain
    out["phase_straddles"] = straddles
    out["phase_of_means"] = of_means
    return out
