"""zooscape.predict: predict model properties (accuracy, generalisation gap, hyperparameters) from weights.

Public API:
    :func:`predict_properties` (the Model Zoos benchmark on a ``zoo.dataset(...)``), :class:`PropertyScore`,
    :func:`format_scores`, :func:`scores_frame`; features :func:`weight_stats`, :func:`make_features`,
    :func:`quantiles`; models :class:`RidgeRegression`, :func:`fit_ridge`, :func:`r2_score`,
    :class:`LinearClassifier`, :func:`fit_classifier`, :func:`accuracy_score`.

References:
    Schürholt et al. (2022), "Model Zoos: A Dataset of Diverse Populations of Neural Network Models";
    Unterthiner et al. (2020), "Predicting Neural Network Accuracy from Weights".
"""

from zooscape.predict.benchmark import PropertyScore, format_scores, predict_properties, scores_frame
from zooscape.predict.classifier import LinearClassifier, accuracy_score, fit_classifier
from zooscape.predict.features import FEATURE_KINDS, PERCENTILES, STAT_NAMES, make_features, quantiles, weight_stats
from zooscape.predict.ridge import DEFAULT_ALPHAS, RidgeRegression, fit_ridge, r2_score

__all__ = [
    "DEFAULT_ALPHAS",
    "FEATURE_KINDS",
    "PERCENTILES",
    "STAT_NAMES",
    "LinearClassifier",
    "PropertyScore",
    "RidgeRegression",
    "accuracy_score",
    "fit_classifier",
    "fit_ridge",
    "format_scores",
    "make_features",
    "predict_properties",
    "quantiles",
    "r2_score",
    "scores_frame",
    "weight_stats",
]
