"""``zooscape sparsify ...``: sparsified twins and one-shot pruning of a zoo (see ``docs/sparsify.md``).

Commands:

- ``zooscape sparsify twins DIR [--from-epoch last] [--epochs 25] [--kl-scale 0.01] ...``: train the sparsified
  twin of every finished grid member (variational dropout) into the same catalog; resumable.
- ``zooscape sparsify prune DIR --method globalmagni ... --sparsity 0.5 0.7 0.9 [--renorm none reset_bn ...]
  [--block-size 128] [--damping 1e-5] [--fisher empirical|exact] [--fisher-split train|val] [--lmc]``:
  one-shot pruning (and re-normalisation) of every finished model; results in the analyses table.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from zooscape.cli._common import (
    add_device,
    add_group,
    add_n_points,
    add_quiet,
    add_workers_engine,
    engine_options,
    say,
)

__all__ = ["add_parser"]

PRUNERS = ("globalmagni", "magni", "diagfisher", "woodfisherblock")
RENORMS = ("none", "reset_bn", "repair", "rescale")


def _common(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("dir", metavar="DIR", help="zoo directory")
    p.add_argument("--models", default=None, metavar="IDS", help="comma-separated model ids (default: all)")
    add_device(p)
    add_quiet(p)
    add_workers_engine(p, what=what)


def _epoch(text: str) -> int | str:
    if text == "last":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'last' or an epoch number, got {text!r}") from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``sparsify`` command group to ``subparsers``; returns the group's parser."""
    p, sub = add_group(subparsers, "sparsify", help="sparsified twins (variational dropout) and one-shot pruning",
                       description="Sparsified twins and one-shot pruning with re-normalisation of a zoo.")

    t = sub.add_parser("twins", help="train the sparsified twin of every finished model into the same catalog",
                       description="Train a sparsified twin (variational dropout, Molchanov et al. 2017) of every "
                                   "finished grid member of the zoo in DIR, starting from its checkpoint at "
                                   "--from-epoch. The twins of one grid cell train as one population; every epoch "
                                   "stores accuracy, loss and sparsity (metrics) and the sparse weights "
                                   "(checkpoint) in the zoo's catalog; twins are models with kind 'twin' and "
                                   "source_id = their source (zoo.table()). Re-running resumes.")
    _common(t, "the per-cell twin populations")
    t.add_argument("--from-epoch", type=_epoch, default="last", metavar="E",
                   help="source checkpoint to start from: 'last' (default) or an epoch")
    t.add_argument("--epochs", type=int, default=25, help="sparsification epochs (default 25, as Model Zoos)")
    t.add_argument("--kl-scale", type=float, default=1e-2,
                   help="KL weight ramp min(1, kl_scale * epoch / epochs) (default 0.01, as Model Zoos)")
    t.add_argument("--kl-reduction", choices=("model_zoos", "elbo"), default="model_zoos",
                   help="KL in the loss: undivided, as the Model Zoos code (model_zoos, default), or per sample "
                        "KL / n_train (elbo)")
    t.add_argument("--estimator", choices=("weight", "local"), default="weight",
                   help="gradient estimator: one weight sample per twin and step (weight, default: a CNN-s twin "
                        "costs about a zoo model's epoch) or the local reparameterisation trick of the papers "
                        "(local: ~3.5x the time for CNN-s, sparser at the same accuracy loss)")
    t.add_argument("--log-sigma2-init", type=float, default=-10.0, help="initial log sigma^2 (default -10)")
    t.add_argument("--threshold", type=float, default=3.0, help="prune at log alpha >= threshold (default 3)")
    t.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=None,
                   help="optimizer (default: the source's)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: the source's)")
    t.add_argument("--batch-size", type=int, default=None, help="batch size (default: the source's)")
    t.set_defaults(func=cmd_twins)

    r = sub.add_parser("prune", help="one-shot pruning (+ re-normalisation) of every finished model",
                       description="Prune every finished model of the zoo in DIR with each --method and --sparsity, "
                                   "optionally re-normalise (--renorm), evaluate on the test split and store "
                                   "test_acc, test_loss and sparsity in the catalog's analyses table "
                                   "(params: experiment=prune, method, sparsity, renorm, ...; the Fisher pruners also "
                                   "store fisher and split). With --lmc, every "
                                   "seed pair of each grid cell is aligned (weight matching), both are pruned and "
                                   "the barrier between them is stored (experiment=prune_lmc). Stored results are "
                                   "skipped.")
    _common(r, "the per-model (or per-pair) tasks")
    r.add_argument("--method", nargs="+", choices=PRUNERS, default=["globalmagni"], help="pruners")
    r.add_argument("--sparsity", nargs="+", type=float, default=[0.5, 0.7, 0.9], help="sparsities in [0, 1]")
    r.add_argument("--renorm", nargs="+", choices=RENORMS, default=["none"],
                   help="re-normalisations after pruning, each stored separately (default: none)")
    r.add_argument("--epoch", type=_epoch, default="last", help="checkpoint to prune: 'last' (default) or an epoch")
    r.add_argument("--n-samples", type=int, default=1000,
                   help="training samples for the Fisher and re-normalisation (default 1000)")
    r.add_argument("--scope", choices=("global", "layer"), default=None,
                   help="global or per-layer selection (default: layer for magni, global otherwise)")
    r.add_argument("--block-size", type=int, default=128,
                   help="woodfisherblock: consecutive weights of a layer per Fisher block (default 128)")
    r.add_argument("--damping", type=float, default=1e-5,
                   help="Fisher damping lambda of diagfisher and woodfisherblock (default 1e-5, Singh & Alistarh)")
    r.add_argument("--fisher", choices=("empirical", "exact"), default="empirical",
                   help="diagfisher's Fisher: squared per-sample gradients at the data's labels (empirical, "
                        "default) or their expectation under the model's predictions (exact); woodfisherblock "
                        "is always empirical")
    r.add_argument("--fisher-split", choices=("train", "val"), default="train",
                   help="split the Fisher pruners estimate their Fisher on (default train; val: data the model "
                        "was not fitted to)")
    r.add_argument("--seed", type=int, default=0, help="which --n-samples samples")
    r.add_argument("--kind", nargs="+", choices=("model", "twin"), default=["model"],
                   help="which models: grid members (model, default) and/or twins")
    r.add_argument("--lmc", action="store_true", help="barriers between pruned seed pairs instead")
    add_n_points(r, 11, "--lmc: points on the linear path (default 11)")
    r.add_argument("--lmc-renorm", choices=("none", "reset_bn"), default="reset_bn",
                   help="--lmc: BatchNorm statistics along the path: interpolated (none) or re-estimated at every "
                        "point (reset_bn, default)")
    r.set_defaults(func=cmd_prune)
    return p


