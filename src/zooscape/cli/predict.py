"""``zooscape predict ZOO``: the Model Zoos property-prediction benchmark on a zoo (see ``docs/zoo-datasets.md``)."""

from __future__ import annotations

import argparse
from typing import Any

from zooscape.cli._common import add_out, deprecated_alias

__all__ = ["add_parser", "cmd_predict"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``predict`` command.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.

    Returns:
        the command's parser.
    """
    p = subparsers.add_parser(
        "predict", help="predict model properties from weights (Model Zoos benchmark)",
        description="Vectorise the zoo's checkpoints, split them by model into train/val/test and predict each "
                    "property from raw weights (W) and per-layer weight statistics (W-stats): ridge regression "
                    "for numeric properties (R²), a linear classifier for categorical ones (accuracy); the penalty "
                    "is chosen on the validation split.")
    p.add_argument("zoo", metavar="ZOO", help="zoo directory")
    p.add_argument("--properties", default="test_acc", metavar="P,P,...",
                   help="metrics (test_acc, train_loss, ...), ggap, epoch or config keys (training.lr, "
                        "model.activation, ...); default test_acc")
    p.add_argument("--features", default="w,wstats", metavar="F,F", help="w and/or wstats (default both)")
    p.add_argument("--epochs", default="all", metavar="E",
                   help="all (default), last, or comma-separated epochs used as samples")
    p.add_argument("--layers", default=None, metavar="L,L,...",
                   help="layers to vectorise: indices, names or patterns (default all)")
    p.add_argument("--fractions", default="0.7,0.15,0.15", metavar="TR,VA,TE",
                   help="fractions of models in the train, val and test splits (default 0.7,0.15,0.15)")
    deprecated_alias(p, "--split", "--fractions", "fractions")
    p.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    p.add_argument("--max-abs", type=float, default=None, metavar="T", help="drop samples with a |weight| > T")
    p.add_argument("--keep-failed", action="store_true", help="keep checkpoints of failed runs")
    p.add_argument("--categorical", default="", metavar="P,P,...",
                   help="numeric properties to treat as classes (e.g. training.seed)")
    add_out(p, metavar="CSV", help="also write the scores to this CSV file")
    deprecated_alias(p, "--csv", "--out", "out")
    p.set_defaults(func=cmd_predict, _group_parser=p)
    return p


def _list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def cmd_predict(args: argparse.Namespace) -> int:
    """Run the property-prediction benchmark on ``args.zoo`` and print the scores (``zooscape predict``).

    Args:
        args: parsed command line.

    Returns:
        exit code 0 (errors are raised and turned into exit codes by :func:`zooscape.cli.main`).
    """
    from pathlib import Path

    from zooscape._io import atomic_write_bytes
    from zooscape.predict import format_scores, predict_properties, scores_frame
    from zooscape.zoo import open as open_zoo

    epochs: Any
    if args.epochs in ("all", "last"):
        epochs = args.epochs
    else:
        try:
            epochs = [int(e) for e in _list(args.epochs)]
        except ValueError:
            raise ValueError(f"--epochs must be all, last or comma-separated integers, got {args.epochs!r}") from None
    try:
        split = tuple(float(f) for f in _list(args.fractions))
    except ValueError:
        raise ValueError(f"--fractions must be three comma-separated fractions, got {args.fractions!r}") from None
    layers = [int(x) if x.lstrip("-").isdigit() else x for x in _list(args.layers)] or None
    properties = _list(args.properties)
    if not properties:
        raise ValueError("--properties must name at least one property")
    filters = {"failed": not args.keep_failed, "max_abs": args.max_abs}
    with open_zoo(args.zoo) as zoo:
        ds = zoo.dataset(epochs=epochs, layers=layers, properties=properties, filters=filters, split=split,
                         seed=args.seed, categorical=_list(args.categorical))
        print(f"zoo {zoo.path}: {ds.index_map.size} weights per sample")
        print(ds.report.summary())
        scores = predict_properties(ds, features=_list(args.features))
    print(format_scores(scores))
    if args.out:
        out = Path(args.out)
        atomic_write_bytes(out, scores_frame(scores).to_csv(index=False).encode("utf-8"))
        print(f"scores written to {out}")
    return 0
