"""Import and export of the Ray Tune folder layout of the published zoos (Model Zoos, phase-transition zoos).

The layout (one folder per trial, anywhere below the given directory)::

    <trial>/
      params.json                    flat config, keys "model::nlin", "optim::lr", "training::batchsize", "seed", ...
      result.json                    JSON Lines; line 0 = evaluation before training, line k = after epoch k
      checkpoint_000000/checkpoints  torch.save(state_dict) (keys may carry a "module." prefix)
      checkpoint_000000/optimizer    torch.save(optimizer.state_dict()) (optional)
      checkpoint_000001/...

:func:`import_raytune` turns such a directory into a normal zoo of ours (``spec.toml``, catalog, shards).
Checkpoints are read with ``torch.load(weights_only=True)`` only, never by full unpickling. Each config is mapped
onto our ``dataset``/``model``/``training`` sections (:data:`PARAM_MAP`) and keeps its original keys in
``derived.source.params``; CNN-s ("CNN") and CNN-l ("CNN3") are re-instantiated with ``create_model`` and every
checkpoint must load into that model strictly, so ``zoo.load_model`` evaluates to the recorded accuracy on the same
data. Broken trials (missing or truncated files, unreadable or non-finite checkpoints, checkpoints that do not fit
the model) are reported in :class:`ImportReport` and skipped, and so are hostile ones: symbolic links are not
followed (by default; on request only those that stay inside the import root), only regular files are opened
(never blocking on a FIFO), JSON and checkpoint files are capped in size and JSON in nesting depth, epoch numbers
are bounded, and checkpoints are checked against the model's shapes computed on the ``meta`` device (no model is
ever allocated from a trial's ``params.json``). See :class:`ImportLimits` and ``docs/security.md``.
:func:`export_raytune` writes a zoo of ours back in
that layout for users of the old tools (with a ``zooscape::config`` key, so that re-importing gives the same model
ids).

References:
    Schürholt, Taskiran, Knyazev, Giró-i-Nieto & Borth (2022), "Model Zoos: A Dataset of Diverse Populations of
    Neural Network Models"; the phase-transition model zoo (ModelZoos/PhaseTransitionModelZoo); Liaw et al. (2018),
    "Tune: A Research Platform for Distributed Model Selection and Training" (the folder layout).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import numbers
import os
import re
import stat
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "MODEL_TYPES",
    "PARAM_MAP",
    "ExportReport",
    "ImportLimits",
    "ImportReport",
    "RayTrial",
    "TrialError",
    "export_raytune",
    "find_trials",
    "import_raytune",
    "map_params",
    "optimizer_from_torch",
    "optimizer_to_torch",
    "read_state_dict",
    "read_trial",
]

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


# ----------------------------------------------------------------------------------------------- config mapping


def _num(value: Any, kind: type, key: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TrialError(f"{PARAMS_FILE}: {key!r} must be a number, got {value!r}")
    if kind is int:
        if not math.isfinite(float(value)) or float(value) != int(value):
            raise TrialError(f"{PARAMS_FILE}: {key!r} must be an integer, got {value!r}")
        if abs(int(value)) > _INT64_MAX:
            raise TrialError(f"{PARAMS_FILE}: {key!r} = {value!r} does not fit in 64 bits")
        return int(value)
    if not math.isfinite(float(value)):
        raise TrialError(f"{PARAMS_FILE}: {key!r} must be finite, got {value!r}")
    return float(value)


def _train_fields() -> dict[str, Any]:
    from zooscape.train import TrainConfig

    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def _guess_dataset(params: Mapping[str, Any]) -> str | None:
    for key in ("dataset::dump", "training::data_path", "dataset::name"):
        text = str(params.get(key, "")).lower()
        for token, name in _DATA_TOKENS:
            if token in text:
                return name
    return None


def map_params(
    params: Mapping[str, Any],
    dataset: Mapping[str, Any] | None = None,
    model_types: Mapping[str, str | tuple[str, Mapping[str, Any]]] | None = None,
    n_epochs: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Map a flat ``params.json`` onto our ``dataset``, ``model`` and ``training`` sections.

    ``zooscape::config`` (written by :func:`export_raytune`) is used as is. Otherwise :data:`PARAM_MAP` and the
    generic ``model::<keyword>``, ``training::<TrainConfig field>`` and ``dataset::<option>`` keys are mapped;
    values that have no equivalent (an unknown optimizer or scheduler) are left out. The data set is ``dataset``
    if given, else ``dataset::name``/``dataset::<option>``, else guessed from the ``dataset::dump`` path.

    Args:
        params: the trial's params.json.
        dataset: our ``[dataset]`` section (overrides what params.json says).
        model_types: extra ``model::type`` values -> model name or (name, fixed keywords).
        n_epochs: epochs recorded in result.json (used when params.json has no ``training::epochs_train``).

    Returns:
        ``{"dataset": {...}, "model": {...}, "training": {...}}``.

    Raises:
        TrialError: unsupported model type, invalid value, unknown data set.
    """
    from zooscape.data import dataset_options, list_datasets
    from zooscape.models import ACTIVATIONS, INIT_SCHEMES, get_model_entry, list_models
    from zooscape.models.registry import COMMON_ARGS
    from zooscape.train import OPTIMIZERS

    if CONFIG_KEY in params:
        cfg = params[CONFIG_KEY]
        if not isinstance(cfg, Mapping) or not all(isinstance(cfg.get(s), Mapping) for s in
                                                   ("dataset", "model", "training")):
            raise TrialError(f"{PARAMS_FILE}: {CONFIG_KEY!r} must hold dataset/model/training objects")
        out = {s: dict(cfg[s]) for s in ("dataset", "model", "training")}
        if dataset is not None:
            out["dataset"] = dict(dataset)
        return out

    types = {k: (v, {}) if isinstance(v, str) else (v[0], dict(v[1])) for k, v in (model_types or {}).items()}
    types = {**MODEL_TYPES, **types}
    model: dict[str, Any] = {}
    training: dict[str, Any] = {}
    raw_type = params.get("model::type")
    if raw_type is None:
        raise TrialError(f"{PARAMS_FILE}: no 'model::type'")
    if raw_type in types:
        name, fixed = types[raw_type]
    elif raw_type in list_models():
        name, fixed = raw_type, {}
    else:
        raise TrialError(f"unsupported model::type {raw_type!r} (supported: {sorted(types)}; "
                         "map it with model_types / --model-type TYPE=NAME)")
    model["name"] = name
    model.update(fixed)
    family = set(get_model_entry(name).family_kwargs) | set(COMMON_ARGS) | {"init"}
    fields = _train_fields()
    for key, value in params.items():
        if key in ("model::type", CONFIG_KEY) or value is None:
            continue
        section, sub = PARAM_MAP.get(key, (None, None))
        if section is None:
            prefix, _, rest = key.partition("::")
            if prefix == "model" and rest in family:
                section, sub = "model", rest
            elif prefix == "training" and rest in fields:
                section, sub = "training", rest
            else:
                continue
        if (section, sub) == ("model", "activation"):
            act = str(value).lower().replace("_", "")
            if act not in ACTIVATIONS:
                raise TrialError(f"{PARAMS_FILE}: {key!r} = {value!r} is not one of {list(ACTIVATIONS)}")
            model["activation"] = act
        elif (section, sub) == ("model", "init"):
            if value not in INIT_SCHEMES:
                raise TrialError(f"{PARAMS_FILE}: {key!r} = {value!r} is not one of {list(INIT_SCHEMES)}")
            model["init"] = None if value == "default" else value
        elif (section, sub) == ("model", "dropout"):
            model["dropout"] = _num(value, float, key)
        elif (section, sub) in (("model", "in_channels"), ("model", "num_classes"), ("model", "width")):
            model[sub] = _num(value, int, key)
        elif section == "model":
            model[sub] = value
        elif (section, sub) == ("training", "optimizer"):
            if str(value).lower() in OPTIMIZERS:
                training["optimizer"] = str(value).lower()
        elif (section, sub) == ("training", "schedule"):
            sched = _SCHEDULERS.get(str(value).lower().replace("_", ""))
            if sched is not None:
                training["schedule"] = sched
        elif sub in ("lr", "weight_decay", "momentum"):
            training[sub] = _num(value, float, key)
        elif sub in ("batch_size", "epochs", "seed", "data_seed"):
            training[sub] = _num(value, int, key)
        else:
            f = fields[sub]
            training[sub] = _num(value, type(f.default), key) if isinstance(f.default, int | float) and \
                not isinstance(f.default, bool) else value
    if model.get("init") is None:
        model.pop("init", None)
    if "epochs" not in training and n_epochs is not None:
        training["epochs"] = int(n_epochs)

    if dataset is not None:
        data = dict(dataset)
    elif "dataset::name" in params:
        data = {"name": params["dataset::name"]}
        for key, value in params.items():
            prefix, _, rest = key.partition("::")
            if prefix == "dataset" and rest not in ("name", "dump"):
                data[rest] = value
    else:
        guess = _guess_dataset(params)
        if guess is None:
            raise TrialError("cannot tell which data set the trial used (no dataset::name, and no known data set "
                             "in dataset::dump); pass dataset= / --dataset NAME")
        data = {"name": guess}
    if data.get("name") not in list_datasets():
        raise TrialError(f"unknown data set {data.get('name')!r}; known: {list_datasets()}")
    bad = sorted(set(data) - {"name", "seed", "train_fraction", "label_noise", "data_root"}
                 - set(dataset_options(data["name"])))
    if bad:
        raise TrialError(f"data set {data['name']!r} has no option(s) {bad}")
    return {"dataset": data, "model": model, "training": training}


