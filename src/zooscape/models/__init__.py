"""zooscape.models: a registry of population-compatible model families.

``create_model(name, **kw)`` builds any registered model (``list_models()``): ``mlp``, Model Zoos'
``cnn_s`` and ``cnn_l``, ``lenet5``, ``resnet18``/``resnet20`` (width knob) and CIFAR VGGs
``vgg{11,13,16,19}{,_bn,_ln,_nobias}``. All models are built from standard leaf modules (Linear, Conv2d,
BatchNorm, GroupNorm, LayerNorm, Dropout, pooling, Flatten, activations) with forward code that never
hard-codes channel counts, so the trainer can run a population of N copies as one wide network with the
population folded into the channel dimension. Other codebases' names are aliases (``list_aliases()``, e.g. the
Rethink Re-Basin code's ``cifar_vgg16_bn_4x``; :mod:`zooscape.models.aliases`).
"""

from zooscape.models import (  # noqa: F401  (register the families; aliases imports the families it names)
    aliases,
    cnn_l,
    cnn_s,
    lenet,
    mlp,
    resnet,
    vgg,
)
from zooscape.models.activations import ACTIVATIONS, get_activation
from zooscape.models.initialization import INIT_SCHEMES, init_weights
from zooscape.models.norms import NORMS
from zooscape.models.params import count_parameters
from zooscape.models.registry import (
    create_model,
    get_model_entry,
    list_aliases,
    list_models,
    register_alias,
    register_model,
)

__all__ = [
    "ACTIVATIONS",
    "INIT_SCHEMES",
    "NORMS",
    "count_parameters",
    "create_model",
    "get_activation",
    "get_model_entry",
    "init_weights",
    "list_aliases",
    "list_models",
    "register_alias",
    "register_model",
]
