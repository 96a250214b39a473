"""zooscape.data: in-memory, seeded data sets for model-zoo generation and analysis.

``load_dataset(name, seed=..., train_fraction=..., label_noise=..., data_root=..., **options)`` returns a
``DataSplits`` with float32 inputs and int64 (classification) / float32 ``[n, 1]`` (regression) targets.
See ``docs/data.md`` for the table of data sets.
"""

from . import bundled, cifar, idx, mnist1d, synthetic  # noqa: F401  (register the data sets)
from .augment import build_augment, random_crop, random_hflip
from .cifar import read_cifar_bin
from .idx import read_idx, write_idx
from .mnist1d import make_mnist1d, mnist1d_templates
from .registry import dataset_options, list_datasets, load_dataset, register_dataset
from .splits import DataSplits

__all__ = [
    "DataSplits",
    "load_dataset",
    "list_datasets",
    "register_dataset",
    "dataset_options",
    "build_augment",
    "random_crop",
    "random_hflip",
    "read_idx",
    "write_idx",
    "read_cifar_bin",
    "make_mnist1d",
    "mnist1d_templates",
]