# ----------------------------------------------------------------------------------------------- import


@dataclass
class ImportReport:
    """Outcome of :func:`import_raytune`.

    Args:
        out_dir: the zoo directory written.
        imported: ``(trial folder relative to the source, model_id)`` per imported trial.
        skipped: ``(trial folder, reason)`` per broken trial.
        warnings: non-fatal problems (e.g. an unreadable optimizer file, a data set that could not be loaded).
        n_checkpoints: weight checkpoints written.
    """

    out_dir: Path
    imported: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_checkpoints: int = 0

    def summary(self) -> str:
        """Human-readable summary (one line per skipped trial).

        Returns:
            str.
        """
        lines = [f"imported {len(self.imported)} trials ({self.n_checkpoints} checkpoints) into {self.out_dir}; "
                 f"skipped {len(self.skipped)}"]
        lines += [f"  skipped {t}: {r}" for t, r in self.skipped]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


@dataclass
class _Parsed:
    rel: str
    trial: RayTrial
    sections: dict[str, dict[str, Any]]
    metrics: list[tuple[int, str, float | None]]
    epochs: list[int]
    optim_epochs: list[int]
    status: tuple[str, str | None]
    param_names: list[str]
    model_id: str = ""
    derived: dict[str, Any] = field(default_factory=dict)


