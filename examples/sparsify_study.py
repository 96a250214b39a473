"""Small-scale sparsification study behind docs/sparsify.md (CPU, a few minutes).

1. Twins: a CNN-s population trained on digits (8x8 resized to 28x28), then its sparsified twins (variational
   dropout, Model Zoos constants, 25 epochs) trained as one population: accuracy and sparsity per epoch.
2. Pruners on a BatchNorm network (``--model``: MLP 784-128-128-10 with BN, or a narrow VGG-11-BN / ResNet-20-BN,
   on MNIST-5k, several seeds): test accuracy after one-shot pruning with globalmagni / magni / diagfisher /
   woodfisherblock, without and with reset-BN / REPAIR.
3. Pruning + LMC: two seeds aligned by weight matching, pruned, and the test-error barrier between them before and
   after re-normalisation.

Usage: ``python examples/sparsify_study.py --out docs/sparsify_results [--quick]``; writes ``results.json`` and
the figures
(``--stages pruners twins plots`` runs a part; each stage writes its own JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from zooscape.align import weight_matching
from zooscape.data import load_dataset
from zooscape.models import create_model
from zooscape.sparsify import masks, prune, pruned_barrier, renormalize, train_twins
from zooscape.train import Member, TrainConfig, train_population


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def twins_study(n: int, epochs: int, twin_epochs: int, kl_scale: float) -> dict:
    ds = load_dataset("digits", seed=0, resize=28)
    members = [Member(seed=i) for i in range(n)]
    models = [create_model("cnn_s", seed=i) for i in range(n)]
    t0 = time.perf_counter()
    src = train_population(models, ds, TrainConfig(epochs=epochs, batch_size=10, optimizer="adam", lr=1e-3), members)
    t_src = time.perf_counter() - t0
    t0 = time.perf_counter()
    tw = train_twins(src.models, ds, TrainConfig(epochs=twin_epochs, batch_size=10, optimizer="adam", lr=1e-3),
                     members, kl_scale=kl_scale)
    t_tw = time.perf_counter() - t0
    return {
        "n": n, "kl_scale": kl_scale,
        "source_epochs": epochs, "twin_epochs": twin_epochs, "source_seconds": t_src, "twin_seconds": t_tw,
        "source_test_acc": [h[-1]["test_acc"] for h in src.history],
        "twin_test_acc": [[r["test_acc"] for r in h] for h in tw.history],
        "twin_sparsity": [[r["sparsity"] for r in h] for h in tw.history],
    }


def bn_mlp(seed: int) -> torch.nn.Module:
    return create_model("mlp", input_size=784, depth=2, width=128, norm="bn", seed=seed)


# BN networks of the pruner stage: name -> (model builder of a seed, MNIST-5k options, description)
BN_MODELS = {
    "mlp_bn": (bn_mlp, {"flat": True}, "BN MLP 784-128-128-10"),
    "vgg11_bn": (lambda seed: create_model("vgg11_bn", input_size=32, width=0.125, seed=seed), {"resize": 32},
                 "VGG-11-BN, width 1/8 (8-64 channels), 32x32"),
    "resnet20_bn": (lambda seed: create_model("resnet20", input_size=28, norm="bn", width=8, seed=seed), {},
                    "ResNet-20-BN, width 8 (8-32 channels)"),
}


# pruners compared (label -> prune() arguments); the last three are diagnostics of the Fisher estimate
PRUNER_RUNS = {
    "globalmagni": {"method": "globalmagni"},
    "magni": {"method": "magni"},
    "diagfisher": {"method": "diagfisher"},
    "woodfisherblock": {"method": "woodfisherblock"},
    "diagfisher/exact": {"method": "diagfisher", "fisher": "exact"},
    "diagfisher/val": {"method": "diagfisher", "split": "val"},
    "woodfisherblock/val": {"method": "woodfisherblock", "split": "val"},
    "diagfisher/damping1e-4": {"method": "diagfisher", "damping": 1e-4},
    "diagfisher/damping1e-3": {"method": "diagfisher", "damping": 1e-3},
    "diagfisher/damping1e-2": {"method": "diagfisher", "damping": 1e-2},
}
DEFAULT_RUNS = [k for k in PRUNER_RUNS if "damping" not in k]


def quadratic_check(model: torch.nn.Module, pruned: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The loss increase the Fisher quadratic model predicts for the pruning step ``dw`` (diagonal: the OBD sum
    ``0.5 sum_q F_qq dw_q^2``; full: ``0.5 mean_i (g_i . dw)^2``, ``g_i`` per-sample gradients) against the actual
    loss increase on the same samples (eval mode)."""
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    from zooscape.sparsify.prune import prunable_layers

    names = [f"{n}.weight" for n, _ in prunable_layers(model)]
    params = {k: v.detach() for k, v in model.named_parameters()}
    state = {**params, **dict(model.named_buffers())}
    model.eval()

    def loss1(w, xi, yi):
        return F.cross_entropy(functional_call(model, {**state, **w}, (xi[None],)), yi[None])

    g = vmap(grad(loss1), in_dims=(None, 0, 0))({n: params[n] for n in names}, x, y)
    new = dict(pruned.named_parameters())
    dw = {n: new[n].detach() - params[n] for n in names}
    diag = 0.5 * sum(float((g[n].pow(2).mean(0) * dw[n] ** 2).sum()) for n in names)
    proj = sum((g[n] * dw[n]).flatten(1).sum(1) for n in names)
    with torch.no_grad():
        actual = float(F.cross_entropy(pruned.eval()(x), y) - F.cross_entropy(model(x), y))
    return {"diag": diag, "full": 0.5 * float(proj.pow(2).mean()), "linear": float(proj.mean()), "actual": actual}


