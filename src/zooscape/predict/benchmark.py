"""The Model Zoos property-prediction benchmark: W / W-stats features -> ridge regression or a linear classifier.

>>> from zooscape.predict import predict_properties, format_scores
>>> ds = zoo.dataset(epochs="all", properties=["test_acc", "ggap", "model.activation"])   # doctest: +SKIP
>>> print(format_scores(predict_properties(ds)))                                         # doctest: +SKIP

References:
    Schürholt, Taskiran, Knyazev, Giró-i-Nieto & Borth (2022), "Model Zoos: A Dataset of Diverse Populations of
    Neural Network Models" (Section 5: W and W-stats baselines, ridge regression / linear classification);
    Unterthiner et al. (2020), "Predicting Neural Network Accuracy from Weights".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from zooscape.predict.classifier import fit_classifier
from zooscape.predict.features import FEATURE_KINDS, make_features
from zooscape.predict.ridge import DEFAULT_ALPHAS, fit_ridge

__all__ = ["PropertyScore", "format_scores", "predict_properties", "scores_frame"]


@dataclass(frozen=True)
class PropertyScore:
    """Scores of one (property, feature kind) pair.

    Args:
        property: property name.
        features: ``"w"`` or ``"wstats"``.
        task: ``"regression"`` or ``"classification"``.
        metric: ``"r2"`` or ``"accuracy"``.
        train: score on the training split.
        val: score on the validation split (used to choose ``alpha``).
        test: score on the test split.
        alpha: the chosen penalty.
        n_features: number of features.
        n_train: training samples.
        n_val: validation samples.
        n_test: test samples.
    """

    property: str
    features: str
    task: str
    metric: str
    train: float
    val: float
    test: float
    alpha: float
    n_features: int
    n_train: int
    n_val: int
    n_test: int


def predict_properties(
    datasets: Any,
    properties: Sequence[str] | None = None,
    features: Sequence[str] = FEATURE_KINDS,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> list[PropertyScore]:
    """Predict properties from weights: ridge regression (numeric) or a linear classifier (categorical).

    For every property and feature kind the penalty is chosen on the validation split (R² / accuracy) among
    ``alphas``; the scores on train/val/test are reported.

    Args:
        datasets: :class:`zooscape.zoo.weights.ZooDatasets` (from ``zoo.dataset(...)``).
        properties: subset of ``datasets.properties`` (default all).
        features: feature kinds (``"w"`` raw weights, ``"wstats"`` per-parameter statistics).
        alphas: candidate penalties.

    Returns:
        list of :class:`PropertyScore`, one per (property, feature kind).

    Raises:
        ValueError: the train or validation split is empty. KeyError: unknown property.

    References:
        Schürholt et al. (2022), Model Zoos.
    """
    props = list(datasets.properties if properties is None else properties)
    for p in props:
        if p not in datasets.properties:
            raise KeyError(f"unknown property {p!r}; the data sets hold {list(datasets.properties)}")
    for kind in features:
        if kind not in FEATURE_KINDS:
            raise ValueError(f"features must be among {FEATURE_KINDS}, got {kind!r}")
    train, val, test = datasets.train, datasets.val, datasets.test
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"property prediction needs non-empty train and val splits, got {len(train)} train, "
                         f"{len(val)} val samples (check split= and the filters: {datasets.report.summary()})")
    imap = datasets.index_map
    out = []
    for kind in features:
        xs = [make_features(s.weights, imap, kind)[0] for s in (train, val, test)]
        for p in props:
            ys = [s.properties[p] for s in (train, val, test)]
            if datasets.is_categorical(p):
                n_classes = max(len(datasets.classes[p]), 2)
                model, _ = fit_classifier(xs[0], ys[0], xs[1], ys[1], n_classes, alphas)
                task, metric = "classification", "accuracy"
            else:
                model, _ = fit_ridge(xs[0], ys[0], xs[1], ys[1], alphas)
                task, metric = "regression", "r2"
            scores = [model.score(x, y) if len(y) else float("nan") for x, y in zip(xs, ys)]
            out.append(PropertyScore(p, kind, task, metric, *scores, alpha=float(model.alpha),
                                     n_features=int(xs[0].shape[1]), n_train=len(train), n_val=len(val),
                                     n_test=len(test)))
    return out


def scores_frame(scores: Sequence[PropertyScore]) -> Any:
    """Scores as a pandas DataFrame (one row per property and feature kind).

    Args:
        scores: from :func:`predict_properties`.

    Returns:
        DataFrame.
    """
    import pandas as pd

    return pd.DataFrame([asdict(s) for s in scores])


def format_scores(scores: Sequence[PropertyScore]) -> str:
    """A plain-text table: property, features, metric, train/val/test scores, alpha.

    Args:
        scores: from :func:`predict_properties`.

    Returns:
        str.
    """
    header = f"{'property':<24} {'features':<8} {'metric':<8} {'train':>8} {'val':>8} {'test':>8} {'alpha':>8}"
    lines = [header, "-" * len(header)]
    for s in scores:
        lines.append(f"{s.property:<24} {s.features:<8} {s.metric:<8} {s.train:>8.4f} {s.val:>8.4f} "
                     f"{s.test:>8.4f} {s.alpha:>8.2g}")
    return "\n".join(lines)
