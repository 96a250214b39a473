"""A linear (multinomial logistic) classifier for categorical properties, penalty chosen on validation accuracy.

References:
    Schürholt et al. (2022), "Model Zoos" (linear classifiers on W / W-stats for categorical properties).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from zooscape.predict.ridge import DEFAULT_ALPHAS, standardizer

__all__ = ["LinearClassifier", "accuracy_score", "fit_classifier"]


def accuracy_score(y_true: Tensor, y_pred: Tensor) -> float:
    """Fraction of equal labels.

    Args:
        y_true: ``[N]`` int.
        y_pred: ``[N]`` int.

    Returns:
        float (NaN when empty).
    """
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must have equal shapes, got {tuple(y_true.shape)}, "
                         f"{tuple(y_pred.shape)}")
    if y_true.numel() == 0:
        return math.nan
    return float((y_true.to(y_pred.device) == y_pred).double().mean())


class LinearClassifier:
    """Softmax regression on standardised features: minimises the mean cross-entropy plus
    ``alpha / 2 * ||W||²`` (the intercepts are not penalised) with full-batch L-BFGS in float64.

    Args:
        n_classes: number of classes C (>= 2).
        alpha: L2 penalty (>= 0).
        max_iter: L-BFGS iterations.

    Attributes (after :meth:`fit`):
        coef_: ``[D, C]`` on the standardised scale; intercept_: ``[C]``.
    """

    def __init__(self, n_classes: int, alpha: float = 1e-3, max_iter: int = 100) -> None:
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.n_classes = int(n_classes)
        self.alpha = float(alpha)
        self.max_iter = int(max_iter)

    def fit(self, x: Tensor, y: Tensor, init: tuple[Tensor, Tensor] | None = None) -> LinearClassifier:
        """Fit on ``x`` ``[N, D]`` and class indices ``y`` ``[N]`` in ``[0, C)``.

        Args:
            x: features.
            y: labels.
            init: optional warm start ``(coef_, intercept_)``.

        Returns:
            self.
        """
        if x.dim() != 2 or y.shape != (x.shape[0],):
            raise ValueError(f"x must be [N, D] and y [N], got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.shape[0] < 1 or not bool(torch.isfinite(x).all()):
            raise ValueError("x must be non-empty and finite")
        if int(y.min()) < 0 or int(y.max()) >= self.n_classes:
            raise ValueError(f"labels must be in [0, {self.n_classes}), got range [{int(y.min())}, {int(y.max())}]")
        xd = x.double()
        self._mean, self._scale = standardizer(xd)
        z = (xd - self._mean) / self._scale
        yl = y.long().to(z.device)
        # With D > N the optimum lies in the row space of z (representer theorem): optimise Γ in
        # z = U S Vᵀ, W = V Γ, so logits = (U S) Γ and ||W||² = ||Γ||² -- the same problem in N dimensions.
        basis = None
        if z.shape[1] > z.shape[0]:
            u, s, vh = torch.linalg.svd(z, full_matrices=False)
            z, basis = u * s, vh
        d = z.shape[1]
        w = torch.zeros((d, self.n_classes), dtype=torch.float64, device=z.device)
        b = torch.zeros(self.n_classes, dtype=torch.float64, device=z.device)
        if init is not None:
            w, b = init[0].clone(), init[1].clone()
            if basis is not None:
                w = basis @ w
        w.requires_grad_(True)
        b.requires_grad_(True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=self.max_iter, tolerance_grad=1e-7,
                                tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(z @ w + b, yl) + 0.5 * self.alpha * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        w = w.detach()
        self.coef_, self.intercept_ = (w if basis is None else basis.T @ w), b.detach()
        return self

    def decision_function(self, x: Tensor) -> Tensor:
        """Class scores (logits).

        Args:
            x: ``[N, D]`` features.

        Returns:
            ``[N, C]`` float64.
        """
        if not hasattr(self, "coef_"):
            raise RuntimeError("LinearClassifier is not fitted; call fit first")
        z = (x.double().to(self.coef_.device) - self._mean) / self._scale
        return z @ self.coef_ + self.intercept_

    def predict(self, x: Tensor) -> Tensor:
        """Predict classes.

        Args:
            x: ``[N, D]`` features.

        Returns:
            ``[N]`` class indices.
        """
        return self.decision_function(x).argmax(dim=1)

    def score(self, x: Tensor, y: Tensor) -> float:
        """Accuracy of the predictions.

        Args:
            x: ``[N, D]`` features.
            y: ``[N]`` class indices.

        Returns:
            float.
        """
        return accuracy_score(y, self.predict(x))


def fit_classifier(
    x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor, n_classes: int,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> tuple[LinearClassifier, list[float]]:
    """Fit one classifier per penalty (largest first, warm-started) and keep the best on validation accuracy
    (ties: larger alpha).

    Args:
        x_train: ``[N, D]``.
        y_train: ``[N]`` class indices.
        x_val: ``[M, D]`` (M >= 1).
        y_val: ``[M]``.
        n_classes: C.
        alphas: candidate penalties.

    Returns:
        (fitted classifier, validation accuracy per alpha, in the order of ``alphas``).
    """
    if len(alphas) == 0:
        raise ValueError("alphas must not be empty")
    if x_val.shape[0] < 1:
        raise ValueError("penalty selection needs a non-empty validation split")
    order = sorted(range(len(alphas)), key=lambda i: -alphas[i])
    fitted: dict[int, LinearClassifier] = {}
    scores = [math.nan] * len(alphas)
    init = None
    for i in order:
        clf = LinearClassifier(n_classes, alphas[i]).fit(x_train, y_train, init)
        init = (clf.coef_, clf.intercept_)
        fitted[i] = clf
        scores[i] = clf.score(x_val, y_val)
    best = max(range(len(alphas)), key=lambda i: (scores[i], alphas[i]))
    return fitted[best], scores
