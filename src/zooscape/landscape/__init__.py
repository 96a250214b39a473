"""zooscape.landscape: loss-landscape metrics as pure functions of (model, data).

One module per concept:

- :mod:`zooscape.landscape.hessian`  Hessian top eigenvalues, trace and spectral density (matrix-free, torch.func)

Nothing here imports :mod:`zooscape.zoo` or :mod:`zooscape.cli`, and no function modifies the model it is given.
"""

from zooscape.landscape.hessian import (
    DenseOperator,
    EigenResult,
    HessianOperator,
    LanczosResult,
    LinearOperator,
    SpectralDensity,
    TraceEstimate,
    dense_matrix,
    hessian_operator,
    hutchinson_trace,
    hutchpp_trace,
    lanczos,
    lanczos_eigenvalues,
    power_iteration,
    spectral_density,
    top_eigenvalues,
    trace,
)

__all__ = [
    "DenseOperator",
    "EigenResult",
    "HessianOperator",
    "LanczosResult",
    "LinearOperator",
    "SpectralDensity",
    "TraceEstimate",
    "dense_matrix",
    "hessian_operator",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos",
    "lanczos_eigenvalues",
    "power_iteration",
    "spectral_density",
    "top_eigenvalues",
    "trace",
]