def pruner_study(seeds: list[int], sparsities: list[float], epochs: int, n_samples: int,
                 runs: list[str] | None = None, lmc: bool = True, model: str = "mlp_bn",
                 quadratic: bool = True) -> dict:
    build, options, _ = BN_MODELS[model]
    ds = load_dataset("mnist5k", seed=0, **options)
    cfg = TrainConfig(epochs=epochs, batch_size=32, optimizer="adam", lr=1e-3)
    t0 = time.perf_counter()
    res = train_population([build(s) for s in seeds], ds, cfg, [Member(seed=s) for s in seeds])
    models = res.models
    print(f"{model}: {len(seeds)} seeds trained in {time.perf_counter() - t0:.0f}s, test acc "
          + ", ".join(f"{accuracy(m, ds.test_x, ds.test_y):.3f}" for m in models), flush=True)
    out: dict = {"model": model, "seeds": seeds, "sparsities": sparsities,
                 "dense_test_acc": [accuracy(m, ds.test_x, ds.test_y) for m in models],
                 "train_loss": [h[-1]["train_loss"] for h in res.history], "acc": {}, "quadratic": {},
                 "layer_sparsity": {}}
    for label in runs or DEFAULT_RUNS:
        kw = PRUNER_RUNS[label]
        for renorm in ("none", "reset_bn", "repair"):
            out["acc"][f"{label}/{renorm}"] = [[None] * len(seeds) for _ in sparsities]
        out["quadratic"][label] = [[None] * len(seeds) for _ in sparsities]
        out["layer_sparsity"][label] = [[None] * len(seeds) for _ in sparsities]
        for j, s in enumerate(sparsities):
            for i, m in enumerate(models):
                p = prune(m, s, data=ds, n_samples=n_samples, block_size=128, seed=i, **kw)
                out["acc"][f"{label}/none"][j][i] = accuracy(p, ds.test_x, ds.test_y)
                out["layer_sparsity"][label][j][i] = [float((~v).float().mean()) for v in masks(p).values()]
                idx = torch.randperm(ds.train_x.shape[0], generator=torch.Generator().manual_seed(i))[:n_samples]
                if quadratic:
                    out["quadratic"][label][j][i] = quadratic_check(m, p, ds.train_x[idx], ds.train_y[idx])
                for renorm in ("reset_bn", "repair"):
                    r = renormalize(p, m, ds, renorm, n_samples=n_samples)
                    out["acc"][f"{label}/{renorm}"][j][i] = accuracy(r, ds.test_x, ds.test_y)
            print(f"{label} s={s}: " + ", ".join(
                f"{k.split('/')[-1]} {sum(v[j]) / len(v[j]):.3f}" for k, v in out["acc"].items()
                if k.rsplit("/", 1)[0] == label), flush=True)
    out["epochs"] = epochs
    if lmc:
        out["lmc"] = lmc_study(models[0], models[1], ds, sparsities, n_samples)
    return out


