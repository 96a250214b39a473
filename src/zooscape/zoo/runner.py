"""The zoo driver: spec -> validated plan -> store -> engine -> catalog.

The driver is the only writer of the catalog. Training tasks (:func:`zooscape.zoo.task.run_group`) run on an
engine, write their own checkpoint and resume files and send catalog rows back as events.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zooscape.train.threads import resolve_threads, resolve_workers, torch_threads
from zooscape.zoo.build import (
    build_meta_model,
    build_model,
    build_train_config,
    check_fits,
    count_parameters,
    data_model_args,
    load_data,
)
from zooscape.zoo.catalog import FINISHED, Catalog
from zooscape.zoo.engines import Engine, get_engine
from zooscape.zoo.grid import Group, canonical_json, checkpoint_epochs, expand_spec, group_key, resolve_sizes
from zooscape.zoo.grow import prepare_grown_zoo
from zooscape.zoo.lmc_section import training_lmc
from zooscape.zoo.spec import SpecError, ZooSpec, load_spec
from zooscape.zoo.store import ZooExistsError, ZooStore, is_zoo
from zooscape.zoo.task import GroupTask, run_group
from zooscape.zoo.verify import quick_check

__all__ = ["ZooEstimate", "ZooPlan", "estimate_zoo", "plan_zoo", "summarize_spec", "train_zoo"]

log = logging.getLogger("zooscape.zoo")


@dataclass
class ZooPlan:
    """A fully validated zoo: spec, model configs (with sizes) and groups.

    Args:
        spec: the spec.
        configs: model configs from :func:`zooscape.zoo.grid.expand_spec` with ``derived`` sizes filled.
        groups: training populations.
    """

    spec: ZooSpec
    configs: list[dict[str, Any]]
    groups: list[Group]

    @property
    def n_model_epochs(self) -> int:
        """Total number of (model, training epoch) pairs."""
        return sum(int(c["training"].get("epochs", 0)) for c in self.configs)


def _count_params(model_section: dict[str, Any], model_args: dict[str, Any], info: dict[str, Any]) -> int:
    """Build the model, check that it maps two training samples to ``[2, num_outputs]``, count parameters."""
    model = build_model(model_section, seed=0, model_args=model_args)
    sample, num_outputs = info.get("sample"), info.get("num_outputs")
    if sample is not None:
        check_fits(model, (sample, num_outputs))
    return count_parameters(model)


@dataclass(frozen=True)
class ZooEstimate:
    """What a planned zoo will hold on disk.

    Args:
        models: number of models.
        groups: training populations.
        files: checkpoint shard files.
        bytes: bytes of those shards (exact for the weights, estimated for optimizer states) plus the catalog.
    """

    models: int
    groups: int
    files: int
    bytes: int


def _model_bytes(model_section: dict[str, Any], model_args: dict[str, Any], optimizer: str,
                 momentum: bool) -> tuple[int, int]:
    """Bytes one model adds to a weights shard and to an optimizer shard (safetensors, with its header entries)."""
    import torch
    from safetensors.torch import save

    model = build_meta_model(model_section, model_args)
    mid = "0" * 12
    state = {f"{mid}/{k}": torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}
    names = ("momentum_buffer",) if optimizer == "sgd" else ("exp_avg", "exp_avg_sq")
    if optimizer == "sgd" and not momentum:
        names = ()
    opt = {f"{mid}/step": torch.empty(1, dtype=torch.float64)}
    for k, p in model.named_parameters():
        for b in names:
            opt[f"{mid}/{k}.{b}"] = torch.empty(p.shape, dtype=p.dtype)
    empty = len(save({}))
    return len(save(state)) - empty, len(save(opt)) - empty


def estimate_zoo(plan: ZooPlan, seed_factor: int = 1) -> ZooEstimate:
    """Count the models, shard files and bytes a planned zoo will take (no training, models built on the meta
    device once per architecture).

    Args:
        plan: from :func:`plan_zoo`.
        seed_factor: the plan stands for a zoo with this many times as many models per group key (see
            :func:`summarize_spec`: seed axes collapsed to one value).

    Returns:
        ZooEstimate.
    """
    spec = plan.spec
    by_id = {c["model_id"]: c for c in plan.configs}
    keys: dict[str, list[str]] = {}
    for group in plan.groups:
        keys.setdefault(group.key, []).extend(group.model_ids)
    cache: dict[str, tuple[int, int]] = {}
    files, total, n_groups = 0, 0, 0
    for ids in keys.values():
        cfg = by_id[ids[0]]
        tr = cfg["training"]
        optimizer = str(tr.get("optimizer", "sgd"))
        momentum = any(float(by_id[m]["training"].get("momentum", 0.0) or 0.0) != 0.0 for m in ids)
        args = cfg["derived"].get("model_args") or {}
        model = {k: v for k, v in cfg["model"].items() if k != "init"}
        key = canonical_json([model, args, optimizer, momentum])
        if key not in cache:
            cache[key] = _model_bytes(model, args, optimizer, momentum)
        w, o = cache[key]
        n_ckpt = len(checkpoint_epochs(spec.checkpoint_epochs, int(tr["epochs"])))
        members = len(ids) * seed_factor
        for start in range(0, members, spec.max_population):
            n = min(spec.max_population, members - start)
            n_groups += 1
            per_file = 200 + 16 * n  # 8-byte length + metadata (format, group, epoch, model ids)
            files += n_ckpt * (2 if spec.save_optimizer else 1)
            total += n_ckpt * (n * w + per_file)
            if spec.save_optimizer:  # at epoch 0 an optimizer shard holds only the step counters
                total += (n_ckpt - 1) * (n * o + per_file) + n * 64 + per_file
    n_models, n_model_epochs = len(plan.configs) * seed_factor, plan.n_model_epochs * seed_factor
    # catalog: schema pages, one config row per model, metric rows (about 7 metrics per model-epoch)
    catalog = 12 * 4096 + n_models * 700 + (n_model_epochs + n_models) * 7 * 40
    return ZooEstimate(models=n_models, groups=n_groups, files=files, bytes=total + catalog)


#: Grid axes that never change what is validated (not TrainConfig fields, no effect on data or model).
SEED_AXES = ("training.seed", "training.data_seed")


def summarize_spec(spec: ZooSpec) -> tuple[ZooPlan, ZooEstimate]:
    """Validate a spec as :func:`plan_zoo` does, without expanding its seed axes (fast for huge grids).

    ``training.seed`` and ``training.data_seed`` only pick random streams: their values are range-checked by the
    spec parser and every other axis is expanded and validated in full (each distinct TrainConfig, data set and
    model built once). The counts are then scaled by the number of seed combinations.

    Args:
        spec: validated spec.

    Returns:
        (the plan of the spec with each seed axis cut to its first value, the estimate for the full zoo).
    """
    factor = 1
    grid = dict(spec.grid)
    for key in SEED_AXES:
        if key in grid:
            factor *= len(grid[key])
            grid[key] = grid[key][:1]
    plan = plan_zoo(dataclasses.replace(spec, grid=grid))
    return plan, estimate_zoo(plan, seed_factor=factor)


def _describe_data(dataset_section: dict[str, Any]) -> dict[str, Any]:
    data = load_data(dataset_section)
    return {
        "n_train": int(len(data.train_y)),
        "model_args": data_model_args(data),
        "sample": data.train_x[:2],
        "num_outputs": int(data.num_outputs),
    }


def plan_zoo(
    spec: ZooSpec,
    describe_data: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    count_params: Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], int] | None = None,
) -> ZooPlan:
    """Expand and fully validate a spec without writing anything (builds each distinct model and data set once).

    Args:
        spec: validated spec.
        describe_data: dataset section -> ``{"n_train", "model_args", ...}`` (default: load the data set).
        count_params: (model section, model_args, data description) -> parameter count (default: build the model
            and run it on two training samples).

    Returns:
        ZooPlan.

    Raises:
        SpecError: a model, data set or TrainConfig cannot be built.
    """
    configs = expand_spec(spec)
    seen: set[str] = set()
    member_only = {"seed", "data_seed"}  # not TrainConfig fields: values never change the TrainConfig
    for cfg in configs:
        training = {k: v for k, v in cfg["training"].items() if k not in member_only}
        key = canonical_json(training)
        if key in seen:
            continue
        seen.add(key)
        try:
            build_train_config(training)
        except Exception as exc:  # TrainConfig's own validation
            raise SpecError(spec.path, "[training]", f"invalid TrainConfig {key}: {exc}") from exc
    resolve_sizes(configs, describe_data or _describe_data, count_params or _count_params, spec.path)
    groups = _groups_of(configs)
    return ZooPlan(spec=spec, configs=configs, groups=groups)


def _groups_of(configs: list[dict[str, Any]]) -> list[Group]:
    """The groups :func:`expand_spec` assigned (same as ``group_configs(configs, max_population)``, without
    hashing every config again)."""
    members: dict[str, list[dict[str, Any]]] = {}
    for cfg in configs:
        members.setdefault(cfg["group_id"], []).append(cfg)
    return [Group(group_id=gid, model_ids=tuple(sorted(c["model_id"] for c in cfgs)), key=group_key(cfgs[0]))
            for gid, cfgs in sorted(members.items())]


def _check_out_dir(out_dir: Path, spec: ZooSpec) -> None:
    """Refuse early (before taking the lock, which creates files) when out_dir cannot hold this zoo."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ZooExistsError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and not is_zoo(out_dir) and any(
            p.name != ".lock" and not (p.name.startswith(".") and p.name.endswith(".tmp")) for p in out_dir.iterdir()):
        raise ZooExistsError(f"{out_dir} is not empty and is not a zoo directory")