def _metrics(results: Sequence[Mapping[str, Any]]) -> list[tuple[int, str, float | None]]:
    rows = []
    for epoch, line in enumerate(results):
        for k, v in line.items():
            if k == "time_this_iter_s":
                k = "epoch_time_s"
            elif k in RAY_FIELDS:
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                continue
            v = float(v)
            rows.append((epoch, k, None if v == SENTINEL else v))
    return rows


def _status(results: Sequence[Mapping[str, Any]], epochs_planned: int | None) -> tuple[str, str | None]:
    for epoch, line in enumerate(results):
        loss = line.get("train_loss")
        if isinstance(loss, numbers.Real) and not isinstance(loss, bool) and not math.isfinite(float(loss)):
            return "failed", f"non-finite train_loss at epoch {epoch}"
    last = len(results) - 1
    if epochs_planned is not None and last < epochs_planned:
        return "stopped", f"result.json ends after epoch {last} of {epochs_planned}"
    return "done", None


class _Models:
    """Builds (on the ``meta`` device) and caches the reference model of each architecture (for strict shape
    checks)."""

    def __init__(self) -> None:
        self.cache: dict[str, tuple[dict[str, tuple[int, ...]], list[str], int]] = {}

    def spec(self, model: Mapping[str, Any], model_args: Mapping[str, Any]) -> tuple[dict[str, tuple[int, ...]],
                                                                                  list[str], int]:
        from zooscape.zoo.build import build_meta_model, count_parameters
        from zooscape.zoo.grid import canonical_json

        key = canonical_json([{k: v for k, v in model.items() if k != "init"}, dict(model_args)])
        if key not in self.cache:
            try:
                m = build_meta_model(model, model_args)  # shapes only: nothing allocated, whatever params.json says
            except Exception as exc:
                raise TrialError(f"cannot build model {canonical_json(dict(model))}: {exc}") from None
            self.cache[key] = ({k: tuple(v.shape) for k, v in m.state_dict().items()},
                               [n for n, _ in m.named_parameters()], count_parameters(m))
        return self.cache[key]


