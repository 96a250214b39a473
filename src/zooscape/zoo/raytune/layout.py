"""The Ray Tune folder layout: file names, the limits on untrusted folders, and reading trials safely.

Part of :mod:`zooscape.zoo.raytune` (see its docstring for the layout and the guarantees).
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger("zooscape.zoo")


PARAMS_FILE = "params.json"
RESULT_FILE = "result.json"
WEIGHTS_FILE = "checkpoints"
OPTIMIZER_FILE = "optimizer"
CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)$")
#: Value the Model Zoos trainable logs for train_loss/train_acc before training.
SENTINEL = -999
#: Key written by :func:`export_raytune` holding our own config sections.
CONFIG_KEY = "zooscape::config"

#: Ray Tune bookkeeping fields of result.json that are not metrics.
RAY_FIELDS = frozenset({
    "done", "training_iteration", "trial_id", "experiment_id", "experiment_tag", "date", "timestamp",
    "time_this_iter_s", "time_total_s", "time_since_restore", "timesteps_since_restore", "iterations_since_restore",
    "timesteps_total", "episodes_total", "pid", "hostname", "node_ip", "config", "warmup_time", "should_checkpoint",
    "checkpoint_dir_name",
})

#: ``model::type`` values -> (registered model name, fixed model keywords).
MODEL_TYPES: dict[str, tuple[str, dict[str, Any]]] = {
    "CNN": ("cnn_s", {}),
    "CNN3": ("cnn_l", {}),
    "Resnet18_width": ("resnet18", {"stem": "imagenet"}),
    "ResNet18": ("resnet18", {"stem": "imagenet"}),
}
_TYPE_OF_MODEL = {"cnn_s": "CNN", "cnn_l": "CNN3"}

_SCHEDULERS = {"onecyclelr": "onecycle", "cosineannealinglr": "cosine", "steplr": "step", "none": "constant"}
_SCHEDULER_NAMES = {"onecycle": "OneCycleLR", "cosine": "CosineAnnealingLR", "step": "StepLR"}

#: Known ``params.json`` keys -> (section, key). ``model::<kw>``, ``training::<TrainConfig field>`` and
#: ``dataset::<option>`` (when ``dataset::name`` is given) are mapped generically as well.
PARAM_MAP: dict[str, tuple[str, str]] = {
    "model::type": ("model", "name"),
    "model::channels_in": ("model", "in_channels"),
    "model::o_dim": ("model", "num_classes"),
    "model::nlin": ("model", "activation"),
    "model::dropout": ("model", "dropout"),
    "model::init_type": ("model", "init"),
    "model::width": ("model", "width"),
    "optim::optimizer": ("training", "optimizer"),
    "optim::lr": ("training", "lr"),
    "optim::wd": ("training", "weight_decay"),
    "optim::momentum": ("training", "momentum"),
    "optim::scheduler": ("training", "schedule"),
    "training::batchsize": ("training", "batch_size"),
    "training::epochs_train": ("training", "epochs"),
    "seed": ("training", "seed"),
    "training::data_seed": ("training", "data_seed"),
}

#: Data set names guessed from tokens of ``dataset::dump`` / ``training::data_path`` (longest match first).
_DATA_TOKENS = (
    ("fashion", "fashion_mnist"), ("f_mnist", "fashion_mnist"), ("fmnist", "fashion_mnist"),
    ("cifar-100", "cifar100"), ("cifar_100", "cifar100"), ("cifar100", "cifar100"),
    ("cifar-10", "cifar10"), ("cifar_10", "cifar10"), ("cifar10", "cifar10"), ("mnist", "mnist"),
)


class TrialError(ValueError):
    """A trial folder is broken (the message says what is wrong, naming the file)."""


@dataclass(frozen=True)
class ImportLimits:
    """Limits on what :func:`import_raytune` reads from a trial folder (a trial over a limit is skipped).

    Args:
        max_json_bytes: largest ``params.json`` / ``result.json`` (default 16 MiB).
        max_json_depth: deepest nesting of JSON arrays/objects (default 64).
        max_checkpoint_bytes: largest checkpoint or optimizer file, and largest total of the tensors inside one
            (default 4 GiB).
        max_epoch: largest epoch number of a ``checkpoint_<epoch>`` folder and of ``training::epochs_train``
            (default 1,000,000).
    """

    max_json_bytes: int = 16 << 20
    max_json_depth: int = 64
    max_checkpoint_bytes: int = 4 << 30
    max_epoch: int = 1_000_000


_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"')
_INT64_MAX = 2**63 - 1


def _json_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in JSON text (strings ignored), without recursion."""
    import numpy as np

    raw = np.frombuffer(_STRING_RE.sub('""', text).encode("utf-8"), dtype=np.uint8)
    step = np.zeros(raw.shape, dtype=np.int32)
    step[(raw == ord("[")) | (raw == ord("{"))] = 1
    step[(raw == ord("]")) | (raw == ord("}"))] = -1
    return int(np.cumsum(step).max(initial=0))


