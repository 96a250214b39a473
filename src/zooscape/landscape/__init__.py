"""zooscape.landscape: loss-landscape metrics as pure functions of (model, data).

One module per concept:

- :mod:`zooscape.landscape.hessian`  Hessian top eigenvalues, trace and spectral density (matrix-free, torch.func)
- :mod:`zooscape.landscape.cka`      centred kernel alignment, minibatch CKA, layer-by-layer heatmaps
- :mod:`zooscape.landscape.fisher`   diagonal Fisher information (empirical, sampled, exact) and its trace
- :mod:`zooscape.landscape.spectra`  WeightWatcher 0.7.7's weight spectra (alpha and its error, norms, ranks, ...)
- :mod:`zooscape.landscape.rmt`      the ESD fits they use: power-law tail, Marchenko-Pastur bulk, rank, entropy
- :mod:`zooscape.landscape.surface`  1-D/2-D loss surfaces (filter-normalised, trajectory PCA) and PNG plots
- :mod:`zooscape.landscape.population` Hessian metrics of N models per pass through the trainer's stacked population
  (one result per model, equal to the per-model functions'); ``population_fisher`` the Fisher trace, its Gram
  matrices formed layer by layer in ``population_fisher_factors``; ``population_plain`` the plain population
  network a Hessian product differentiates; ``population_density`` the spectral density (SLQ)

Nothing here imports :mod:`zooscape.zoo` or :mod:`zooscape.cli`, and no function modifies the model it is given
(BatchNorm statistics, train/eval flags, ``requires_grad`` flags, gradients and hooks are as before).
"""

from zooscape.landscape.cka import (
    MinibatchCKA,
    cka,
    cka_heatmap,
    default_layers,
    hsic_biased,
    hsic_unbiased,
    layer_features,
)
from zooscape.landscape.fisher import FisherTrace, fisher_diagonal, fisher_trace, fisher_trace_estimate
from zooscape.landscape.hessian import (
    DenseOperator,
    EigenResult,
    HessianOperator,
    LanczosResult,
    LinearOperator,
    dense_matrix,
    hessian_operator,
    lanczos,
    lanczos_eigenvalues,
    power_iteration,
    top_eigenvalues,
)
from zooscape.landscape.population import (
    PopulationHessianOperator,
    population_chunks,
    population_hessian_operator,
    population_top_eigenvalues,
    population_trace,
)
from zooscape.landscape.population_density import population_spectral_density
from zooscape.landscape.population_fisher import population_fisher_trace_estimate
from zooscape.landscape.spectra import (
    LayerSpectrum,
    MPFit,
    PowerLawFit,
    esd,
    fit_power_law,
    jensen_shannon_distance,
    layer_spectrum,
    matrix_rank,
    mp_fit,
    randomized_esd,
    spectra_summary,
    spectral_entropy,
    weight_spectra,
)
from zooscape.landscape.stochastic import (
    SpectralDensity,
    TraceEstimate,
    hutchinson_trace,
    hutchpp_trace,
    spectral_density,
    trace,
)
from zooscape.landscape.surface import (
    Surface,
    TrajectoryPCA,
    loss_surface,
    loss_surface_1d,
    loss_surface_2d,
    loss_surface_pca,
    normalize_direction,
    plot_surface,
    random_direction,
    trajectory_pca,
)

__all__ = [
    "DenseOperator",
    "EigenResult",
    "FisherTrace",
    "HessianOperator",
    "LanczosResult",
    "LayerSpectrum",
    "LinearOperator",
    "MPFit",
    "MinibatchCKA",
    "PopulationHessianOperator",
    "PowerLawFit",
    "SpectralDensity",
    "Surface",
    "TraceEstimate",
    "TrajectoryPCA",
    "cka",
    "cka_heatmap",
    "default_layers",
    "dense_matrix",
    "esd",
    "fisher_diagonal",
    "fisher_trace",
    "fisher_trace_estimate",
    "fit_power_law",
    "hessian_operator",
    "hsic_biased",
    "hsic_unbiased",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos",
    "lanczos_eigenvalues",
    "matrix_rank",
    "mp_fit",
    "layer_features",
    "jensen_shannon_distance",
    "layer_spectrum",
    "loss_surface",
    "loss_surface_1d",
    "loss_surface_2d",
    "loss_surface_pca",
    "normalize_direction",
    "plot_surface",
    "population_chunks",
    "population_fisher_trace_estimate",
    "population_hessian_operator",
    "population_spectral_density",
    "population_top_eigenvalues",
    "population_trace",
    "power_iteration",
    "random_direction",
    "randomized_esd",
    "spectra_summary",
    "spectral_density",
    "spectral_entropy",
    "top_eigenvalues",
    "trace",
    "trajectory_pca",
    "weight_spectra",
]