def _check_state(sd: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], where: str, model: str) -> None:
    missing = sorted(set(shapes) - set(sd))
    extra = sorted(set(sd) - set(shapes))
    if missing or extra:
        raise TrialError(f"{where}: does not fit model {model} (missing {missing[:5]}, unexpected {extra[:5]})")
    for k, shape in shapes.items():
        if tuple(sd[k].shape) != shape:
            raise TrialError(f"{where}: {k!r} has shape {tuple(sd[k].shape)}, model {model} needs {shape}")
    for k, t in sd.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TrialError(f"{where}: non-finite weights in {k!r}")


class _DataInfo:
    """Loads each distinct data set once: model arguments and n_train (or notes that it cannot be loaded)."""

    def __init__(self, report: ImportReport) -> None:
        self.report = report
        self.cache: dict[str, tuple[dict[str, Any], int | None]] = {}

    def get(self, dataset: Mapping[str, Any]) -> tuple[dict[str, Any], int | None]:
        from zooscape.zoo.build import data_model_args, load_data
        from zooscape.zoo.grid import canonical_json

        key = canonical_json(dict(dataset))
        if key not in self.cache:
            try:
                data = load_data(dataset)
                self.cache[key] = (data_model_args(data), int(len(data.train_y)))
            except Exception as exc:
                self.report.warnings.append(
                    f"data set {key} could not be loaded ({exc}); models use their default input size and "
                    "derived.n_train/load are unknown")
                self.cache[key] = ({}, None)
        return self.cache[key]


def _check_sections(sections: Mapping[str, Any], schema: Any) -> None:
    """Validate one trial's sections as a one-model spec (types, ranges, names), so that one bad trial cannot
    make the whole import's spec invalid."""
    from zooscape.zoo.spec import SpecError, parse_spec

    try:
        parse_spec({s: dict(sections[s]) for s in ("dataset", "model", "training")}, PARAMS_FILE, schema)
    except SpecError as exc:
        raise TrialError(f"{PARAMS_FILE} maps to an invalid config: {exc.key}: {exc.problem}") from None


def _parse(path: Path, root: Path, dataset: Mapping[str, Any] | None, model_types: Any, models: _Models,
           datainfo: _DataInfo, with_optimizer: bool, report: ImportReport, guard: _Guard,
           schema: Any) -> _Parsed:
    trial = read_trial(path, guard)
    sections = map_params(trial.params, dataset, model_types, n_epochs=len(trial.results) - 1)
    epochs = sections["training"].get("epochs")
    if isinstance(epochs, int) and epochs > guard.limits.max_epoch:
        raise TrialError(f"{PARAMS_FILE}: {epochs} training epochs, over the limit of {guard.limits.max_epoch} "
                         "(max_epoch)")
    _check_sections(sections, schema)
    model_args_all, n_train = datainfo.get(sections["dataset"])
    model_args = {k: v for k, v in model_args_all.items() if k not in sections["model"]}
    shapes, param_names, n_params = models.spec(sections["model"], model_args)
    for _epoch, file in sorted(trial.checkpoints.items()):
        sd = read_state_dict(file, guard)
        _check_state(sd, shapes, f"{file.parent.name}/{file.name}", sections["model"]["name"])
        del sd
    optim_epochs = []
    if with_optimizer:
        for epoch, file in sorted(trial.optimizers.items()):
            try:
                optimizer_from_torch(_torch_load(file, guard), param_names)
                optim_epochs.append(epoch)
            except (TrialError, ValueError, TypeError, AttributeError) as exc:
                report.warnings.append(f"{path.relative_to(root)}: optimizer at epoch {epoch} skipped ({exc})")
    tr = sections["training"]
    status = _status(trial.results, tr.get("epochs"))
    lr, bs = tr.get("lr"), tr.get("batch_size")
    derived = {
        "temperature": float(lr) / float(bs) if lr is not None and bs else None,
        "load": n_train / n_params if n_train and n_params else None,
        "n_params": n_params,
        "n_train": n_train,
        "model_args": model_args,
        "width": sections["model"].get("width"),
        "train_fraction": float(sections["dataset"].get("train_fraction", 1.0)),
        "source": {"format": "ray_tune", "trial": str(path.relative_to(root)),
                   "params": {k: v for k, v in trial.params.items() if k != CONFIG_KEY}},
    }
    rel = str(path.relative_to(root)) or "."
    return _Parsed(rel, trial, sections, _metrics(trial.results), sorted(trial.checkpoints), optim_epochs, status,
                   param_names, derived=derived)


