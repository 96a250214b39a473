"""Closed-form ridge regression with the penalty chosen on validation R².

References:
    Hoerl & Kennard (1970), "Ridge Regression"; Schürholt et al. (2022), "Model Zoos" (17 penalties 1e3..1e-5
    chosen on validation R²).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["DEFAULT_ALPHAS", "RidgeRegression", "fit_ridge", "r2_score", "standardizer"]

#: 17 penalties, 1e3 down to 1e-5 in half-decade steps.
DEFAULT_ALPHAS: tuple[float, ...] = tuple(10.0 ** (3 - k / 2) for k in range(17))


def r2_score(y_true: Tensor, y_pred: Tensor) -> float:
    """Coefficient of determination ``1 - MSE / Var(y_true)``.

    Args:
        y_true: ``[N]``.
        y_pred: ``[N]``.

    Returns:
        float (NaN when ``y_true`` is constant or empty).
    """
    if y_true.shape != y_pred.shape or y_true.dim() != 1:
        raise ValueError(f"y_true and y_pred must both have shape [N], got {tuple(y_true.shape)} and "
                         f"{tuple(y_pred.shape)}")
    if y_true.numel() == 0:
        return math.nan
    yt, yp = y_true.double(), y_pred.double()
    var = yt.var(correction=0)
    if float(var) == 0.0:
        return math.nan
    return float(1.0 - ((yt - yp) ** 2).mean() / var)


def standardizer(x: Tensor, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Mean and scale of each column (scale 1 for constant columns).

    Args:
        x: ``[N, D]``.
        eps: columns with standard deviation below this are not scaled.

    Returns:
        (mean ``[D]``, scale ``[D]``).
    """
    mean = x.mean(dim=0)
    std = x.std(dim=0, correction=0)
    return mean, torch.where(std > eps, std, torch.ones_like(std))


class RidgeRegression:
    """Ridge regression ``min_w ||y - Xw - b||² + alpha ||w||²`` on standardised features, solved in closed form
    (float64, via the SVD of the centred design matrix, so it works for D > N as well).

    Args:
        alpha: penalty (> 0).

    Attributes (after :meth:`fit`):
        coef_: ``[D]`` weights on the original feature scale. intercept_: float.

    References:
        Hoerl & Kennard (1970).
    """

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def fit(self, x: Tensor, y: Tensor) -> RidgeRegression:
        """Fit the model.

        Args:
            x: ``[N, D]`` features.
            y: ``[N]`` targets.

        Returns:
            self.
        """
        self._fit_path(x, y, [self.alpha])
        return self

    def _fit_path(self, x: Tensor, y: Tensor, alphas: Sequence[float]) -> list[tuple[Tensor, float]]:
        """Solutions for several penalties from one SVD; sets the attributes for the last one."""
        if x.dim() != 2 or y.shape != (x.shape[0],):
            raise ValueError(f"x must be [N, D] and y [N], got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.shape[0] < 1:
            raise ValueError("ridge regression needs at least one sample")
        if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(y).all()):
            raise ValueError("x and y must be finite")
        for a in alphas:
            if not a > 0:
                raise ValueError(f"alpha must be > 0, got {a}")
        xd, yd = x.double(), y.double()
        mean, scale = standardizer(xd)
        z = (xd - mean) / scale
        y_mean = yd.mean()
        u, s, vh = torch.linalg.svd(z, full_matrices=False)
        uty = u.T @ (yd - y_mean)
        out = []
        for a in alphas:
            w_std = vh.T @ (s / (s * s + a) * uty)
            coef = w_std / scale
            out.append((coef, float(y_mean - mean @ coef)))
        self.coef_, self.intercept_ = out[-1]
        self.alpha = alphas[-1]
        return out

    def predict(self, x: Tensor) -> Tensor:
        """Predict targets.

        Args:
            x: ``[N, D]`` features.

        Returns:
            ``[N]`` float64 predictions.
        """
        if not hasattr(self, "coef_"):
            raise RuntimeError("RidgeRegression is not fitted; call fit first")
        return x.double().to(self.coef_.device) @ self.coef_ + self.intercept_

    def score(self, x: Tensor, y: Tensor) -> float:
        """R² of the predictions.

        Args:
            x: ``[N, D]`` features.
            y: ``[N]`` targets.

        Returns:
            float.
        """
        return r2_score(y.double().to(self.coef_.device), self.predict(x))


def fit_ridge(
    x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor, alphas: Sequence[float] = DEFAULT_ALPHAS
) -> tuple[RidgeRegression, list[float]]:
    """Fit ridge regressions for every penalty and keep the one with the best validation R² (ties: larger alpha).

    Args:
        x_train: ``[N, D]``.
        y_train: ``[N]``.
        x_val: ``[M, D]`` (M >= 1).
        y_val: ``[M]``.
        alphas: candidate penalties.

    Returns:
        (fitted model, validation R² per alpha).

    References:
        Schürholt et al. (2022), Model Zoos (penalty selection on validation R²).
    """
    if len(alphas) == 0:
        raise ValueError("alphas must not be empty")
    if x_val.shape[0] < 1:
        raise ValueError("penalty selection needs a non-empty validation split")
    model = RidgeRegression()
    path = model._fit_path(x_train, y_train, list(alphas))
    yv = y_val.double().to(path[0][0].device)
    xv = x_val.double().to(path[0][0].device)
    scores = [r2_score(yv, xv @ coef + b) for coef, b in path]
    finite = [(-math.inf if math.isnan(s) else s) for s in scores]
    best = max(range(len(alphas)), key=lambda i: (finite[i], alphas[i]))
    model.coef_, model.intercept_ = path[best]
    model.alpha = alphas[best]
    return model, scores
