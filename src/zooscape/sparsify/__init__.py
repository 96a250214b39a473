"""zooscape.sparsify: sparsified twins (variational dropout) and one-shot pruning with re-normalisation.

Pure functions of models and data (never imports :mod:`zooscape.zoo` or :mod:`zooscape.cli`):

- :func:`to_ard` / :func:`from_ard`: variational-dropout (ARD) versions of a model's Linear/Conv2d layers
  (Molchanov et al. 2017) and back to the deterministic sparse model; :func:`sparsity_ratio`;
- :func:`train_twins`: a population of sparsified twins trained at once by :func:`zooscape.train.train_population`;
- :func:`prune`: one-shot pruning (``globalmagni``, ``magni``, ``diagfisher``, ``woodfisherblock``) with the masks
  kept in the model (:func:`saliencies`: the scores it ranks by; :func:`prune_by_saliency`: pruning by a
  saliency of your own); :func:`renormalize`: reset-BN / REPAIR / RESCALE
  after pruning (:mod:`zooscape.align`'s code);
  :func:`pruned_barrier`: the linear-mode-connectivity barrier between two pruned models.

See docs/sparsify.md.
"""

from .ard import (
    ESTIMATORS,
    K1,
    K2,
    K3,
    LOG_SIGMA2_INIT,
    THRESHOLD,
    ARDControl,
    ARDConv2d,
    ARDLinear,
    ard_kl,
    from_ard,
    kl_approx,
    kl_weight,
    log_alpha,
    sparse_state_dict,
    sparsity_ratio,
    to_ard,
)
from .pop_ard import PopARDConv2d, PopARDLinear
from .prune import (
    FISHERS,
    PRUNERS,
    apply_masks,
    load_pruned,
    masks,
    obd_scores,
    obs_scores,
    obs_update,
    prune,
    prune_by_saliency,
    saliencies,
    strip_masks,
)
from .renorm import RENORM_METHODS, pruned_barrier, renormalize
from .twins import KL_REDUCTIONS, TWIN_CONFIG, population_twin_metrics, train_twins, twin_metrics

__all__ = [
    "ESTIMATORS", "FISHERS", "K1", "K2", "K3", "KL_REDUCTIONS", "LOG_SIGMA2_INIT", "PRUNERS", "RENORM_METHODS",
    "THRESHOLD", "TWIN_CONFIG", "ARDControl", "ARDConv2d", "ARDLinear", "PopARDConv2d", "PopARDLinear", "apply_masks",
    "ard_kl", "from_ard", "kl_approx", "kl_weight", "load_pruned", "log_alpha", "masks", "obd_scores", "obs_scores",
    "obs_update", "population_twin_metrics", "prune", "prune_by_saliency", "pruned_barrier", "renormalize",
    "saliencies", "sparse_state_dict", "sparsity_ratio", "strip_masks", "to_ard", "train_twins", "twin_metrics",
]
