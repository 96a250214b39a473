"""Sparsified twins against the Model Zoos seed (~80 % sparsity at ~2 points after 25 epochs), CPU, minutes.

A CNN-s population is trained on digits (8x8 images resized to 28x28; 1,257 training images; Adam 1e-3, batch
10, 30 epochs), then one twin population per variant (25 epochs, batch 10, the seed's constants: log sigma^2
init -10, threshold 3, k1, k2, k3, the ramp ``min(1, 0.01 * epoch / epochs)``). The variants differ in how the KL
enters the loss (``kl_reduction``: ``"elbo"`` = KL / n_train per sample, ``"model_zoos"`` = the seed code's
undivided KL), the learning rate and the gradient estimator (``"local"`` reparameterisation or one ``"weight"``
sample per step). Per variant it writes ``twins_<variant>.json`` (per-twin, per-epoch test accuracy and
sparsity); ``--plot`` draws ``sparsify_twins_seed.png`` (sparsity and accuracy loss per epoch, mean over the twins
whose source trained).

Usage: ``python examples/twins_study.py --out docs/sparsify_results [--variants ...] [--plot docs/] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from zooscape.data import load_dataset
from zooscape.models import create_model
from zooscape.sparsify import train_twins
from zooscape.train import Member, TrainConfig, train_population

#: label -> (kl_scale, kl_reduction, learning rate, estimator).
VARIANTS = {
    "elbo": (1e-2, "elbo", 1e-3, "local"),  # per-sample ELBO with the seed's ramp (our former default)
    "elbo_kl1": (1.0, "elbo", 1e-3, "local"),  # per-sample ELBO, ramp to a full KL weight of 1
    "model_zoos": (1e-2, "model_zoos", 1e-3, "local"),  # the seed code's KL weighting (KL not divided by n_train)
    "model_zoos_lr3e-4": (1e-2, "model_zoos", 3e-4, "local"),  # ... at the seed zoo's learning rate
    "model_zoos_weight": (1e-2, "model_zoos", 1e-3, "weight"),  # ... with one weight sample per step
    "model_zoos_lr3e-4_weight": (1e-2, "model_zoos", 3e-4, "weight"),
}


def study(n: int, epochs: int, twin_epochs: int, variants: list[str], out: Path) -> list[dict]:
    """Train ``n`` CNN-s sources once, then one twin population per variant; returns and writes the results."""
    ds = load_dataset("digits", seed=0, resize=28)
    members = [Member(seed=i) for i in range(n)]
    t0 = time.perf_counter()
    src = train_population([create_model("cnn_s", seed=i) for i in range(n)], ds,
                           TrainConfig(epochs=epochs, batch_size=10, optimizer="adam", lr=1e-3), members)
    t_src = time.perf_counter() - t0
    print(f"sources: test acc {[round(h[-1]['test_acc'], 3) for h in src.history]} ({t_src:.0f}s)", flush=True)
    results = []
    for name in variants:
        kl_scale, reduction, lr, estimator = VARIANTS[name]
        t0 = time.perf_counter()
        tw = train_twins(src.models, ds, TrainConfig(epochs=twin_epochs, batch_size=10, optimizer="adam", lr=lr),
                         members, kl_scale=kl_scale, kl_reduction=reduction, estimator=estimator)
        res = {
            "variant": name, "n": n, "kl_scale": kl_scale, "kl_reduction": reduction, "lr": lr,
            "estimator": estimator, "n_train": int(ds.train_x.shape[0]), "batch_size": 10,
            "source_epochs": epochs, "twin_epochs": twin_epochs, "source_seconds": t_src,
            "twin_seconds": time.perf_counter() - t0,
            "source_test_acc": [h[-1]["test_acc"] for h in src.history],
            "twin_test_acc": [[r["test_acc"] for r in h] for h in tw.history],
            "twin_sparsity": [[r["sparsity"] for r in h] for h in tw.history],
        }
        (out / f"twins_{name}.json").write_text(json.dumps(res, indent=1))
        s = summary(res)
        print(f"twins {name}: sparsity {s['sparsity'][-1]:.3f}, accuracy loss {100 * s['loss'][-1]:.2f} points "
              f"(worst {100 * s['worst_loss']:.2f}); {res['twin_seconds']:.0f}s", flush=True)
        results.append(res)
    return results


def summary(res: dict, min_source_acc: float = 0.5) -> dict:
    """Per-epoch means over the twins whose source reached ``min_source_acc`` (a source that did not train has a
    chance-level twin): ``sparsity``, ``loss`` (source test accuracy minus the twin's), ``worst_loss`` (last
    epoch), ``kept`` (how many twins), ``epoch_80`` (first epoch with a mean sparsity of 80 % or more, or None)."""
    keep = [i for i, a in enumerate(res["source_test_acc"]) if a >= min_source_acc] or list(
        range(len(res["source_test_acc"])))
    ep = len(res["twin_sparsity"][keep[0]])
    sp = [sum(res["twin_sparsity"][i][e] for i in keep) / len(keep) for e in range(ep)]
    loss = [sum(res["source_test_acc"][i] - res["twin_test_acc"][i][e] for i in keep) / len(keep) for e in range(ep)]
    worst = max(res["source_test_acc"][i] - res["twin_test_acc"][i][-1] for i in keep)
    first80 = next((e for e, v in enumerate(sp) if v >= 0.8), None)
    return {"sparsity": sp, "loss": loss, "worst_loss": worst, "kept": len(keep), "epoch_80": first80}


def plot(results: list[dict], path: Path) -> None:
    """Sparsity and accuracy loss per epoch (mean over trained sources) per variant, the seed's end point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zooscape._io import save_figure

    fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
    for k, res in enumerate(results):
        s = summary(res)
        ax[0].plot(s["sparsity"], color=f"C{k}", label=res["variant"])
        ax[1].plot([100 * v for v in s["loss"]], color=f"C{k}", label=res["variant"])
        ax[2].plot(s["sparsity"], [100 * v for v in s["loss"]], color=f"C{k}", marker=".", label=res["variant"])
    ax[0].scatter([25], [0.80], marker="*", s=120, color="k", label="Model Zoos MNIST (~80 %)", zorder=5)
    ax[1].scatter([25], [2.0], marker="*", s=120, color="k", label="Model Zoos MNIST (~2 points)", zorder=5)
    ax[0].set(xlabel="sparsification epoch", ylabel="sparsity (mean)", title="CNN-s digits twins", ylim=(0, 1))
    ax[2].scatter([0.80], [2.0], marker="*", s=120, color="k", zorder=5)
    ax[1].set(xlabel="sparsification epoch", ylabel="test accuracy loss, points (mean)")
    ax[2].set(xlabel="sparsity (mean)", ylabel="test accuracy loss, points (mean)", title="one point per epoch")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/sparsify_results", help="folder of the JSON results")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--n", type=int, default=8, help="population size (default 8)")
    ap.add_argument("--plot", default=None, metavar="DIR", help="draw DIR/sparsify_twins_seed.png from --out's JSON")
    ap.add_argument("--no-train", action="store_true", help="only plot")
    ap.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_train:
        study(2 if args.quick else args.n, 1 if args.quick else 30, 2 if args.quick else 25, args.variants, out)
    if args.plot:
        found = {json.loads(f.read_text())["variant"]: json.loads(f.read_text()) for f in out.glob("twins_*.json")
                 if "variant" in json.loads(f.read_text())}
        plot([found[v] for v in VARIANTS if v in found], Path(args.plot) / "sparsify_twins_seed.png")


if __name__ == "__main__":
    main()
