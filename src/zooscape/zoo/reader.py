"""Read a zoo directory: tables of configs and metrics, model weights, data sets.

>>> import zooscape.zoo
>>> zoo = zooscape.zoo.open("runs/quickstart")          # doctest: +SKIP
>>> df = zoo.table()                                    # one row per (model, epoch)   # doctest: +SKIP
>>> model = zoo.load_model(zoo.model_ids[0], epoch=5)   # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zooscape.zoo.catalog import Catalog
from zooscape.zoo.grid import canonical_json, model_kind
from zooscape.zoo.shards import ShardError, ShardRecord, check_shard, read_model
from zooscape.zoo.spec import ZooSpec, load_spec, load_stored_spec, spec_matches
from zooscape.zoo.store import ZooStore, is_zoo

if TYPE_CHECKING:  # pandas, torch and the model builders are imported by the methods that need them, so that
    # opening a zoo and reading its spec, counts and catalog stays fast (``zooscape zoo info``)
    import pandas as pd
    import torch
    from torch import nn

__all__ = ["Zoo", "open_zoo", "flatten_config"]

#: Columns of :meth:`Zoo.configs` besides the flattened config.
MODEL_COLUMNS = ("model_id", "group_id", "status", "reason", "n_params", "temperature", "load")


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts with dotted keys (``{"model": {"width": 8}}`` -> ``{"model.width": 8}``).

    Lists are kept as values (lists of scalars become tuples, so that they can be grouped on).

    Args:
        config: nested dict.
        prefix: key prefix.

    Returns:
        flat dict.
    """
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_config(v, key + "."))
        elif isinstance(v, list):
            out[key] = tuple(v) if all(not isinstance(x, list | dict) for x in v) else json.dumps(v)
        else:
            out[key] = v
    return out


def open_zoo(path: str | Path) -> Zoo:
    """Open a zoo directory for reading.

    Args:
        path: directory created by :func:`zooscape.zoo.train_zoo`.

    Returns:
        Zoo.

    Raises:
        FileNotFoundError: ``path`` is not a zoo directory.
    """
    path = Path(path)
    if not is_zoo(path):
        raise FileNotFoundError(f"{path} is not a zoo directory (no catalog.sqlite)")
    return Zoo(path)