def _ids(text: str | None) -> list[str] | None:
    return None if text is None else [m.strip() for m in text.split(",") if m.strip()]


def cmd_twins(args: argparse.Namespace) -> int:
    """Run ``zooscape sparsify twins`` and print the twins' final sparsity and accuracy change."""
    from zooscape.studies.twins import sparsify_twins

    overrides = {"optimizer": args.optimizer, "lr": args.lr, "batch_size": args.batch_size}
    trained = sparsify_twins(args.dir, epochs=args.epochs, from_epoch=args.from_epoch, kl_scale=args.kl_scale,
                             kl_reduction=args.kl_reduction, estimator=args.estimator,
                             log_sigma2_init=args.log_sigma2_init, threshold=args.threshold,
                             overrides={k: v for k, v in overrides.items() if v is not None},
                             model_ids=_ids(args.models), engine=args.engine, workers=args.workers,
                             device=args.device, progress=False if args.quiet else say(False),
                             engine_options=engine_options(args))
    print(f"{len(trained)} twins trained in {args.dir}")
    summary = twins_summary(args.dir)
    if summary:
        print(summary)
    return 0


def twins_summary(zoo_dir: str) -> str:
    """Each twin's last epoch, sparsity and test accuracy next to its source's last test accuracy, as a text table
    (read from the catalog without pandas: ``sparsify twins`` imports no pandas, scipy or sklearn); empty when the
    zoo has no twin with a sparsity yet."""
    from zooscape.zoo import open as open_zoo
    from zooscape.zoo.summary import format_table, records_at_epoch

    with open_zoo(zoo_dir) as zoo:
        records, _ = records_at_epoch(zoo)
    source_acc = {r["model_id"]: r.get("test_acc") for r in records if r.get("kind") == "model"}
    rows = [[r["model_id"], r["source_id"], r["epoch"], r["sparsity"], r.get("test_acc", math.nan),
             source_acc.get(r["source_id"], math.nan)]
            for r in records if r.get("kind") == "twin" and "sparsity" in r]
    if not rows:
        return ""
    header = ["model_id", "source_id", "epoch", "sparsity", "test_acc", "source_test_acc"]
    return format_table(header, [[(math.nan if v is None else v) for v in row] for row in rows], ".4f")


def cmd_prune(args: argparse.Namespace) -> int:
    """Run ``zooscape sparsify prune`` and print the mean stored value per method, sparsity and renorm."""
    import pandas as pd

    from zooscape.studies.twins import prune_zoo

    rows = prune_zoo(args.dir, methods=args.method, sparsities=args.sparsity, renorms=args.renorm, epoch=args.epoch,
                     n_samples=args.n_samples, scope=args.scope, block_size=args.block_size,
                     damping=args.damping, fisher=args.fisher, split=args.fisher_split, seed=args.seed,
                     lmc=args.lmc, n_points=args.n_points,
                     bn_mode="reset" if args.lmc_renorm == "reset_bn" else "interpolate",
                     kinds=args.kind, model_ids=_ids(args.models), engine=args.engine,
                     workers=args.workers, device=args.device, progress=say(args.quiet),
                     engine_options=engine_options(args))
    print(f"{len(rows)} rows stored in {args.dir}")
    if not rows:
        return 0
    metric = "barrier_error_test_linear" if args.lmc else "test_acc"
    df = pd.DataFrame([{**r["params"], "value": r["value"]} for r in rows if r["metric"] == metric])
    if df.empty:
        return 0
    summary = df.groupby(["method", "sparsity", "renorm"])["value"].agg(["count", "mean", "std"]).reset_index()
    print(f"{metric} (new results):")
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0