def lmc_study(a: torch.nn.Module, b: torch.nn.Module, ds, sparsities: list[float], n_samples: int) -> dict:
    """Align b to a (weight matching), prune both (globalmagni), and measure the test-error barrier between them
    with and without re-normalising the pruned endpoints (BN statistics interpolated along the path)."""
    b = weight_matching(a, b).model
    lmc = {}
    for s in [0.0] + sparsities:
        pa, pb = prune(a, s, "globalmagni"), prune(b, s, "globalmagni")
        row = {}
        for renorm in ("none", "reset_bn", "repair"):
            ra = pa if renorm == "none" else renormalize(pa, a, ds, renorm, n_samples=n_samples)
            rb = pb if renorm == "none" else renormalize(pb, b, ds, renorm, n_samples=n_samples)
            bar = pruned_barrier(ra, rb, ds, n_points=11, splits=("test",), bn_mode="interpolate")
            row[renorm] = {k: bar[k] for k in ("barrier_error_test_linear", "barrier_loss_test_linear",
                                               "error_a_test", "error_b_test")}
        lmc[str(s)] = row
        print(f"lmc s={s}: " + ", ".join(f"{k} barrier {v['barrier_error_test_linear']:.3f} (endpoints "
                                         f"{v['error_a_test']:.3f}, {v['error_b_test']:.3f})"
                                         for k, v in row.items()), flush=True)
    return lmc


def plots(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zooscape._io import save_figure

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    for k, tw in enumerate(results["twins"]):
        for j, (acc, sp) in enumerate(zip(tw["twin_test_acc"], tw["twin_sparsity"])):
            label = f"kl_scale {tw['kl_scale']:g}" if j == 0 else None
            ax[0].plot(sp, color=f"C{k}", alpha=0.5, label=label)
            ax[1].plot(acc, color=f"C{k}", alpha=0.5, label=label)
    ax[0].set(xlabel="sparsification epoch", ylabel="sparsity", title="CNN-s digits twins (one population each)")
    ax[1].set(xlabel="sparsification epoch", ylabel="test accuracy (sparse model)")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "sparsify_twins.png")
    plot_pruners(results["pruners"], out)


