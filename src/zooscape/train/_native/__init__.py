"""C sources of the native kernels (``convpool.c``, ``adam.c``) and their build cache (:mod:`.cache`).

The kernels' Python API is :mod:`zooscape.train.native`; this package only compiles, caches, verifies and loads
the shared library.
"""