class Zoo:
    """A zoo on disk (read-only view; safe to use while a driver is still training into it).

    Args:
        path: zoo directory.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.store = ZooStore(self.path)
        self._catalog = Catalog(self.store.catalog_path, readonly=True)
        self._models_cache: dict[str, nn.Module] = {}
        self._checked: set[tuple[str, int, int, int]] = set()  # (file, inode, size, mtime_ns) already verified
        self._records: dict[str, ShardRecord] = {}

    def __repr__(self) -> str:
        return f"Zoo({str(self.path)!r}, models={len(self.model_ids)})"

    def close(self) -> None:
        """Close the catalog connection."""
        self._catalog.close()

    def __enter__(self) -> Zoo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def catalog(self) -> Catalog:
        """The read-only :class:`~zooscape.zoo.catalog.Catalog`."""
        return self._catalog

    # ------------------------------------------------------------------------------------------- configs

    @cached_property
    def spec(self) -> ZooSpec:
        """The spec the zoo was created from (parsed from ``spec.toml``, checked against the catalog's fingerprint).

        Raises:
            SpecError: ``spec.toml`` is missing or invalid.
            ValueError: ``spec.toml`` describes another zoo than the catalog's fingerprint (edited or replaced).
        """
        stored = self._catalog.meta().get("spec_fingerprint")
        quick = load_stored_spec(self.store.spec_path, stored)  # the spec it was created from: no registries needed
        if quick is not None:
            return quick
        spec = load_spec(self.store.spec_path)
        if stored is not None and not spec_matches(spec, stored):
            raise ValueError(f"{self.store.spec_path} does not match the spec this zoo was created from (the "
                             "catalog's fingerprint): it was edited or replaced")
        return spec

    @property
    def model_ids(self) -> list[str]:
        """All model ids, sorted."""
        return [r[0] for r in self._catalog.query("SELECT model_id FROM models ORDER BY model_id")]

    def config(self, model_id: str) -> dict[str, Any]:
        """Nested config of one model (``dataset``, ``model``, ``training``, ``derived``).

        Args:
            model_id: the model.

        Returns:
            dict.

        Raises:
            KeyError: unknown model id.
        """
        rows = self._catalog.query("SELECT config FROM models WHERE model_id = ?", (model_id,))
        if not rows:
            raise KeyError(f"unknown model_id {model_id!r} in zoo {self.path} ({len(self.model_ids)} models)")
        return json.loads(rows[0][0])

    def configs(self) -> pd.DataFrame:
        """One row per model: id, group, status, reason, n_params, temperature, load, the flattened config
        (``"model.width"``, ``"training.lr"``, ``"dataset.train_fraction"``, ...) and the derived ``width``,
        ``train_fraction`` (default 1.0 filled in) and ``n_train``; ``kind`` and ``source_id`` (see
        :func:`model_kind`: ``"model"`` for models trained from the spec's grid, ``"twin"`` for sparsified twins,
        whose ``source_id`` is the model they were sparsified from).

        Returns:
            DataFrame indexed 0..n-1, sorted by model_id.
        """
        import pandas as pd

        records = self.config_records()
        return pd.DataFrame.from_records(records, columns=None if records else list(MODEL_COLUMNS))

    def config_records(self) -> list[dict[str, Any]]:
        """The rows of :meth:`configs` as plain dicts (no pandas: cheap for metadata commands).

        Returns:
            list of dicts, sorted by model_id.
        """
        rows = self._catalog.query(
            "SELECT model_id, group_id, status, reason, n_params, temperature, load, config FROM models"
            " ORDER BY model_id"
        )
        records = []
        for *head, config in rows:
            rec = dict(zip(MODEL_COLUMNS, head))
            cfg = json.loads(config)
            derived = cfg.pop("derived", {})
            rec.update(flatten_config(cfg))
            for k in ("width", "train_fraction", "n_train"):
                rec[k] = derived.get(k)
            rec["kind"], rec["source_id"] = model_kind(derived)
            records.append(rec)
        return records

    # ------------------------------------------------------------------------------------------- metrics

    def metrics(self) -> pd.DataFrame:
        """Metrics in long format.

        Returns:
            DataFrame with columns model_id, epoch, name, value.
        """
        import pandas as pd

        rows = self._catalog.query("SELECT model_id, epoch, name, value FROM metrics ORDER BY model_id, epoch")
        return pd.DataFrame(rows, columns=["model_id", "epoch", "name", "value"]).astype({"value": "float64"})

    def table(self, analyses: bool = True) -> pd.DataFrame:
        """One row per (model, recorded epoch): flattened config columns, status, temperature, load and one column
        per metric (train_loss, test_acc, ...).

        Args:
            analyses: also join the stored analysis results as columns (``hessian_top_eigenvalue``, ``cka``,
                ``barrier_loss_test_linear``, ...; see :mod:`zooscape.zoo.columns`: pairwise results are the mean
                over the model's pairs, the pairs themselves are :meth:`pairs`).

        Returns:
            DataFrame sorted by model_id and epoch.
        """
        import pandas as pd

        configs = self.configs()
        long = self.metrics()
        if long.empty:
            wide = pd.DataFrame(columns=["model_id", "epoch"])
        else:
            wide = long.pivot_table(index=["model_id", "epoch"], columns="name", values="value", aggfunc="first",
                                    dropna=False)
            wide.columns.name = None
            wide = wide.reset_index()
        out = configs.merge(wide, on="model_id", how="inner")
        if analyses and not out.empty:
            from zooscape.zoo.columns import model_analysis_columns

            extra = model_analysis_columns(self._catalog)
            extra = extra[[c for c in extra.columns if c in ("model_id", "epoch") or c not in out.columns]]
            if len(extra.columns) > 2:
                out = out.astype({"epoch": "int64"}).merge(extra, on=["model_id", "epoch"], how="left")
        cols = ["model_id", "epoch"] + [c for c in out.columns if c not in ("model_id", "epoch")]
        return out[cols].sort_values(["model_id", "epoch"]).reset_index(drop=True)

    def analyses(self, metric: str | None = None) -> pd.DataFrame:
        """Analysis results stored in the catalog.

        Args:
            metric: only this metric (None: all).

        Returns:
            DataFrame with columns model_id, other_id, epoch, metric, value, params (dict), created.
        """
        import pandas as pd

        sql = "SELECT model_id, other_id, epoch, metric, value, params, created FROM analyses"
        args: tuple[Any, ...] = ()
        if metric is not None:
            sql, args = sql + " WHERE metric = ?", (metric,)
        rows = self._catalog.query(sql + " ORDER BY id", args)
        df = pd.DataFrame(rows, columns=["model_id", "other_id", "epoch", "metric", "value", "params", "created"])
        df["params"] = [json.loads(p) for p in df["params"]]
        return df

    def pairs(self) -> pd.DataFrame:
        """Pairwise analysis results (barriers, distances, CKA, curve mc), the companion table of :meth:`table`.

        Returns:
            DataFrame with columns model_id, other_id, epoch and one column per pairwise metric.
        """
        from zooscape.zoo.columns import pair_table

        return pair_table(self._catalog)

    def metric_names(self) -> list[str]:
        """Names of every metric column :meth:`table` can hold: the trainer's metrics and the stored analyses.

        Returns:
            sorted list of names.
        """
        names = {r[0] for r in self._catalog.query("SELECT DISTINCT name FROM metrics")}
        names |= {r[0] for r in self._catalog.query("SELECT DISTINCT metric FROM analyses")}
        return sorted(names)

    # ------------------------------------------------------------------------------------------- weights

    def epochs(self, model_id: str, kind: str = "weights") -> list[int]:
        """Checkpointed epochs of a model.

        Args:
            model_id: the model.
            kind: ``"weights"`` or ``"optimizer"``.

        Returns:
            sorted list of epochs.
        """
        rows = self._catalog.query(
            "SELECT epoch FROM checkpoints WHERE model_id = ? AND kind = ? ORDER BY epoch", (model_id, kind)
        )
        return [r[0] for r in rows]

    def _shard(self, model_id: str, epoch: int, kind: str) -> Path:
        self.config(model_id)  # KeyError for unknown ids
        rows = self._catalog.query(
            "SELECT file FROM checkpoints WHERE model_id = ? AND epoch = ? AND kind = ?", (model_id, int(epoch), kind)
        )
        if not rows:
            raise KeyError(
                f"model {model_id!r} has no {kind} checkpoint at epoch {epoch}; "
                f"available epochs: {self.epochs(model_id, kind)}"
            )
        rel = rows[0][0]
        self.check_shard(rel, int(epoch), kind)
        return self.path / rel

    def shard_records(self) -> dict[str, ShardRecord]:
        """Integrity records (size, SHA-256, group/epoch/kind) of every shard, by file relative to the zoo.

        Returns:
            dict file -> ShardRecord (empty for zoos written before records existed).
        """
        return self._catalog.shard_records()

    def check_shard(self, rel: str, epoch: int | None = None, kind: str | None = None,
                    record: ShardRecord | None = None, data: Any = None,
                    header: dict[str, Any] | None = None) -> None:
        """Verify a shard before its tensors are used: size and CRC-32 against the catalog's record and its
        header's group/epoch/kind against the catalog (each file once per unchanged inode, size and mtime;
        ``zoo verify`` checks the SHA-256).

        Args:
            rel: shard path relative to the zoo.
            epoch: epoch the catalog's rows expect (None: the record's).
            kind: kind the catalog's rows expect (None: the record's).
            record: the catalog's record if already fetched (else it is looked up).
            data: the file's bytes if already in memory (a memory map).
            header: the file's parsed safetensors header if already read.

        Raises:
            ShardError: missing, truncated, corrupt, or holding another group/epoch/kind.
        """
        path = self.path / rel
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ShardError(f"shard {path}: missing (run `zooscape zoo verify --repair {self.path}`)") from None
        key = (rel, st.st_ino, st.st_size, st.st_mtime_ns)
        if key in self._checked:
            return
        if record is None:
            if rel not in self._records:
                self._records.update(self._catalog.shard_records())  # one query for all (new) records
            record = self._records.get(rel)
        if epoch is None or kind is None:
            if record is None:
                return
            epoch, kind = record.epoch, record.kind
        group = record.group_id if record is not None else Path(rel).parent.name
        check_shard(path, record, (group, epoch, kind), data=data, header=header)
        self._checked.add(key)

    def state_dict(self, model_id: str, epoch: int) -> dict[str, torch.Tensor]:
        """Weights (and buffers) of a model at a checkpointed epoch, read from its shard.

        Args:
            model_id: the model.
            epoch: a checkpointed epoch.

        Returns:
            state dict of CPU tensors.

        Raises:
            KeyError: unknown model id, or no checkpoint at that epoch (the message lists the available ones).
        """
        return read_model(self._shard(model_id, epoch, "weights"), model_id)

    def optimizer_state(self, model_id: str, epoch: int) -> dict[str, torch.Tensor]:
        """Flat optimizer state of a model at a checkpointed epoch.

        Args:
            model_id: the model.
            epoch: a checkpointed epoch.

        Returns:
            dict of CPU tensors.
        """
        return read_model(self._shard(model_id, epoch, "optimizer"), model_id)

    def load_model(self, model_id: str, epoch: int, device: str | torch.device = "cpu") -> nn.Module:
        """Re-create a model with ``create_model`` and load its weights at ``epoch``.

        Args:
            model_id: the model.
            epoch: a checkpointed epoch.
            device: where to put the model.

        Returns:
            nn.Module in eval mode.

        Raises:
            KeyError: unknown id or epoch (the message lists the available epochs).
        """
        from zooscape.zoo.build import build_model

        cfg = self.config(model_id)
        state = self.state_dict(model_id, epoch)
        model = build_model(cfg["model"], seed=int(cfg["training"].get("seed", 0)),
                            model_args=cfg.get("derived", {}).get("model_args"))
        model.load_state_dict(state, strict=True)
        return model.to(device).eval()

    # ------------------------------------------------------------------------------------------- data

    def data(self, model_id: str | None = None) -> Any:
        """The data set (``DataSplits``) a model was trained on.

        Args:
            model_id: the model; may be omitted when every model of the zoo uses the same data set.

        Returns:
            DataSplits.

        Raises:
            ValueError: ``model_id`` omitted but the zoo's models use different data sets.
        """
        from zooscape.zoo.build import load_data

        if model_id is not None:
            return load_data(self.config(model_id)["dataset"])
        distinct = {}
        for (config,) in self._catalog.query("SELECT config FROM models"):
            ds = json.loads(config)["dataset"]
            distinct[canonical_json(ds)] = ds
        if len(distinct) != 1:
            raise ValueError(
                f"the models of zoo {self.path} use {len(distinct)} different data sets; pass model_id"
            )
        return load_data(next(iter(distinct.values())))

    def dataset(
        self,
        epochs: int | str | Sequence[int] | None = None,
        layers: Sequence[int | str] | None = None,
        properties: Sequence[str] = ("test_acc",),
        filters: Any = None,
        split: Sequence[float] = (0.7, 0.15, 0.15),
        seed: int = 42,
        **kwargs: Any,
    ) -> Any:
        """The zoo as a data set: train/val/test splits (by model) of vectorised weights and properties.

        See :func:`zooscape.zoo.weights.build_datasets` (``categorical``, ``dtype``, ``device`` are passed on).
        For the data the models were trained on, use :meth:`data`.

        Args:
            epochs: None (all checkpoints), ``"last"``, an int or a list of ints.
            layers: layer indices/names/patterns to keep (None: all parameters).
            properties: metrics (``test_acc``), ``ggap``, ``epoch``, config keys (``training.lr``).
            filters: ``zooscape.zoo.weights.Filters`` or a dict (nonfinite, max_abs, failed, predicate).
            split: (train, val, test) fractions of the models.
            seed: split seed.
            **kwargs: further arguments of ``build_datasets``.

        Returns:
            ``ZooDatasets`` (``train, val, test = zoo.dataset(...)``; ``.index_map``, ``.report``).

        References:
            Schürholt et al. (2022), "Model Zoos: A Dataset of Diverse Populations of Neural Network Models".
        """
        if isinstance(epochs, str) and epochs not in ("all", "last"):
            raise TypeError(
                f"Zoo.dataset(epochs={epochs!r}): dataset() builds weight data sets; the data a model was trained "
                "on is Zoo.data(model_id)"
            )
        from zooscape.zoo.dataset_build import build_datasets

        return build_datasets(self, epochs=epochs, layers=layers, properties=properties, filters=filters,
                              split=split, seed=seed, **kwargs)

    def status_counts(self) -> dict[str, int]:
        """Number of models per status.

        Returns:
            dict status -> count.
        """
        return dict(self._catalog.query("SELECT status, COUNT(*) FROM models GROUP BY status ORDER BY status"))

    def grid_axes(self) -> dict[str, list[Any]]:
        """The grid of the spec: dotted key -> values.

        Returns:
            dict.
        """
        return {k: list(v) for k, v in self.spec.grid.items()}

    def select(self, model_ids: Sequence[str]) -> pd.DataFrame:
        """Rows of :meth:`configs` for the given ids (in that order).

        Args:
            model_ids: ids.

        Returns:
            DataFrame.
        """
        df = self.configs().set_index("model_id")
        missing = [m for m in model_ids if m not in df.index]
        if missing:
            raise KeyError(f"unknown model ids {missing}")
        return df.loc[list(model_ids)].reset_index()