def plot_pruners(results: list[dict], out: Path, model: str = "mlp_bn") -> None:
    """Test accuracy vs sparsity per pruner (mean and std over seeds): one row per training length (``epochs``),
    one panel per re-normalisation; Fisher-estimate variants dashed. ``sparsify_pruners.png`` for the BN MLP,
    ``sparsify_pruners_<model>.png`` for the other ``BN_MODELS``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zooscape._io import save_figure

    fig, axes = plt.subplots(len(results), 3, figsize=(12, 3.4 * len(results)), sharey=True, squeeze=False)
    for row, pr in zip(axes, results):
        for ax, renorm in zip(row, ("none", "reset_bn", "repair")):
            for k, label in enumerate(DEFAULT_RUNS):
                acc = pr["acc"].get(f"{label}/{renorm}")
                if acc is None:
                    continue
                mean = [sum(v) / len(v) for v in acc]
                std = [(sum((a - mu) ** 2 for a in v) / max(len(v) - 1, 1)) ** 0.5 for v, mu in zip(acc, mean)]
                ax.errorbar(pr["sparsities"], mean, yerr=std, marker="o", ms=3, capsize=2, color=f"C{k}",
                            ls="--" if "/" in label else "-", label=label)
            ax.axhline(sum(pr["dense_test_acc"]) / len(pr["dense_test_acc"]), color="k", ls=":", label="dense")
            ax.set(xlabel="sparsity", title=f"{pr.get('epochs', 20)} epochs, re-normalisation: {renorm}",
                   ylim=(0, 1))
        row[0].set_ylabel(f"test accuracy ({len(pr['seeds'])} seeds)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"one-shot pruning of a {BN_MODELS[model][2]} on MNIST-5k", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out / ("sparsify_pruners.png" if model == "mlp_bn" else f"sparsify_pruners_{model}.png"))


def pruner_table(res: dict) -> str:
    """Markdown table of a pruner-stage result: test accuracy mean ± std over the seeds per run, re-normalisation
    and sparsity, then each Fisher run's lead over ``globalmagni`` (mean, seeds ahead in brackets)."""
    import statistics

    sp = res["sparsities"]
    lines = ["| method | renorm | " + " | ".join(f"s={s:g}" for s in sp) + " |", "|---|---|" + "---|" * len(sp)]
    for key, acc in res["acc"].items():
        label, renorm = key.rsplit("/", 1)
        cells = [f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.3f}" for v in acc]
        lines.append(f"| {label} | {renorm} | " + " | ".join(cells) + " |")
    lines += ["", "| lead over globalmagni | renorm | " + " | ".join(f"s={s:g}" for s in sp) + " |",
              "|---|---|" + "---|" * len(sp)]
    for key, acc in res["acc"].items():
        label, renorm = key.rsplit("/", 1)
        base = res["acc"].get(f"globalmagni/{renorm}")
        if label.startswith(("globalmagni", "magni")) or base is None:
            continue
        cells = []
        for v, b in zip(acc, base):
            d = [a - c for a, c in zip(v, b)]
            cells.append(f"{statistics.mean(d):+.3f} ({sum(x > 0 for x in d)})")
        lines.append(f"| {label} | {renorm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/sparsify_results")
    ap.add_argument("--stages", nargs="+", default=["pruners", "twins", "plots"],
                    choices=["pruners", "twins", "plots", "pruner-plot", "pruner-table"],
                    help="'pruner-plot' draws only the pruner figure; 'pruner-table' prints the markdown tables "
                         "of every pruners*.json in --out")
    ap.add_argument("--kl-scale", type=float, default=1e-2, help="twins' KL ramp (Model Zoos: 0.01)")
    ap.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    ap.add_argument("--figures", default=None, help="folder of the figures (default: --out)")
    ap.add_argument("--pruner-epochs", type=int, default=20,
                    help="training epochs of the BN MLPs (20: pruners.json; else pruners_e<N>.json, no LMC stage)")
    ap.add_argument("--runs", nargs="+", choices=list(PRUNER_RUNS), default=None,
                    help="pruner runs (default: all but the diagfisher damping sweep)")
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.8, 0.9, 0.95])
    ap.add_argument("--name", default=None, help="JSON name of the pruner stage (no LMC stage when given)")
    ap.add_argument("--model", choices=list(BN_MODELS), default="mlp_bn",
                    help="BN network of the pruner stage (default mlp_bn: pruners.json; else pruners_<model>.json, "
                         "no LMC stage)")
    ap.add_argument("--seeds", type=int, default=5, help="pruner stage: number of seeds (default 5)")
    ap.add_argument("--n-samples", type=int, default=512,
                    help="pruner stage: samples for the Fisher and re-normalisation (default 512)")
    ap.add_argument("--no-quadratic", action="store_true",
                    help="pruner stage: skip the quadratic-model check (saves a per-sample gradient pass)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    q = args.quick
    if "pruners" in args.stages:
        epochs = 2 if q else args.pruner_epochs
        mlp = args.model == "mlp_bn"
        res = pruner_study([0, 1] if q else list(range(args.seeds)),
                           [0.5, 0.9] if q else args.sparsities, epochs, 64 if q else args.n_samples,
                           runs=args.runs, lmc=mlp and epochs == 20 and args.name is None, model=args.model,
                           quadratic=not args.no_quadratic)
        name = args.name or (("pruners" if epochs == 20 else f"pruners_e{epochs}") if mlp
                             else f"pruners_{args.model}")
        name += ".json"
        (out / name).write_text(json.dumps(res, indent=1))
    if "twins" in args.stages:
        tw = twins_study(2 if q else 8, 1 if q else 30, 2 if q else 25, args.kl_scale)
        (out / f"twins_kl{args.kl_scale:g}.json").write_text(json.dumps(tw, indent=1))
        drop = [s - a[-1] for s, a in zip(tw["source_test_acc"], tw["twin_test_acc"])]
        sp = [s[-1] for s in tw["twin_sparsity"]]
        print(f"twins: sparsity {sum(sp) / len(sp):.3f} (min {min(sp):.3f}), accuracy loss "
              f"{sum(drop) / len(drop):.4f} (max {max(drop):.4f}); source {tw['source_seconds']:.0f}s, "
              f"twins {tw['twin_seconds']:.0f}s", flush=True)
    figures = Path(args.figures) if args.figures else out
    pruners = [json.loads(f.read_text()) for f in [out / "pruners.json", *sorted(out.glob("pruners_e*.json"))]
               if f.exists()]
    if "pruner-plot" in args.stages:
        if args.model == "mlp_bn":
            plot_pruners(pruners, figures)
        elif (out / f"pruners_{args.model}.json").exists():
            plot_pruners([json.loads((out / f"pruners_{args.model}.json").read_text())], figures, args.model)
    if "pruner-table" in args.stages:
        for f in sorted(out.glob("pruners*.json")):
            res = json.loads(f.read_text())
            print(f"{f.name} ({res.get('model', 'mlp_bn')}, {len(res['seeds'])} seeds, {res.get('epochs')} epochs, "
                  f"dense {sum(res['dense_test_acc']) / len(res['dense_test_acc']):.3f}):\n{pruner_table(res)}\n")
    if "plots" in args.stages:
        plots({"pruners": pruners,
               "twins": [json.loads(f.read_text()) for f in sorted(out.glob("twins_kl*.json"))]}, figures)


if __name__ == "__main__":
    main()