def _spec_doc(parsed: Sequence[_Parsed], name: str, description: str, max_population: int) -> dict[str, Any]:
    """A spec whose base sections hold the values shared by all models and whose grid holds the varying ones."""
    from zooscape.zoo.grid import canonical_json

    doc: dict[str, Any] = {"zoo": {"name": name, "description": description}, "grid": {}}
    for section in ("dataset", "model", "training"):
        keys = set().union(*(p.sections[section].keys() for p in parsed))
        base = {}
        for key in sorted(keys):
            if not all(key in p.sections[section] for p in parsed):
                continue  # not expressible in a grid; the catalog's configs hold it
            values: dict[str, Any] = {}
            for p in parsed:
                values.setdefault(canonical_json(p.sections[section][key]), p.sections[section][key])
            if len(values) == 1:
                base[key] = next(iter(values.values()))
            else:
                doc["grid"][f"{section}.{key}"] = [values[k] for k in sorted(values)]
        doc[section] = base
    max_epochs = max(int(p.sections["training"]["epochs"]) for p in parsed)
    every = all(p.epochs == list(range(int(p.sections["training"]["epochs"]) + 1)) for p in parsed)
    union = sorted({e for p in parsed for e in p.epochs if e <= max_epochs})
    doc["checkpoints"] = {"epochs": "all" if every else union, "optimizer": any(p.optim_epochs for p in parsed)}
    doc["population"] = {"max_size": max_population}
    return doc


