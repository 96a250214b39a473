"""zooscape.align: permutation alignment and merging of neural networks.

Pure functions of models and data (never imports :mod:`zooscape.zoo` or :mod:`zooscape.cli`):

- :func:`permutation_spec` derives the permutation symmetries of a model from its torch.fx graph;
- :func:`apply_permutation` permutes parameters *and* buffers without changing the function;
- :func:`weight_matching` / :func:`activation_matching` align one model to another;
- :func:`merge` merges N >= 2 models (MergeMany), optionally renormalised with :func:`renormalize`
  (reset BatchNorm, REPAIR, RESCALE, RESHIFT).

See docs/alignment.md.
"""

from .activation_matching import activation_matching, capture_activations
from .merge import MergeResult, average_state_dicts, merge
from .permutation import AlignResult, Permutation, apply_permutation, permute_state_dict
from .renorm import RENORM_METHODS, CorrectionPoint, correction_points, renormalize, repair, reset_bn_stats
from .spec import ActivationPoint, AxisPerm, PermutationSpec
from .trace import permutation_spec
from .weight_matching import infer_example_input, weight_matching, weight_matching_state_dicts

__all__ = [
    "RENORM_METHODS", "ActivationPoint", "AlignResult", "AxisPerm", "CorrectionPoint", "MergeResult",
    "Permutation", "PermutationSpec", "activation_matching", "apply_permutation", "average_state_dicts",
    "capture_activations", "correction_points", "infer_example_input", "merge", "permutation_spec",
    "permute_state_dict", "renormalize", "repair", "reset_bn_stats", "weight_matching",
    "weight_matching_state_dicts",
]