@dataclass(frozen=True)
class _Guard:
    """How files below an import root are opened: no symlinks (or only inside the root), regular files only,
    size caps."""

    root: Path
    limits: ImportLimits = ImportLimits()
    follow_symlinks: bool = False

    def name(self, path: Path) -> str:
        """``<trial-relative name>`` for messages (checkpoint_000001/checkpoints, params.json)."""
        parts = path.parts
        return "/".join(parts[-2:]) if CHECKPOINT_RE.match(path.parent.name) else path.name

    def check_link(self, path: Path) -> None:
        """Refuse a symbolic link (or, when following, one that leads outside the root)."""
        if not path.is_symlink():
            return
        if not self.follow_symlinks:
            raise TrialError(f"{self.name(path)}: symbolic link to {os.readlink(path)} (not followed; "
                             "follow_symlinks=True / --follow-symlinks follows links inside the import root)")
        target = path.resolve()
        root = self.root.resolve()
        if target != root and root not in target.parents:
            raise TrialError(f"{self.name(path)}: symbolic link to {target}, outside the import root {root}")

    def open(self, path: Path, max_bytes: int, what: str) -> Any:
        """Open a regular file for reading without blocking (FIFOs, devices, directories are refused).

        Returns:
            binary file object.
        """
        self.check_link(path)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        if not self.follow_symlinks:
            flags |= getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise TrialError(f"missing {self.name(path)}") from None
        except OSError as exc:
            raise TrialError(f"{self.name(path)}: cannot open ({exc.strerror or exc})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise TrialError(f"{self.name(path)}: not a regular file (a FIFO, device or directory)")
            if st.st_size > max_bytes:
                raise TrialError(f"{self.name(path)}: {st.st_size} bytes, over the limit of {max_bytes} bytes "
                                 f"({what}; see ImportLimits / docs/security.md)")
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb")

    def read_text(self, path: Path) -> str:
        """A JSON file's text (size- and depth-checked)."""
        limit = self.limits.max_json_bytes
        with self.open(path, limit, "max_json_bytes, --max-json-bytes") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise TrialError(f"{self.name(path)}: over the limit of {limit} bytes (max_json_bytes)")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TrialError(f"{self.name(path)}: unreadable (not UTF-8: {exc})") from None
        depth = _json_depth(text)
        if depth > self.limits.max_json_depth:
            raise TrialError(f"{self.name(path)}: JSON nested deeper than {self.limits.max_json_depth} levels "
                             f"({depth}; max_json_depth)")
        return text


def _guard_for(path: Path, guard: _Guard | None) -> _Guard:
    return guard if guard is not None else _Guard(root=path)


# ----------------------------------------------------------------------------------------------- reading


@dataclass
class RayTrial:
    """The parsed files of one trial folder (tensors are not loaded).

    Args:
        path: the trial folder.
        params: ``params.json``.
        results: the lines of ``result.json`` (index = epoch).
        checkpoints: epoch -> ``checkpoint_{epoch:06d}/checkpoints`` file.
        optimizers: epoch -> optimizer file (where present).
    """

    path: Path
    params: dict[str, Any]
    results: list[dict[str, Any]]
    checkpoints: dict[int, Path]
    optimizers: dict[int, Path]


def find_trials(root: str | Path, follow_symlinks: bool = False, notes: list[str] | None = None) -> list[Path]:
    """Trial folders below ``root``: folders holding params.json, result.json or checkpoint_* folders.

    Symbolic links are not followed (each one is noted in ``notes``); with ``follow_symlinks`` links to
    directories inside ``root`` are followed, each directory at most once (no loops).

    Args:
        root: a trial folder, an experiment folder or any folder above them.
        follow_symlinks: follow directory links that stay inside ``root``.
        notes: list to append notes about links not followed (and unreadable folders) to.

    Returns:
        sorted list of folders (checkpoint folders are not searched).

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    real_root = root.resolve()
    out: list[Path] = []
    seen: set[tuple[int, int]] = set()
    notes = notes if notes is not None else []

    def note(path: Path, why: str) -> None:
        notes.append(f"{path.relative_to(root)}: symbolic link, {why}")

    def walk(d: Path) -> None:
        st = d.stat()
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            notes.append(f"{d.relative_to(root) if d != root else '.'}: unreadable ({exc.strerror or exc})")
            return
        names = {e.name for e in entries}
        is_trial = PARAMS_FILE in names or RESULT_FILE in names or any(
            CHECKPOINT_RE.match(e.name) and e.is_dir(follow_symlinks=False) for e in entries)
        if is_trial:
            out.append(d)
            return
        links = []
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_symlink():
                links.append(e)
            elif e.is_dir(follow_symlinks=False):
                walk(Path(e.path))
        for e in links:  # after the real directories, so that a link to one of them is a duplicate
            path = Path(e.path)
            if not follow_symlinks:
                if e.is_dir():
                    note(path, "not followed")
                continue
            target = path.resolve()
            if not target.is_dir():
                continue
            if target != real_root and real_root not in target.parents:
                note(path, f"leads outside the import root ({target}), not followed")
                continue
            walk(path)

    walk(root)
    return sorted(out)


def _read_json(path: Path, guard: _Guard | None = None) -> Any:
    text = _guard_for(path.parent, guard).read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrialError(f"{path.name}: invalid JSON ({exc})") from None
    except RecursionError:
        raise TrialError(f"{path.name}: JSON nested too deeply") from None


def _read_results(path: Path, guard: _Guard | None = None) -> list[dict[str, Any]]:
    text = _guard_for(path.parent, guard).read_text(path)
    lines = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrialError(f"{path.name} line {i + 1}: invalid JSON (truncated?) ({exc})") from None
        except RecursionError:
            raise TrialError(f"{path.name} line {i + 1}: JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise TrialError(f"{path.name} line {i + 1}: expected a JSON object, got {type(obj).__name__}")
        lines.append(obj)
    if not lines:
        raise TrialError(f"{path.name}: no results")
    return lines


def read_trial(path: str | Path, guard: _Guard | None = None) -> RayTrial:
    """Parse the JSON files of a trial folder and list its checkpoint files.

    Args:
        path: trial folder.
        guard: how files are opened (import root, :class:`ImportLimits`, symlink policy); default: the trial
            folder as root, default limits, no symlinks.

    Returns:
        RayTrial.

    Raises:
        TrialError: missing params.json/result.json, invalid, truncated, oversized or too deeply nested JSON, a
            symbolic link or non-regular file, an epoch number over the limit, no checkpoint, a checkpoint folder
            without its ``checkpoints`` file.
    """
    path = Path(path)
    guard = _guard_for(path, guard)
    params = _read_json(path / PARAMS_FILE, guard)
    if not isinstance(params, dict):
        raise TrialError(f"{PARAMS_FILE}: expected a JSON object, got {type(params).__name__}")
    results = _read_results(path / RESULT_FILE, guard)
    checkpoints: dict[int, Path] = {}
    optimizers: dict[int, Path] = {}
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        m = CHECKPOINT_RE.match(entry.name)
        if not m:
            continue
        d = Path(entry.path)
        if entry.is_symlink():
            guard.check_link(d)
        if not d.is_dir():
            continue
        epoch = int(m.group(1))
        if epoch > guard.limits.max_epoch:
            raise TrialError(f"{d.name}: epoch {epoch} over the limit of {guard.limits.max_epoch} (max_epoch)")
        weights = d / WEIGHTS_FILE
        guard.check_link(weights)
        if not weights.is_file():
            raise TrialError(f"{d.name}: missing {WEIGHTS_FILE} file")
        checkpoints[epoch] = weights
        if (d / OPTIMIZER_FILE).is_file() or (d / OPTIMIZER_FILE).is_symlink():
            optimizers[epoch] = d / OPTIMIZER_FILE
    if not checkpoints:
        raise TrialError("no checkpoint_* folders")
    return RayTrial(path, params, results, checkpoints, optimizers)


def _load_error(exc: Exception) -> str:
    """The informative line of a torch.load error (e.g. the global that weights_only refused)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported global" in ln or "Unsupported operand" in ln:
            return "weights_only=True refused it: " + ln[:200]
    return (lines[0][:200] if lines else type(exc).__name__) + f" [{type(exc).__name__}]"


def _torch_load(path: Path, guard: _Guard | None = None) -> Any:
    guard = _guard_for(path.parent.parent, guard)
    where = f"{path.parent.name}/{path.name}"
    limit = guard.limits.max_checkpoint_bytes
    with guard.open(path, limit, "max_checkpoint_bytes, --max-checkpoint-bytes") as fh:
        if zipfile.is_zipfile(fh):
            try:
                total = sum(i.file_size for i in zipfile.ZipFile(fh).infolist())
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise TrialError(f"{where}: unreadable ({exc})") from None
            if total > limit:
                raise TrialError(f"{where}: holds {total} bytes of tensors, over the limit of {limit} bytes "
                                 "(max_checkpoint_bytes)")
        fh.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return torch.load(fh, map_location="cpu", weights_only=True)
        except Exception as exc:  # any unpickling/format error: the file is unusable
            raise TrialError(f"{where}: unreadable ({_load_error(exc)})") from None


def read_state_dict(path: str | Path, guard: _Guard | None = None) -> dict[str, Tensor]:
    """Read a torch-saved state dict with ``weights_only=True`` and strip a ``module.`` prefix from its keys.

    Args:
        path: the file (e.g. ``checkpoint_000005/checkpoints``).
        guard: how the file is opened (see :func:`read_trial`).

    Returns:
        dict name -> CPU tensor.

    Raises:
        TrialError: unreadable, a symbolic link, not a regular file, over the size limit, or not a dict of
            tensors.
    """
    path = Path(path)
    obj = _torch_load(path, guard)
    if isinstance(obj, Mapping) and len(obj) == 1:
        (only,) = obj.values()
        if isinstance(only, Mapping) and next(iter(obj)) in ("state_dict", "model_state_dict", "model"):
            obj = only
    where = f"{path.parent.name}/{path.name}"
    if not isinstance(obj, Mapping) or not obj:
        raise TrialError(f"{where}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise TrialError(f"{where}: entry {k!r} is {type(v).__name__}, expected a tensor")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def optimizer_from_torch(state: Mapping[str, Any], param_names: Sequence[str]) -> dict[str, Tensor]:
    """Convert a torch optimizer ``state_dict()`` to our flat per-model layout.

    Args:
        state: ``{"state": {index: {"exp_avg": ..., "step": ...}}, "param_groups": [{"params": [...]}, ...]}``.
        param_names: the model's parameter names in ``model.parameters()`` order.

    Returns:
        ``{"<param>.<buffer>": tensor, "step": float64 [1]}`` (as ``EpochReport.optimizer_states()``).

    Raises:
        ValueError: the state does not cover the parameters.
    """
    if not isinstance(state, Mapping) or "state" not in state or "param_groups" not in state:
        raise ValueError("optimizer state must have 'state' and 'param_groups'")
    ids = [i for g in state["param_groups"] for i in g.get("params", [])]
    if len(ids) != len(param_names):
        raise ValueError(f"optimizer state covers {len(ids)} parameters, the model has {len(param_names)}")
    per = state["state"]
    out: dict[str, Tensor] = {}
    steps = []
    for pid, name in zip(ids, param_names):
        st = per.get(pid, per.get(str(pid), {}))
        for k, v in st.items():
            if k == "step":
                steps.append(float(v))
            elif isinstance(v, Tensor):
                out[f"{name}.{k}"] = v
    out["step"] = torch.tensor([max(steps) if steps else 0.0], dtype=torch.float64)
    return out


def optimizer_to_torch(flat: Mapping[str, Tensor], param_names: Sequence[str],
                       group: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Inverse of :func:`optimizer_from_torch`: a torch-style optimizer ``state_dict()``.

    Args:
        flat: our flat state (``"<param>.<buffer>"`` and ``"step"``).
        param_names: parameter names in ``model.parameters()`` order.
        group: hyperparameters of the single param group (lr, weight_decay, ...).

    Returns:
        ``{"state": {i: {...}}, "param_groups": [{**group, "params": [0..n-1]}]}`` (loadable with
        ``weights_only=True``).
    """
    step = flat.get("step")
    state: dict[int, dict[str, Any]] = {}
    for i, name in enumerate(param_names):
        st = {k[len(name) + 1:]: v for k, v in flat.items() if k.startswith(name + ".") and
              k[len(name) + 1:].count(".") == 0}
        if not st:
            continue
        if step is not None and ("exp_avg" in st or "exp_avg_sq" in st):
            st["step"] = torch.tensor(float(step.reshape(-1)[0]))
        state[i] = st
    return {"state": state, "param_groups": [{**(group or {}), "params": list(range(len(param_names)))}]}