def import_raytune(
    source: str | Path,
    out_dir: str | Path,
    dataset: Mapping[str, Any] | None = None,
    model_types: Mapping[str, str | tuple[str, Mapping[str, Any]]] | None = None,
    name: str | None = None,
    optimizer: bool = True,
    max_population: int = 64,
    progress: bool = False,
    limits: ImportLimits | None = None,
    follow_symlinks: bool = False,
) -> ImportReport:
    """Import a Ray Tune zoo directory (Model Zoos / phase-transition layout) as a zoo of ours.

    Two passes: the first reads and checks every trial (JSON files; every checkpoint loaded with
    ``weights_only=True``, ``module.`` prefixes stripped, strictly matched against the re-instantiated model,
    finite), the second writes, per group of at most ``max_population`` models, one shard per epoch and the
    group's catalog rows in one transaction. Re-running the same import into the same directory gives the same
    zoo (rows are upserted).

    Args:
        source: folder holding the trial folders (searched recursively).
        out_dir: zoo directory to create (must be empty or hold the same import).
        dataset: our ``[dataset]`` section for every trial (e.g. ``{"name": "mnist", "data_root": "data"}``);
            default: from ``dataset::name`` or guessed from ``dataset::dump``.
        model_types: extra ``model::type`` values -> registered model name (or (name, keywords)).
        name: zoo name (default: the source folder's name).
        optimizer: import optimizer files too.
        max_population: models per shard group.
        progress: tqdm bar over trials (stderr).
        limits: size, depth and epoch limits (default :class:`ImportLimits`); a trial over a limit is skipped.
        follow_symlinks: follow symbolic links that stay inside ``source`` (default: no link is followed; a trial
            with a linked file is skipped, a linked directory is not searched).

    Returns:
        :class:`ImportReport` (imported and skipped trials with reasons).

    Raises:
        FileNotFoundError: ``source`` is not a directory. ValueError: no trial could be imported.
        ZooExistsError: ``out_dir`` holds something else.

    References:
        Schürholt et al. (2022), Model Zoos; Liaw et al. (2018), Ray Tune.
    """
    from tqdm.auto import tqdm

    from zooscape.zoo.grid import group_configs, model_id
    from zooscape.zoo.spec import default_schema, dump_spec, parse_spec
    from zooscape.zoo.store import ZooStore

    source, out_dir = Path(source), Path(out_dir)
    report = ImportReport(out_dir=out_dir)
    guard = _Guard(root=source, limits=limits or ImportLimits(), follow_symlinks=follow_symlinks)
    trials = find_trials(source, follow_symlinks=follow_symlinks, notes=report.warnings)
    models, datainfo, schema = _Models(), _DataInfo(report), default_schema()
    parsed: dict[str, _Parsed] = {}
    for path in tqdm(trials, desc="checking trials", unit="trial", disable=not progress):
        rel = str(path.relative_to(source)) or "."
        try:
            p = _parse(path, source, dataset, model_types, models, datainfo, optimizer, report, guard, schema)
        except TrialError as exc:
            report.skipped.append((rel, str(exc)))
            log.info("skipped trial %s: %s", rel, exc)
            continue
        mid = model_id(p.sections)
        if mid in parsed:
            report.skipped.append((rel, f"same configuration as trial {parsed[mid].rel} (model {mid})"))
            continue
        p.model_id = mid
        parsed[mid] = p
    if not parsed:
        raise ValueError(f"no trial of {source} could be imported ({len(report.skipped)} broken):\n"
                         + report.summary())

    configs = [{"model_id": m, "group_id": None, **p.sections, "derived": p.derived} for m, p in parsed.items()]
    groups = group_configs(configs, max_population)
    by_id = {c["model_id"]: c for c in configs}
    for g in groups:
        for m in g.model_ids:
            by_id[m]["group_id"] = g.group_id
    zoo_name = name or source.resolve().name
    description = f"imported from the Ray Tune layout at {source.resolve()} ({len(parsed)} trials)"
    doc = _spec_doc(list(parsed.values()), zoo_name, description, max_population)
    spec_file = out_dir / "spec.toml"
    try:
        spec = parse_spec(doc, spec_file)
    except ValueError as exc:
        raise ValueError(f"the imported configs do not form a valid spec: {exc}") from exc
    store = ZooStore(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    with store.lock():
        catalog = store.create_or_check(dump_spec(spec), spec.fingerprint())
        try:
            catalog.set_meta({"imported_from": str(source.resolve()), "import_format": "ray_tune"})
            catalog.add_models(configs)
            for g in tqdm(groups, desc="writing shards", unit="group", disable=not progress):
                members = [parsed[m] for m in g.model_ids]
                ck_rows, mt_rows = [], []
                for epoch in sorted({e for p in members for e in p.epochs}):
                    have = [p for p in members if epoch in p.epochs]
                    tensors = {p.model_id: read_state_dict(p.trial.checkpoints[epoch], guard) for p in have}
                    rel = store.write_shard(g.group_id, epoch, "weights", tensors, {"source": "ray_tune"})
                    ck_rows += [(p.model_id, epoch, "weights", rel) for p in have]
                    report.n_checkpoints += len(have)
                    opt = [p for p in members if epoch in p.optim_epochs]
                    if opt:
                        states = {p.model_id: optimizer_from_torch(_torch_load(p.trial.optimizers[epoch], guard),
                                                                   p.param_names) for p in opt}
                        rel = store.write_shard(g.group_id, epoch, "optimizer", states, {"source": "ray_tune"})
                        ck_rows += [(p.model_id, epoch, "optimizer", rel) for p in opt]
                for p in members:
                    mt_rows += [(p.model_id, e, k, v) for e, k, v in p.metrics]
                catalog.record(metrics=mt_rows, checkpoints=ck_rows,
                               statuses={p.model_id: p.status for p in members})
                report.imported += [(p.rel, p.model_id) for p in members]
        finally:
            catalog.close()
    report.imported.sort()
    log.info("%s", report.summary())
    return report


# ----------------------------------------------------------------------------------------------- export


@dataclass
class ExportReport:
    """Outcome of :func:`export_raytune`.

    Args:
        out_dir: the folder written.
        trials: trial folder name per exported model id.
        n_checkpoints: weight checkpoints written.
    """

    out_dir: Path
    trials: dict[str, str] = field(default_factory=dict)
    n_checkpoints: int = 0


def _params_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """Flat Model-Zoos-style params for a config of ours (plus ``zooscape::config`` for exact re-import)."""
    model, training, data = config["model"], config["training"], config["dataset"]
    args = {**(config.get("derived", {}).get("model_args") or {}), **model}
    out: dict[str, Any] = {"model::type": _TYPE_OF_MODEL.get(model["name"], model["name"])}
    reverse = {v: k for k, v in PARAM_MAP.items() if k != "model::type"}
    for key, value in args.items():
        if key in ("name", "input_size"):
            continue
        out[reverse.get(("model", key), f"model::{key}")] = value
    for key, value in training.items():
        if key == "schedule":
            if value in _SCHEDULER_NAMES:
                out["optim::scheduler"] = _SCHEDULER_NAMES[value]
            continue
        out[reverse.get(("training", key), f"training::{key}")] = value
    for key, value in data.items():
        out[f"dataset::{key}"] = value
    out[CONFIG_KEY] = {s: config[s] for s in ("dataset", "model", "training")}
    return out


def _atomic_torch_save(obj: Any, path: Path) -> None:
    from zooscape._io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _json_line(obj: Mapping[str, Any]) -> str:
    return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in obj.items()},
                      sort_keys=False, default=str)


