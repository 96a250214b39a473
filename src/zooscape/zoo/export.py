"""Export a zoo for other tools: its catalog as Parquet tables, its models as a Hugging Face Hub-style folder.

- :func:`export_parquet` writes ``table.parquet`` (:meth:`Zoo.table`, analyses columns included),
  ``models.parquet`` (:meth:`Zoo.configs`), ``metrics.parquet`` (long format), ``analyses.parquet`` and
  ``pairs.parquet`` (:meth:`Zoo.pairs`). Columns holding tuples (list-valued config keys) are stored as JSON
  text and listed in the file's metadata; :func:`read_parquet` decodes them, so
  ``read_parquet(out / "table.parquet")`` equals ``zoo.table()``. Needs ``pyarrow`` (``pip install
  "zooscape[export]"``).
- :func:`export_hf` writes one folder per model in the layout of the Hugging Face Hub (``model.safetensors``,
  ``config.json``, a generated model card ``README.md``) plus a zoo card; nothing is uploaded.
  :func:`load_hf_model` rebuilds a model from such a folder.

Both write into a temporary sibling folder and rename it into place at the end, so an interrupted export leaves
no half-written output.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["export_hf", "export_parquet", "load_hf_model", "read_parquet"]

#: Parquet metadata key listing the columns stored as JSON text.
JSON_COLUMNS_KEY = b"zooscape.json_columns"


@contextmanager
def _staged_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; rename it to ``out`` on success, delete it on failure."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _require_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise RuntimeError('Parquet export needs pyarrow: pip install "zooscape[export]"') from None
    return pyarrow


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    pa = _require_pyarrow()
    df = df.copy()
    json_cols = [c for c in df.columns if df[c].dtype == object
                 and df[c].map(lambda v: isinstance(v, tuple | list | dict)).any()]
    for c in json_cols:
        df[c] = df[c].map(lambda v: None if v is None else json.dumps(list(v) if isinstance(v, tuple) else v))
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[JSON_COLUMNS_KEY] = json.dumps(json_cols).encode()
    pa.parquet.write_table(table.replace_schema_metadata(meta), path)


def read_parquet(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`export_parquet` (JSON-encoded tuple columns decoded back to tuples).

    Args:
        path: a ``.parquet`` file of an export.

    Returns:
        DataFrame.
    """
    pa = _require_pyarrow()
    table = pa.parquet.read_table(path)
    json_cols = json.loads((table.schema.metadata or {}).get(JSON_COLUMNS_KEY, b"[]"))
    df = table.to_pandas()
    for c in json_cols:
        df[c] = df[c].map(lambda v: None if v is None else _tuples(json.loads(v)))
    return df


