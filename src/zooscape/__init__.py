"""zooscape: generate, store and analyse model zoos (populations of neural networks).

Sub-packages, one concept each:

- :mod:`zooscape.data`      offline data sets as in-memory tensors with seeded splits
- :mod:`zooscape.models`    model registry (``create_model(name, **kw)``)
- :mod:`zooscape.train`     population-first training (one model is a population of one)
- :mod:`zooscape.zoo`       zoo specs, the on-disk store and the engines that fill it
- :mod:`zooscape.connect`   mode connectivity (linear paths, barriers, curves)
- :mod:`zooscape.align`     permutation alignment and merging
- :mod:`zooscape.landscape` Hessian, CKA, Fisher, weight spectra, surfaces
- :mod:`zooscape.cli`       the ``zooscape`` command
"""

__version__ = "0.1.0"