def export_raytune(
    zoo: Any,
    out_dir: str | Path,
    epochs: Sequence[int] | None = None,
    optimizer: bool = True,
    model_ids: Sequence[str] | None = None,
    on_model: Callable[[str], None] | None = None,
) -> ExportReport:
    """Write a zoo of ours in the Ray Tune layout of the published zoos (for users of the old tools).

    One folder ``NN_tune_trainable_<model_id>_<index>`` per model with ``params.json`` (Model Zoos keys plus
    ``zooscape::config``), ``result.json`` (line e = metrics at epoch e) and ``checkpoint_{epoch:06d}/checkpoints``
    (``torch.save`` of the state dict) and ``optimizer`` (a torch-style optimizer state dict). Files are written
    atomically.

    Args:
        zoo: an open :class:`zooscape.zoo.Zoo` or its directory.
        out_dir: folder to write into (created; must not already hold trial folders of other models).
        epochs: checkpoint epochs to write (default: all).
        optimizer: also write optimizer files where the zoo has optimizer shards.
        model_ids: models to export (default: all).
        on_model: called with each model id after it is written (progress).

    Returns:
        :class:`ExportReport`.
    """
    from zooscape._io import atomic_write_bytes
    from zooscape.zoo.reader import Zoo, open_zoo

    own = not isinstance(zoo, Zoo)
    z = open_zoo(zoo) if own else zoo
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out_dir=out_dir)
    try:
        ids = list(model_ids) if model_ids is not None else z.model_ids
        metrics = z.metrics()
        by_model = {m: g for m, g in metrics.groupby("model_id")} if not metrics.empty else {}
        wanted = None if epochs is None else {int(e) for e in epochs}
        for index, mid in enumerate(ids):
            config = z.config(mid)
            params = _params_of(config)
            trial = out_dir / f"NN_tune_trainable_{mid}_{index:05d}"
            trial.mkdir(exist_ok=True)
            atomic_write_bytes(trial / PARAMS_FILE, json.dumps(params, indent=2, default=str).encode("utf-8"))
            lines = []
            rows = by_model.get(mid)
            if rows is not None:
                last = int(rows["epoch"].max())
                for e in range(last + 1):
                    sel = rows[rows["epoch"] == e]
                    line: dict[str, Any] = {str(k): (None if v != v else float(v)) for k, v in
                                            zip(sel["name"], sel["value"]) if k != "epoch_time_s"}
                    if "epoch_time_s" in set(sel["name"]):
                        line["time_this_iter_s"] = float(sel[sel["name"] == "epoch_time_s"]["value"].iloc[0])
                    line.update({"training_iteration": e + 1, "done": e == last, "trial_id": mid})
                    lines.append(_json_line(line))
            atomic_write_bytes(trial / RESULT_FILE, ("\n".join(lines) + "\n").encode("utf-8"))
            model = None
            for e in z.epochs(mid):
                if wanted is not None and e not in wanted:
                    continue
                d = trial / f"checkpoint_{e:06d}"
                d.mkdir(exist_ok=True)
                _atomic_torch_save(z.state_dict(mid, e), d / WEIGHTS_FILE)
                report.n_checkpoints += 1
                if optimizer and e in z.epochs(mid, "optimizer"):
                    if model is None:
                        model = z.load_model(mid, e)
                    names = [n for n, _ in model.named_parameters()]
                    tr = config["training"]
                    group = {k: tr[k] for k in ("lr", "weight_decay", "momentum") if k in tr}
                    _atomic_torch_save(optimizer_to_torch(z.optimizer_state(mid, e), names, group),
                                       d / OPTIMIZER_FILE)
            report.trials[mid] = trial.name
            if on_model is not None:
                on_model(mid)
    finally:
        if own:
            z.close()
    return report