def _check_chunk_size(out_dir: Path, spec: ZooSpec) -> None:
    """Refuse (with a clear message) to continue a zoo with another population chunk size than it was made with."""
    if not is_zoo(out_dir) or ZooStore(out_dir).unfinished():
        return
    with Catalog(out_dir / "catalog.sqlite", readonly=True) as catalog:
        stored = catalog.meta().get("spec_fingerprint")
    if not stored or stored == spec.fingerprint():
        return
    try:
        doc = json.loads(stored)
        size = int(doc["population"]["max_size"])
    except (ValueError, KeyError, TypeError):
        return
    if dataclasses.replace(spec, max_population=size).fingerprint() == stored:
        raise ZooExistsError(
            f"{out_dir} was trained in population chunks of at most {size} models, not {spec.max_population}: "
            f"re-run with --chunk-size {size} (chunk_size={size})"
        )


class _Driver:
    """Handles engine events and results: the single writer of the catalog."""

    def __init__(self, store: ZooStore, catalog: Any, bar: Any, epochs_of: dict[str, int]) -> None:
        self.store = store
        self.catalog = catalog
        self.bar = bar
        self.epochs_of = epochs_of  # group -> epochs
        self.counted: dict[str, int] = {}
        self.tracker: Any = None

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "start":
            self.catalog.set_status(event["model_ids"], "running")
        elif kind == "rows":
            self.catalog.record(event["metrics"], event["checkpoints"], event["statuses"])
            if self.tracker is not None:  # --log: a copy for a tracking tool (never fails training)
                self.tracker.log_rows(event["metrics"])
            gid = event["group_id"]
            self.counted[gid] = self.counted.get(gid, 0) + event["model_epochs"]
            self.bar.update(event["model_epochs"])
        elif kind == "analyses":  # LMC measured during training (zooscape.studies.lmc_train)
            self.catalog.add_analyses(event["rows"])
        else:
            raise ValueError(f"unknown engine event type {kind!r}")

    def on_result(self, result: dict[str, Any], n_members: int) -> None:
        gid = result["group_id"]
        statuses = result["statuses"]
        self.catalog.record(statuses=statuses)
        self.store.delete_resume(gid)
        remaining = n_members * self.epochs_of[gid] - self.counted.get(gid, 0)
        if remaining > 0:  # failed / stopped members end early
            self.bar.update(remaining)
        for mid, (status, reason) in statuses.items():
            if status == "failed":
                log.warning("model %s failed: %s", mid, reason)


