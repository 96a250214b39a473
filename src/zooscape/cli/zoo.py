"""``zooscape zoo ...``: validate, train, summarise and plot zoos (see ``docs/cli.md``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from zooscape.cli._common import (
    add_device,
    add_group,
    add_log,
    add_out,
    add_quiet,
    add_workers_engine,
    engine_options,
    heavy_imports,
    tracker,
)

__all__ = ["add_parser"]

DEFAULT_METRICS = ("test_acc", "test_loss", "train_acc", "train_loss", "val_acc")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``zoo`` command group to ``subparsers``; returns the group's parser."""
    p, sub = add_group(subparsers, "zoo", help="generate and inspect model zoos",
                       description="Generate and inspect model zoos.")

    t = sub.add_parser("train", help="train (or resume) the zoo of a spec",
                       description="Train the zoo of a TOML spec into DIR. Re-running the same command resumes an "
                                   "interrupted run; finished models are skipped.")
    t.add_argument("spec", metavar="SPEC", help="TOML spec file")
    add_out(t, required=True, help="zoo directory (created)")
    add_device(t)
    add_quiet(t)
    add_workers_engine(t, chunk_size=True, what="the population chunks")
    t.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads per training process (default 1, whatever OMP_NUM_THREADS says; "
                        "parallelism comes from --workers)")
    add_log(t)
    t.set_defaults(func=cmd_train)

    v = sub.add_parser("validate", help="check a spec and show its expansion (writes nothing)",
                       description="Validate a spec fully (builds each distinct model, data set and TrainConfig "
                                   "once) and print the number of models, groups and model-epochs and an estimate "
                                   "of the files and bytes the zoo will take.")
    v.add_argument("spec", metavar="SPEC", help="TOML spec file")
    v.set_defaults(func=cmd_validate)

    i = sub.add_parser("info", help="summary of a zoo directory",
                       description="Counts by status, grid axes and final-epoch metrics per grid cell "
                                   "(mean and std over seeds).")
    i.add_argument("dir", metavar="DIR", help="zoo directory")
    i.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help=f"comma-separated metrics to summarise (default {','.join(DEFAULT_METRICS)})")
    i.add_argument("--epoch", type=int, default=None, help="epoch to summarise (default: each model's last)")
    i.set_defaults(func=cmd_info)

    pl = sub.add_parser("plot", help="heatmap of a metric over two grid axes",
                        description="Heatmap of METRIC over the grid axes X and Y (mean over seeds and all other "
                                    "axes), values annotated. Keys are table columns, e.g. training.lr, "
                                    "model.width, training.batch_size, temperature, load.")
    pl.add_argument("dir", metavar="DIR", help="zoo directory")
    pl.add_argument("--x", required=True, metavar="KEY", help="column for the horizontal axis")
    pl.add_argument("--y", required=True, metavar="KEY", help="column for the vertical axis")
    pl.add_argument("--metric", default="test_acc", help="metric column (default test_acc)")
    pl.add_argument("--epoch", type=int, default=None, help="epoch (default: each model's last)")
    add_out(pl, metavar="PNG", help="output file (default DIR/plots/<metric>_<y>_vs_<x>.png)")
    pl.set_defaults(func=cmd_plot)

    ve = sub.add_parser("verify", help="check every shard of a zoo (checksums, headers, spec); --repair re-trains",
                        description="Check every checkpoint shard against the SHA-256 and size recorded in the "
                                    "catalog and against the catalog's rows (epoch, group, kind, models), and "
                                    "spec.toml against the catalog's fingerprint. Exit code 1 if anything is "
                                    "wrong. With --repair, the groups of damaged or missing shards are re-trained "
                                    "up to the last damaged epoch and exactly those shards are rewritten (only if "
                                    "the new bytes match the recorded checksums). See docs/security.md.")
    ve.add_argument("dir", metavar="DIR", help="zoo directory")
    ve.add_argument("--repair", action="store_true", help="re-train and rewrite missing/damaged shards")
    add_device(ve)  # --repair: use the kind of device the zoo was trained on (training is deterministic per device)
    add_quiet(ve)
    ve.set_defaults(func=cmd_verify)
    _add_transfer_parsers(sub)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) the zoo of ``args.spec`` into ``args.out`` (``zooscape zoo train``).

    Args:
        args: parsed command line.

    Returns:
        exit code 0 (errors are raised and turned into exit codes by :func:`zooscape.cli.main`).
    """
    with heavy_imports():
        from zooscape.zoo import train_zoo

    with tracker(args, args.out, "train", {"spec": str(args.spec)}) as log:
        zoo = train_zoo(args.spec, args.out, engine=args.engine, workers=args.workers, device=args.device,
                        progress=not args.quiet, chunk_size=args.chunk_size,
                        engine_options=engine_options(args), threads=args.threads, tracker=log)
    counts = zoo.status_counts()
    print(f"{zoo.path}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate ``args.spec`` fully and print its expansion (writes nothing) (``zooscape zoo validate``).

    Args:
        args: parsed command line.

    Returns:
        exit code 0 (errors are raised and turned into exit codes by :func:`zooscape.cli.main`).
    """
    from zooscape.zoo import load_spec
    from zooscape.zoo.runner import summarize_spec

    spec = load_spec(args.spec)
    plan, est = summarize_spec(spec)
    factor = est.models // max(len(plan.configs), 1)
    print(f"{args.spec}: zoo {spec.name!r} is valid")
    print(f"  models: {est.models}  groups: {est.groups}  model-epochs: {plan.n_model_epochs * factor}")
    print(f"  on disk (estimate): files: {est.files:,} shards  bytes: {est.bytes:,} ({_human(est.bytes)})")
    for key, values in spec.grid.items():
        shown = list(values) if len(values) <= 12 else [*values[:5], "...", *values[-5:]]
        print(f"  grid {key}: {shown}" + (f" ({len(values)} values)" if len(values) > 12 else ""))
    params = sorted({c['derived']['n_params'] for c in plan.configs})
    print(f"  parameters per model: {params[0]}" + (f" .. {params[-1]}" if len(params) > 1 else ""))
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def cmd_verify(args: argparse.Namespace) -> int:
    """Check (and with ``--repair`` re-train) the shards of ``args.dir`` (``zooscape zoo verify``).

    Args:
        args: parsed command line.

    Returns:
        exit code 0 when the zoo is intact (or fully repaired), 1 otherwise.
    """
    from zooscape.zoo.verify import repair_zoo, verify_zoo

    report = verify_zoo(args.dir)
    if args.repair and report.problems:
        report = repair_zoo(args.dir, report, device=args.device, progress=not args.quiet)
    lines = report.lines()
    if args.quiet and report.ok:
        lines = []
    for line in lines:
        print(line)
    if report.problems and not args.repair:
        print(f"run `zooscape zoo verify --repair {args.dir}` to re-train the damaged shards")
    return 0 if report.ok else 1


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cmd_info(args: argparse.Namespace) -> int:
    """Print counts by status, grid axes and per-cell metric summaries of ``args.dir`` (``zooscape zoo info``).

    Args:
        args: parsed command line.

    Returns:
        exit code 0 (errors are raised and turned into exit codes by :func:`zooscape.cli.main`).
    """
    from zooscape.zoo.reader import open_zoo
    from zooscape.zoo.summary import cell_axes, cell_records, format_table, records_at_epoch
    from zooscape.zoo.verify import quick_check

    # metadata only: the catalog and spec.toml, without torch or pandas (answers in well under a second)
    with open_zoo(args.dir) as zoo:
        spec = zoo.spec
        counts = zoo.status_counts()
        print(f"zoo {spec.name!r} at {zoo.path}")
        if spec.description:
            print(f"  {spec.description}")
        print(f"models: {sum(counts.values())}  (" + ", ".join(f"{s}: {n}" for s, n in counts.items()) + ")")
        damaged = quick_check(zoo.path, zoo.catalog)
        if damaged:
            print(f"WARNING: {damaged.summary()}: " + "; ".join(f"{p.file} {p.problem}" for p in
                                                              damaged.problems[:5])
                  + f"; run `zooscape zoo verify --repair {args.dir}`")
        print("grid:")
        for key, values in spec.grid.items():
            print(f"  {key}: {', '.join(_fmt(v) for v in values)}")
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        names = None
        if args.metrics != ",".join(DEFAULT_METRICS):  # names the user chose must exist
            from zooscape.zoo.columns import check_metric_names

            names = zoo.metric_names()
            check_metric_names(metrics, names)
        if not zoo.catalog.query("SELECT 1 FROM metrics LIMIT 1"):
            print("no metrics recorded yet")
            return 0
        rows, columns = records_at_epoch(zoo, args.epoch)
        if names is not None and not set(metrics) <= set(columns):  # stored analyses (cka, hessian_...): the table
            from zooscape.zoo.summary import at_epoch

            table = at_epoch(zoo.table(), args.epoch)
            rows, columns = table.to_dict("records"), list(table.columns)
        if not rows:
            print(f"no model has metrics at epoch {args.epoch}")
            return 0
        header, cells = cell_records(rows, cell_axes(list(spec.grid)), metrics, set(columns).union(*rows))
        which = "final epoch" if args.epoch is None else f"epoch {args.epoch}"
        print(f"{which} metrics per grid cell (mean and std over seeds):")
        print(format_table(header, cells))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Write a heatmap of ``args.metric`` over ``args.x`` x ``args.y`` of ``args.dir`` (``zooscape zoo plot``).

    Args:
        args: parsed command line.

    Returns:
        exit code 0 (errors are raised and turned into exit codes by :func:`zooscape.cli.main`).
    """
    from pathlib import Path

    from zooscape.zoo import open as open_zoo
    from zooscape.zoo.plot import save_heatmap
    from zooscape.zoo.summary import at_epoch, heatmap_matrix

    with open_zoo(args.dir) as zoo:
        rows = at_epoch(zoo.table(), args.epoch)
        if rows.empty:
            at = "" if args.epoch is None else f" at epoch {args.epoch}"
            raise ValueError(f"no metrics in zoo {args.dir}{at}")
        xs, ys, means, _ = heatmap_matrix(rows, args.x, args.y, args.metric)
        safe = lambda s: "".join(c if c.isalnum() or c in "-_" else "_" for c in s)
        out = Path(args.out) if args.out else Path(args.dir) / "plots" / (
            f"{safe(args.metric)}_{safe(args.y)}_vs_{safe(args.x)}.png")
        which = "final epoch" if args.epoch is None else f"epoch {args.epoch}"
        save_heatmap(out, xs, ys, means, args.x, args.y, title=f"{zoo.spec.name}: {args.metric} ({which}, mean)")
    print(out, file=sys.stdout)
    return 0


def _add_transfer_parsers(sub: Any) -> None:
    """Add ``zoo import`` and ``zoo export`` (the Ray Tune layout of the published zoos)."""
    im = sub.add_parser("import", help="import a Ray Tune zoo (Model Zoos / phase-transition layout)",
                        description="Read a folder of Ray Tune trials (params.json, result.json, "
                                    "checkpoint_*/checkpoints) into a zoo directory of ours. Checkpoints are read "
                                    "with weights_only=True; broken trials are reported and skipped.")
    im.add_argument("source", metavar="RAY_TUNE_DIR", help="folder holding the trial folders (searched recursively)")
    add_out(im, required=True, help="zoo directory (created)")
    im.add_argument("--dataset", default=None, metavar="NAME",
                    help="data set of every trial (default: dataset::name, or guessed from dataset::dump)")
    im.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                    help="data set option, repeatable (e.g. resize=28, data_root=data); values are JSON or text")
    im.add_argument("--model-type", action="append", default=[], metavar="TYPE=NAME",
                    help="map a model::type value onto a registered model, repeatable (CNN and CNN3 are known)")
    im.add_argument("--name", default=None, help="zoo name (default: the source folder's name)")
    im.add_argument("--no-optimizer", action="store_true", help="skip optimizer files")
    im.add_argument("--max-population", type=int, default=64, metavar="N", help="models per shard group (64)")
    add_quiet(im)
    lim = im.add_argument_group("limits", "a trial over a limit is skipped and reported (see docs/security.md)")
    lim.add_argument("--max-json-bytes", type=int, default=None, metavar="N",
                     help="largest params.json/result.json (default 16 MiB)")
    lim.add_argument("--max-checkpoint-bytes", type=int, default=None, metavar="N",
                     help="largest checkpoint or optimizer file (default 4 GiB)")
    lim.add_argument("--max-epoch", type=int, default=None, metavar="E",
                     help="largest checkpoint epoch number (default 1,000,000)")
    lim.add_argument("--follow-symlinks", action="store_true",
                     help="follow symbolic links that stay inside RAY_TUNE_DIR (default: follow none)")
    im.set_defaults(func=cmd_import)

    ex = sub.add_parser("export", help="export a zoo: Parquet tables, Hugging Face folders or the Ray Tune layout",
                        description="--format raytune (default): one trial folder per model (params.json with "
                                    "Model Zoos keys, result.json, checkpoint_*/checkpoints and optimizer) for the "
                                    "old tools. --format parquet: the catalog as Parquet tables (table, models, "
                                    "metrics, analyses, pairs; needs pip install \"zooscape[export]\"). --format hf: "
                                    "one Hugging Face Hub-style folder per model (model.safetensors, config.json, "
                                    "a generated model card), written locally.")
    ex.add_argument("dir", metavar="DIR", help="zoo directory")
    add_out(ex, required=True, metavar="OUT", help="folder to write (created; must be empty)")
    ex.add_argument("--format", choices=("raytune", "parquet", "hf"), default="raytune",
                    help="raytune (default), parquet or hf")
    ex.add_argument("--epochs", default=None, metavar="E,E,...",
                    help="checkpoint epochs to write (raytune: default all; hf: one epoch, default each model's last)")
    ex.add_argument("--no-optimizer", action="store_true", help="do not write optimizer files")
    ex.set_defaults(func=cmd_export)

    mg = sub.add_parser("merge", help="merge two zoos of compatible specs into a new zoo",
                        description="Write a new zoo OUT holding the models of zoos A and B, whose specs may differ "
                                    "only in grid values (the merged grid is their union; grid points neither zoo "
                                    "trained are left for 'zooscape zoo train OUT/spec.toml --out OUT'). Shards are "
                                    "hard-linked where possible, else copied.")
    mg.add_argument("a", metavar="A", help="first zoo directory")
    mg.add_argument("b", metavar="B", help="second zoo directory")
    add_out(mg, required=True, metavar="OUT", help="new zoo directory (must not exist)")
    mg.add_argument("--name", default=None, help="name of the merged zoo (default: A's)")
    mg.set_defaults(func=cmd_merge)


def _key_values(items: list[str], what: str) -> dict[str, Any]:
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} must look like KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_import(args: argparse.Namespace) -> int:
    """Import a Ray Tune zoo folder into ``args.out`` (``zooscape zoo import``).

    Args:
        args: parsed command line.

    Returns:
        exit code 0 (errors are raised and turned into exit codes by :func:`zooscape.cli.main`).
    """
    from zooscape.zoo.raytune import import_raytune

    options = _key_values(args.dataset_option, "--dataset-option")
    if options and args.dataset is None:
        raise ValueError("--dataset-option needs --dataset NAME")
    dataset = None if args.dataset is None else {"name": args.dataset, **options}
    types = {k: str(v) for k, v in _key_values(args.model_type, "--model-type").items()}
    from zooscape.zoo.raytune import ImportLimits

    given = {"max_json_bytes": args.max_json_bytes, "max_checkpoint_bytes": args.max_checkpoint_bytes,
             "max_epoch": args.max_epoch}
    limits = ImportLimits(**{k: v for k, v in given.items() if v is not None})
    report = import_raytune(args.source, args.out, dataset=dataset, model_types=types or None, name=args.name,
                            optimizer=not args.no_optimizer, max_population=args.max_population,
                            progress=not args.quiet, limits=limits, follow_symlinks=args.follow_symlinks)
    print(report.summary())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write the zoo ``args.dir`` in the Ray Tune layout into ``args.out`` (``zooscape zoo export``).

    Args:
        args: parsed command line.

    Returns:
        exit code 0 (errors are raised and turned into exit codes by :func:`zooscape.cli.main`).
    """
    from zooscape.zoo.raytune import export_raytune

    epochs = None
    if args.epochs:
        try:
            epochs = [int(e) for e in args.epochs.split(",") if e.strip()]
        except ValueError:
            raise ValueError(f"--epochs must be comma-separated integers, got {args.epochs!r}") from None
    if args.format != "raytune" and args.no_optimizer:
        raise ValueError(f"--no-optimizer only applies to --format raytune (--format {args.format} writes no "
                         "optimizer state)")
    if args.format == "parquet":
        from zooscape.zoo.export import export_parquet

        files = export_parquet(args.dir, args.out)
        print(f"wrote {', '.join(p.name for p in files.values())} to {args.out}")
        return 0
    if args.format == "hf":
        from zooscape.zoo.export import export_hf

        if epochs is not None and len(epochs) != 1:
            raise ValueError(f"--format hf exports one epoch per model, got --epochs {args.epochs}")
        folders = export_hf(args.dir, args.out, epoch=None if epochs is None else epochs[0])
        print(f"wrote {len(folders)} model folders (model.safetensors, config.json, README.md) to {args.out}")
        return 0
    report = export_raytune(args.dir, args.out, epochs=epochs, optimizer=not args.no_optimizer)
    print(f"wrote {len(report.trials)} trial folders ({report.n_checkpoints} checkpoints) to {report.out_dir}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge the zoos ``args.a`` and ``args.b`` into ``args.out`` (``zooscape zoo merge``).

    Args:
        args: parsed command line.

    Returns:
        exit code 0 (errors are raised and turned into exit codes by :func:`zooscape.cli.main`).
    """
    from zooscape.zoo import open as open_zoo
    from zooscape.zoo.grow import merge_zoos

    out = merge_zoos(args.a, args.b, args.out, name=args.name)
    with open_zoo(out) as zoo:
        counts = zoo.status_counts()
    print(f"{out}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0
