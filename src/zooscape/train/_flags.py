"""The switchboard of the training fast paths: every ``ZOOSCAPE_*`` switch, read once, typed and documented.

Each fast path of population training (see ``docs/architecture.md``, "What makes a population fast") can be
switched off, for debugging and for tests that compare it with the plain path. The environment is read once, on
first use; code and tests change switches with :func:`override` (a context manager), never by patching module
globals. ``zooscape doctor`` prints the switchboard.

=========================  ======================================  ============================================
switch                     environment variable                    meaning
=========================  ======================================  ============================================
``native_kernels``         ``ZOOSCAPE_NATIVE_KERNELS=0``           C conv + pool (+ ReLU) and fused Adam kernels
``native_openmp``          ``ZOOSCAPE_NATIVE_OPENMP=0``            build the kernels with pthreads, not OpenMP
``cache_dir``              ``ZOOSCAPE_CACHE_DIR=DIR``              where the kernels are built (default: XDG)
``channels_last``          ``ZOOSCAPE_CHANNELS_LAST=0|1|auto``     NHWC population tensors (auto: N >= 2)
``shared_input``           ``ZOOSCAPE_SHARED_INPUT=0``             dense first layer when evaluating on one batch
``flat_optim``             ``ZOOSCAPE_FLAT_OPTIM=0``               whole-buffer ``[N, P]`` optimiser updates
``wide_loss``              ``ZOOSCAPE_WIDE_LOSS=0``                cross-entropy over ``[B, K, N]`` (few classes)
``manual_mlp``             ``ZOOSCAPE_MANUAL_MLP=0``               MLP training steps without autograd
``malloc_tune``            ``ZOOSCAPE_MALLOC_TUNE=0``              glibc keeps freed memory (``mallopt``)
=========================  ======================================  ============================================

When a switch is read: ``native_kernels`` at every layer call and optimiser step; ``channels_last`` and
``shared_input`` when a :class:`~zooscape.train.Population` is built; ``flat_optim`` and ``manual_mlp`` when
:func:`~zooscape.train.train_population` starts; ``wide_loss`` at every loss computation; ``malloc_tune`` the
first time the allocator is tuned (once per process: it cannot be undone); ``native_openmp`` and ``cache_dir`` when
the kernels are first built.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["ENV", "Switches", "current", "describe", "from_env", "override"]

#: switch name -> environment variable.
ENV: dict[str, str] = {
    "native_kernels": "ZOOSCAPE_NATIVE_KERNELS",
    "native_openmp": "ZOOSCAPE_NATIVE_OPENMP",
    "cache_dir": "ZOOSCAPE_CACHE_DIR",
    "channels_last": "ZOOSCAPE_CHANNELS_LAST",
    "shared_input": "ZOOSCAPE_SHARED_INPUT",
    "flat_optim": "ZOOSCAPE_FLAT_OPTIM",
    "wide_loss": "ZOOSCAPE_WIDE_LOSS",
    "manual_mlp": "ZOOSCAPE_MANUAL_MLP",
    "malloc_tune": "ZOOSCAPE_MALLOC_TUNE",
}


@dataclass(frozen=True)
class Switches:
    """The fast-path switches (see the module docstring). Defaults: every fast path on.

    Attributes:
        native_kernels: use the native C kernels where they apply (``zooscape.train.native``).
        native_openmp: build the kernels with OpenMP (else pthreads).
        cache_dir: build directory of the kernels (``None``: ``$XDG_CACHE_HOME/zooscape`` or ``~/.cache/zooscape``).
        channels_last: NHWC population tensors: ``True``, ``False`` or ``None`` (auto: populations of 2 or more).
        shared_input: evaluate the first layer of all members on a shared batch as one dense layer.
        flat_optim: move parameters into one ``[N, P]`` buffer and update it whole.
        wide_loss: on the CPU, a population's cross-entropy with the class axis in the middle (``[B, K, N]``,
            where PyTorch's log-softmax vectorises over the models) when there are few classes
            (:mod:`zooscape.train.losses`).
        manual_mlp: train populations of plain ReLU MLPs with a hand-written forward, cross-entropy and backward
            (:mod:`zooscape.train.manual_mlp`) instead of autograd.
        malloc_tune: tune glibc's allocator to keep freed memory.
    """

    native_kernels: bool = True
    native_openmp: bool = True
    cache_dir: str | None = None
    channels_last: bool | None = None
    shared_input: bool = True
    flat_optim: bool = True
    wide_loss: bool = True
    manual_mlp: bool = True
    malloc_tune: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "cache_dir":
                ok = v is None or (isinstance(v, str) and v != "")
            elif f.name == "channels_last":
                ok = v is None or isinstance(v, bool)
            else:
                ok = isinstance(v, bool)
            if not ok:
                raise ValueError(f"fast-path switch {f.name}={v!r} is invalid (see zooscape.train._flags)")


def _parse_bool(name: str, text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{ENV[name]}={text!r}: expected 0 or 1")


def from_env(environ: Mapping[str, str] | None = None) -> Switches:
    """The switches an environment sets (``os.environ`` by default); unset variables keep the defaults.

    Raises:
        ValueError: a variable holds a value the switch does not take (the message names it).
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, var in ENV.items():
        text = environ.get(var)
        if text is None or text == "":
            continue
        if name == "cache_dir":
            values[name] = text
        elif name == "channels_last":
            values[name] = None if text.strip().lower() == "auto" else _parse_bool(name, text)
        else:
            values[name] = _parse_bool(name, text)
    return Switches(**values)


_current: Switches | None = None


def current() -> Switches:
    """The switches in effect: the environment's (read on the first call), or those of an :func:`override`."""
    global _current
    if _current is None:
        _current = from_env()
    return _current


@contextmanager
def override(**switches: Any) -> Iterator[Switches]:
    """Change fast-path switches for the duration of a ``with`` block (process-wide, nestable).

    Example::

        with override(native_kernels=False, channels_last=False):
            train_population(...)   # the plain PyTorch paths

    Yields:
        the :class:`Switches` in effect inside the block.

    Raises:
        TypeError: an unknown switch name; ValueError: a value the switch does not take.
    """
    global _current
    unknown = sorted(set(switches) - set(ENV))
    if unknown:
        raise TypeError(f"unknown fast-path switch(es) {unknown}; known: {sorted(ENV)}")
    before = current()
    new = dataclasses.replace(before, **switches)
    _current = new
    try:
        yield new
    finally:
        _current = before


def describe() -> list[dict[str, Any]]:
    """One row per switch for reports (``zooscape doctor``): ``name``, ``env`` (variable), ``value``, ``default``,
    ``source`` (``"env"`` when the environment sets it, ``"override"`` inside :func:`override` when it differs,
    else ``"default"``)."""
    now, env, default = current(), from_env(), Switches()
    rows = []
    for name, var in ENV.items():
        value = getattr(now, name)
        if value != getattr(env, name):
            source = "override"
        elif os.environ.get(var):
            source = "env"
        else:
            source = "default"
        rows.append({"name": name, "env": var, "value": value, "default": getattr(default, name), "source": source})
    return rows