def train_zoo(
    spec_path: str | Path,
    out_dir: str | Path,
    engine: str | Engine = "local",
    workers: int | str = 1,
    device: str = "auto",
    progress: bool = True,
    chunk_size: int | None = None,
    engine_options: Mapping[str, Any] | None = None,
    threads: int | None = None,
    tracker: Any = None,
) -> Any:
    """Train (or finish training) the zoo of a spec into ``out_dir``.

    Validates the spec completely before writing anything, creates the store (or checks that ``out_dir`` holds a
    zoo of the same spec), skips finished models (done, failed, stopped), resumes partially trained groups from
    their resume files and trains the rest.

    Args:
        spec_path: TOML spec.
        out_dir: zoo directory (created).
        engine: ``"local"``, ``"ray"`` or an :class:`~zooscape.zoo.engines.Engine` (an engine given by name is
            closed at the end).
        workers: worker processes of the local engine (``"auto"``: the cores this process may use).
        device: torch device passed to the trainer ("auto", "cpu", "cuda:0", ...).
        progress: show a tqdm bar over model-epochs (stderr).
        chunk_size: models per task, i.e. the largest training population (overrides ``[population]
            max_size``). It decides the groups and so the checkpoint files: it is part of the zoo, and a re-run
            must use the same value.
        tracker: a :class:`zooscape.zoo.tracking.Tracker` that gets a copy of every metrics row (``--log``).
        engine_options: keyword arguments of the named engine (for ``"ray"``: ``address``, ``num_cpus``,
            ``num_gpus``, ``max_retries``, ... of :class:`~zooscape.zoo.engines.ray_engine.RayEngine`).
        threads: torch intra-op threads per training process (default 1, whatever ``OMP_NUM_THREADS`` says: see
            :mod:`zooscape.train.threads`); set in this process for the duration of the call (restored after) and
            in every local worker process (``threads_per_worker``; on Ray ``threads_per_task`` unless given).

    Returns:
        the trained :class:`zooscape.zoo.reader.Zoo`.

    Raises:
        SpecError: invalid spec (nothing written).
        ZooExistsError: ``out_dir`` holds another zoo (or the same with another ``chunk_size``) or other files.
        RuntimeError: another process is training into ``out_dir``; ``engine="ray"`` without ``ray`` installed.
        ValueError: ``chunk_size`` < 1, or engine options the engine does not take.
    """
    from tqdm.auto import tqdm

    from zooscape.zoo.reader import open_zoo

    spec_path = Path(spec_path)
    out_dir = Path(out_dir)
    spec = load_spec(spec_path)
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        spec = dataclasses.replace(spec, max_population=chunk_size)
    plan = plan_zoo(spec)
    _check_out_dir(out_dir, spec)
    _check_chunk_size(out_dir, spec)
    options = dict(engine_options or {})
    if engine == "local":
        workers = resolve_workers(workers)
        options.setdefault("threads_per_worker", resolve_threads(threads))
    elif engine == "ray" and threads is not None:
        options.setdefault("threads_per_task", resolve_threads(threads))
    eng = get_engine(engine, workers, **options)
    owned = isinstance(engine, str)
    spec_text = spec_path.read_text(encoding="utf-8")

    store = ZooStore(out_dir)
    with torch_threads(threads), store.lock():
        prepare_grown_zoo(store, spec, spec_text, plan)  # a spec that adds grid values grows the zoo
        catalog = store.create_or_check(spec_text, spec.fingerprint())
        try:
            damaged = quick_check(out_dir, catalog)
            if damaged:
                log.warning("%s: %s; they are not re-trained by `zoo train`: run `zooscape zoo verify --repair %s`",
                            out_dir, damaged.summary(), out_dir)
            catalog.add_models(plan.configs)
            store.remove_temp_files()
            statuses = catalog.statuses()
            by_id = {c["model_id"]: c for c in plan.configs}
            tasks, epochs_of = [], {}
            lmc = training_lmc(spec.lmc)
            for group in plan.groups:
                if all(statuses.get(m) in FINISHED for m in group.model_ids):
                    store.delete_resume(group.group_id)  # stale file of a group recorded as finished
                    continue
                cfgs = [{k: by_id[m][k] for k in ("dataset", "model", "training", "derived")} for m in group.model_ids]
                epochs = int(cfgs[0]["training"]["epochs"])
                epochs_of[group.group_id] = epochs
                tasks.append(
                    GroupTask(
                        root=str(out_dir),
                        group_id=group.group_id,
                        model_ids=list(group.model_ids),
                        configs=cfgs,
                        checkpoint_epochs=list(checkpoint_epochs(spec.checkpoint_epochs, epochs)),
                        save_optimizer=spec.save_optimizer,
                        device=device,
                        extra={"lmc": lmc} if lmc else {},
                    )
                )
            total = sum(len(t.model_ids) * epochs_of[t.group_id] for t in tasks)
            sizes = {t.group_id: len(t.model_ids) for t in tasks}
            with tqdm(total=total, unit="model-epoch", disable=not progress, desc=spec.name) as bar:
                driver = _Driver(store, catalog, bar, epochs_of)
                driver.tracker = tracker
                for result in eng.map(run_group, tasks, on_event=driver.on_event, ordered=False):
                    driver.on_result(result, sizes[result["group_id"]])
            store.remove_temp_files()  # of task attempts killed mid-write and retried by the engine
        finally:
            catalog.close()
            if owned and callable(getattr(eng, "close", None)):
                eng.close()
    return open_zoo(out_dir)
