"""Hessian rows of ``metrics run --metric hessian`` (:mod:`zooscape.studies.metrics`): eigenvalues, trace, loss and,
with ``density_steps > 0``, summaries of the spectral density (stochastic Lanczos quadrature)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Spectral mass counts as negative below ``-NEGATIVE_MASS_TOL`` times the largest ``|eigenvalue|`` estimate (the
#: near-zero bulk of an over-parameterised network's spectrum must not flip in and out with rounding).
NEGATIVE_MASS_TOL = 1e-3


def density_values(density: Any) -> dict[str, float]:
    """Catalog rows summarising one model's :class:`~zooscape.landscape.SpectralDensity` (SLQ).

    ``hessian_density_min`` / ``hessian_density_max``: the smallest and largest Ritz values (estimates of the extreme
    eigenvalues); ``hessian_negative_mass``: the quadrature weight below ``-NEGATIVE_MASS_TOL * max |node|``,
    averaged over the probes (the fraction of the spectrum at negative curvature; Ghorbani, Krishnan and Xiao,
    2019); ``hessian_density_trace``: the trace the quadrature implies.
    """
    lo, hi = density.eigenvalue_range()
    mask = density.weights > 0
    scale = float(density.nodes[mask].abs().max()) if bool(mask.any()) else 0.0
    negative = (density.weights * (density.nodes < -NEGATIVE_MASS_TOL * scale)).sum(dim=1).mean()
    return {"hessian_density_min": lo, "hessian_density_max": hi, "hessian_negative_mass": float(negative),
            "hessian_density_trace": density.trace()}


def hessian_values(eig: Any, tr: Any, loss: float, params: Mapping[str, Any],
                   density: Any | None = None) -> dict[str, float]:
    """The catalog rows of one model's Hessian metric from its eigenpairs, trace estimate, loss and (optionally)
    spectral density."""
    out = {"hessian_top_eigenvalue": float(eig.eigenvalues[0]),
           "hessian_top_eigenvalue_residual": float(eig.residuals[0]),
           "hessian_trace": tr.estimate, "hessian_trace_se": tr.std_error, "hessian_loss": loss}
    for i in range(1, params["top_k"]):
        out[f"hessian_eigenvalue_{i + 1}"] = float(eig.eigenvalues[i])
    if density is not None:
        out.update(density_values(density))
    return out