def _tuples(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def export_parquet(zoo_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write the catalog of a zoo as Parquet tables.

    Args:
        zoo_dir: zoo directory.
        out_dir: folder to create (must not exist or be empty).

    Returns:
        table name -> written file (``table``, ``models``, ``metrics``, ``analyses``, ``pairs``).

    Raises:
        FileNotFoundError: not a zoo. FileExistsError: ``out_dir`` is not empty. RuntimeError: no pyarrow.
    """
    from zooscape.zoo.reader import open_zoo

    _require_pyarrow()
    out_dir = Path(out_dir)
    with open_zoo(zoo_dir) as zoo:
        analyses = zoo.analyses()
        analyses["params"] = [json.dumps(p, sort_keys=True) for p in analyses["params"]]
        frames = {"table": zoo.table(), "models": zoo.configs(), "metrics": zoo.metrics(), "analyses": analyses,
                  "pairs": zoo.pairs()}
    written = {}
    with _staged_dir(out_dir) as tmp:
        for name, df in frames.items():
            _write_parquet(df, tmp / f"{name}.parquet")
            written[name] = out_dir / f"{name}.parquet"
    return written


def _card(cfg: dict[str, Any], model_id: str, epoch: int, metrics: dict[str, float], zoo_name: str) -> str:
    """A Hugging Face model card (YAML front matter + Markdown) for one model."""
    import tomli_w

    ds = cfg["dataset"]["name"]
    lines = ["---", "library_name: zooscape", "tags:", "- model-zoo", "- zooscape", f"- {cfg['model']['name']}",
             "datasets:", f"- {ds}", "---", ""]
    lines += [f"# {zoo_name} / {model_id}", "",
              f"A `{cfg['model']['name']}` trained on `{ds}` for {cfg['training'].get('epochs')} epochs, one model of "
              f"the zoo `{zoo_name}` generated with zooscape. Weights at epoch {epoch}.", "",
              "## Metrics at this epoch", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items())]
    lines += ["", "## Configuration", "", "```toml",
              tomli_w.dumps({k: cfg[k] for k in ("dataset", "model", "training")}).strip(), "```", "",
              "## Loading", "", "```python", "from zooscape.zoo.export import load_hf_model",
              f'model = load_hf_model("{model_id}")', "```", ""]
    return "\n".join(lines)


def export_hf(zoo_dir: str | Path, out_dir: str | Path, epoch: int | None = None,
              model_ids: Sequence[str] | None = None) -> list[Path]:
    """Write models of a zoo as Hugging Face Hub-style folders (written locally; nothing is uploaded).

    Each model gets ``<out_dir>/<model_id>/`` with ``model.safetensors`` (its state dict at ``epoch``),
    ``config.json`` (the zooscape config: dataset, model, training, derived; ``epoch``; metrics at that epoch) and
    ``README.md`` (a generated model card); ``<out_dir>/README.md`` is the zoo's card and ``zoo.json`` lists the
    models.

    Args:
        zoo_dir: zoo directory.
        out_dir: folder to create (must not exist or be empty).
        epoch: checkpointed epoch to export (default: each model's last checkpoint).
        model_ids: models to export (default: every model with a checkpoint).

    Returns:
        the model folders written.

    Raises:
        KeyError: a model has no checkpoint at ``epoch``, or an unknown id.
    """
    from safetensors.torch import save

    from zooscape._io import atomic_write_bytes
    from zooscape.zoo.reader import open_zoo

    out_dir = Path(out_dir)
    folders = []
    with open_zoo(zoo_dir) as zoo, _staged_dir(out_dir) as tmp:
        ids = list(model_ids) if model_ids is not None else [m for m in zoo.model_ids if zoo.epochs(m)]
        table = zoo.table()
        listing = []
        for mid in ids:
            epochs = zoo.epochs(mid)
            e = (epochs[-1] if epochs else None) if epoch is None else int(epoch)
            if e is None:
                raise KeyError(f"model {mid!r} has no weights checkpoint")
            state = zoo.state_dict(mid, e)  # KeyError naming the available epochs
            cfg = zoo.config(mid)
            row = table[(table["model_id"] == mid) & (table["epoch"] == e)]
            from zooscape.zoo.columns import numeric_metric_columns

            metrics = {c: float(row[c].iloc[0]) for c in numeric_metric_columns(table)
                       if not row.empty and pd.notna(row[c].iloc[0])}
            folder = tmp / mid
            folder.mkdir()
            tensors = {k: v.contiguous() for k, v in state.items()}
            atomic_write_bytes(folder / "model.safetensors",
                               save(tensors, metadata={"format": "pt", "model_id": mid, "epoch": str(e)}))
            config = {"library_name": "zooscape", "model_id": mid, "zoo": zoo.spec.name, "epoch": e,
                      "architecture": cfg["model"]["name"], **cfg, "metrics": metrics}
            atomic_write_bytes(folder / "config.json", json.dumps(config, indent=1, sort_keys=True).encode())
            atomic_write_bytes(folder / "README.md", _card(cfg, mid, e, metrics, zoo.spec.name).encode())
            listing.append({"model_id": mid, "epoch": e, **{k: metrics[k] for k in sorted(metrics)[:8]}})
            folders.append(out_dir / mid)
        card = [f"# Model zoo {zoo.spec.name}", "", zoo.spec.description or "", "",
                f"{len(ids)} models exported by zooscape, one folder each (model.safetensors, config.json, "
                "README.md). Grid:", ""]
        card += [f"- `{k}`: {', '.join(map(str, v))}" for k, v in zoo.spec.grid.items()]
        atomic_write_bytes(tmp / "README.md", ("\n".join(card) + "\n").encode())
        atomic_write_bytes(tmp / "zoo.json", json.dumps({"zoo": zoo.spec.name, "models": listing}, indent=1).encode())
    return folders


def load_hf_model(folder: str | Path) -> Any:
    """Rebuild a model from a folder written by :func:`export_hf` (safetensors only; no pickle).

    Args:
        folder: a model folder.

    Returns:
        ``nn.Module`` in eval mode with the exported weights.
    """
    from safetensors.torch import load_file

    from zooscape.zoo.build import build_model

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    model = build_model(config["model"], seed=int(config["training"].get("seed", 0)),
                        model_args=config.get("derived", {}).get("model_args"))
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return model.eval()
