"""Why does the diagonal Fisher (OBD) not beat magnitude pruning on BN networks? (issue 15, docs/sparsify.md).

One-shot pruning of small BN networks (3 seeds) with ``diagfisher`` in the settings the WoodFisher / Rethink
Re-Basin scripts use or could use, against magnitude pruning at the same scope:

- the Fisher estimate: per-sample empirical Fisher (mean of squared per-sample gradients, the scripts'
  ``--fisher-mini-bsz 1``; Singh & Alistarh 2020) against the mini-batch-gradient Fisher (mean of squared
  batch-mean gradients), the exact Fisher (expectation over the model's predictive distribution, LeCun et al.
  1990's Gauss-Newton diagonal), and the number of Fisher samples;
- the damping added to ``F_qq`` (0, the scripts' 1e-5, 1e-3);
- the scope: ``layer`` (every layer to the target sparsity, the scripts' ``diagfisher``; compared with ``magni``)
  and ``global`` (compared with ``globalmagni``);
- which layers are pruned: all Linear/Conv weights, or the inner layers only (the scripts' ResNet-20 ``MODULES``
  leave the first conv and the classifier dense);
- no re-normalisation and reset-BN (``renormalize(..., "reset_bn")``).

The Fisher of one network is computed once per estimator and reused for every damping, scope and sparsity (the
masks are those :func:`zooscape.sparsify.prune` makes from the same scores: checked on one case per network).

Usage: ``python examples/diagfisher_study.py --model mlp_digits|mlp_mnist|resnet20_bn|vgg11_bn --out
docs/sparsify_results --cache DIR`` (writes ``diagfisher_<model>.json``; ``--step`` and ``--diagnose`` add the step
and per-unit Fisher diagnostics on the cached networks; ``--table`` prints the tables of the written JSON files;
``--plot PATH`` draws ``docs/sparsify_diagfisher.png``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from zooscape.data import load_dataset
from zooscape.landscape import fisher_diagonal
from zooscape.models import create_model
from zooscape.sparsify import masks, prune, prune_by_saliency, renormalize
from zooscape.sparsify.prune import prunable_layers
from zooscape.train import Member, TrainConfig, train_population

# network -> (builder of a seed, data set, options, epochs, description)
NETS = {
    "mlp_digits": (lambda s: create_model("mlp", input_size=64, depth=2, width=64, norm="bn", seed=s),
                   "digits", {}, 30, "BN MLP 64-64-64-10 on digits"),
    "mlp_mnist": (lambda s: create_model("mlp", input_size=784, depth=2, width=128, norm="bn", seed=s),
                  "mnist5k", {"flat": True}, 20, "BN MLP 784-128-128-10 on MNIST-5k"),
    "resnet20_bn": (lambda s: create_model("resnet20", input_size=28, norm="bn", width=8, seed=s),
                    "mnist5k", {}, 8, "ResNet-20-BN width 8 on MNIST-5k"),
    "vgg11_bn": (lambda s: create_model("vgg11_bn", input_size=32, width=0.125, seed=s),
                 "mnist5k", {"resize": 32}, 8, "VGG-11-BN width 1/8 on MNIST-5k 32x32"),
}


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def minibatch_fisher(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str],
                     batch: int) -> dict[str, torch.Tensor]:
    """Mean over the mini-batches of the squared batch-mean gradient (eval mode): the 'Fisher' of optimisers'
    squared-gradient accumulators; at a minimum its expectation is the per-sample Fisher divided by ``batch``."""
    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(params[n]) for n in names}
    model.eval()
    nb = 0
    for s in range(0, x.shape[0] - batch + 1, batch):
        g = torch.autograd.grad(F.cross_entropy(model(x[s:s + batch]), y[s:s + batch]), [params[n] for n in names])
        for n, gi in zip(names, g):
            acc[n] += gi.detach() ** 2
        nb += 1
    return {n: v / nb for n, v in acc.items()}


def fishers(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
            names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """The Fisher diagonals compared, each on the first ``n`` of the (shuffled) training samples ``x, y``."""
    out = {}
    for n in (128, 1024):
        out[f"per-sample n={n}"] = fisher_diagonal(model, x[:n], y[:n], kind="empirical", param_names=names,
                                                   batch_size=64)
    out["mini-batch 32, n=1024"] = minibatch_fisher(model, x[:1024], y[:1024], names, 32)
    out["exact n=1024"] = fisher_diagonal(model, x[:1024], None, kind="exact", param_names=names, batch_size=64)
    return out


def prune_with(model: torch.nn.Module, scores: list[torch.Tensor], layer_names: list[str], sparsity: float,
               scope: str) -> torch.nn.Module:
    """``model`` pruned by ``scores`` (lowest first) over the layers ``layer_names``, as :func:`prune` does."""
    return prune_by_saliency(model, dict(zip(layer_names, scores)), sparsity, scope)


def trained(model_name: str, seeds: list[int], cache: Path | None) -> tuple[list[torch.nn.Module], list[float]]:
    """The trained networks of ``seeds`` and their final training loss; seeds stored in ``cache`` are loaded, the
    others trained as one population (a member's training does not depend on the population it is in)."""
    from safetensors.torch import load_file, save_file

    build, data, opts, epochs, desc = NETS[model_name]
    file = {s: cache / f"{model_name}_seed{s}.safetensors" for s in seeds} if cache else {}
    loss_file = cache / f"{model_name}_train_loss.json" if cache else None
    losses = {int(k): v for k, v in json.loads(loss_file.read_text()).items()} \
        if loss_file is not None and loss_file.exists() else {}
    todo = [s for s in seeds if not (cache and file[s].exists() and s in losses)]
    models = {}
    if todo:
        t0 = time.perf_counter()
        res = train_population([build(s) for s in todo], load_dataset(data, seed=0, **opts),
                               TrainConfig(epochs=epochs, batch_size=32, optimizer="adam", lr=1e-3),
                               [Member(seed=s) for s in todo])
        print(f"{desc}: seeds {todo} trained in {time.perf_counter() - t0:.0f}s", flush=True)
        for s, m, h in zip(todo, res.models, res.history):
            models[s], losses[s] = m, h[-1]["train_loss"]
            if cache:
                cache.mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(file[s]))
        if loss_file is not None:
            loss_file.write_text(json.dumps(losses))
    for s in seeds:
        if s not in models:
            models[s] = build(s)
            models[s].load_state_dict(load_file(file[s]))
    return [models[s] for s in seeds], [losses[s] for s in seeds]


def study(model_name: str, seeds: list[int], sparsities: list[float], dampings: list[float], n_renorm: int,
          cache: Path | None = None) -> dict:
    _, data, opts, epochs, desc = NETS[model_name]
    ds = load_dataset(data, seed=0, **opts)
    models, loss = trained(model_name, seeds, cache)
    out = {"model": model_name, "description": desc, "seeds": seeds, "sparsities": sparsities, "epochs": epochs,
           "dense_test_acc": [accuracy(m, ds.test_x, ds.test_y) for m in models], "train_loss": loss,
           "acc": {}, "layer_sparsity": {}, "units_emptied": {}}
    print(f"{desc}: dense {out['dense_test_acc']}, train loss {out['train_loss']}", flush=True)

    def record(key: str, i: int, j: int, p: torch.nn.Module, m: torch.nn.Module) -> None:
        for renorm in ("none", "reset_bn"):
            r = p if renorm == "none" else renormalize(p, m, ds, "reset_bn", n_samples=n_renorm)
            out["acc"].setdefault(f"{key}|{renorm}", [[None] * len(seeds) for _ in sparsities])[j][i] = \
                accuracy(r, ds.test_x, ds.test_y)
        out["layer_sparsity"].setdefault(key, [[None] * len(seeds) for _ in sparsities])[j][i] = \
            [round(float((~v).float().mean()), 4) for v in masks(p).values()]
        # output units (rows of a Linear, filters of a Conv) whose every incoming weight is pruned
        out["units_emptied"].setdefault(key, [[None] * len(seeds) for _ in sparsities])[j][i] = \
            [int((~v.flatten(1).any(1)).sum()) for v in masks(p).values()]

    for i, m in enumerate(models):
        t0 = time.perf_counter()
        all_layers = [n for n, _ in prunable_layers(m)]
        layer_sets = {"all": all_layers, "inner": all_layers[1:-1]}
        names = [f"{n}.weight" for n in all_layers]
        idx = torch.randperm(ds.train_x.shape[0], generator=torch.Generator().manual_seed(i))
        x, y = ds.train_x[idx], ds.train_y[idx]
        fd = fishers(m, x, y, names)
        w = {n: m.get_parameter(f"{n}.weight").detach() for n in all_layers}
        checked = False
        for which, layers in layer_sets.items():
            for j, s in enumerate(sparsities):
                for scope, base in (("layer", "magni"), ("global", "globalmagni")):
                    p = prune_with(m, [w[n].abs() for n in layers], layers, s, scope)
                    record(f"{base}|{which}", i, j, p, m)
                    for fname, f in fd.items():
                        for d in dampings:
                            sc = [0.5 * (f[f"{n}.weight"] + d) * w[n] ** 2 for n in layers]
                            p = prune_with(m, sc, layers, s, scope)
                            if not checked and fname == "per-sample n=1024" and d == 1e-5:
                                ref = prune(m, s, "diagfisher", (x[:1024], y[:1024]), scope=scope,
                                            modules=layers, n_samples=None, damping=d, batch_size=64)
                                same = all(torch.equal(a, b) for a, b in zip(masks(ref).values(),
                                                                             masks(p).values()))
                                assert same, "study masks differ from zooscape.sparsify.prune's"
                                checked = True
                            record(f"diagfisher {fname} damping {d:g} {scope}|{which}", i, j, p, m)
                    if which == "all" and scope == "layer":
                        # where the lead comes from: OBD on the first layer only, magnitude on the others
                        f = fd["per-sample n=1024"]
                        sc = [0.5 * (f[f"{n}.weight"] + 1e-5) * w[n] ** 2 if k == 0 else w[n].abs()
                              for k, n in enumerate(layers)]
                        record(f"diagfisher first layer only, per-sample n=1024 damping 1e-05 {scope}|{which}",
                               i, j, prune_with(m, sc, layers, s, scope), m)
        print(f"seed {seeds[i]}: {time.perf_counter() - t0:.0f}s", flush=True)
    return out


def diagnose(model_name: str, seeds: list[int], cache: Path | None) -> dict:
    """Per layer and seed: the spread of the per-output-unit mean of ``F_qq`` (per-sample Fisher, n=1024; the
    OBD saliency of a weight is ``0.5 F_qq w_q^2``, so this factor weighs whole units against each other) and
    the fraction of weights with ``F_qq == 0``."""
    _, data, opts, _, desc = NETS[model_name]
    ds = load_dataset(data, seed=0, **opts)
    models, _ = trained(model_name, seeds, cache)
    out = {}
    for i, m in enumerate(models):
        layers = [n for n, _ in prunable_layers(m)]
        idx = torch.randperm(ds.train_x.shape[0], generator=torch.Generator().manual_seed(i))[:1024]
        fd = fisher_diagonal(m, ds.train_x[idx], ds.train_y[idx], kind="empirical",
                             param_names=[f"{n}.weight" for n in layers], batch_size=64)
        for n in layers:
            f = fd[f"{n}.weight"]
            unit = f.flatten(1).mean(1)
            row = {"unit_mean_F_min": float(unit.min()), "unit_mean_F_median": float(unit.median()),
                   "unit_mean_F_max": float(unit.max()), "max_over_min": float(unit.max() / unit.min()),
                   "zero_fraction": float((f == 0).float().mean())}
            out.setdefault(n, []).append(row)
            print(f"{desc} seed {i} {n}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()), flush=True)
    return out


def step(model_name: str, seeds: list[int], cache: Path | None, sparsities: list[float]) -> dict:
    """Layer scope, per-sample Fisher (n=1024, damping 1e-5) against magni: the pruning step's share of the
    squared weight norm (all weights, and the mean over output units of the unit's share), the diagonal quadratic
    model's predicted training-loss increase ``0.5 sum_q F_qq w_q^2`` over the removed weights, and the actual
    increase on the same 1024 training samples, without and with reset-BN."""
    _, data, opts, _, desc = NETS[model_name]
    ds = load_dataset(data, seed=0, **opts)
    models, _ = trained(model_name, seeds, cache)
    out: dict = {}
    for i, m in zip(seeds, models):
        layers = [n for n, _ in prunable_layers(m)]
        idx = torch.randperm(ds.train_x.shape[0], generator=torch.Generator().manual_seed(i))[:1024]
        x, y = ds.train_x[idx], ds.train_y[idx]
        fd = fisher_diagonal(m, x, y, kind="empirical", param_names=[f"{n}.weight" for n in layers], batch_size=64)
        w = {n: m.get_parameter(f"{n}.weight").detach() for n in layers}
        with torch.no_grad():
            base = float(F.cross_entropy(m.eval()(x), y))
        for s in sparsities:
            for label, sc in (("magni", [w[n].abs() for n in layers]),
                              ("diagfisher", [0.5 * (fd[f"{n}.weight"] + 1e-5) * w[n] ** 2 for n in layers])):
                p = prune_with(m, sc, layers, s, "layer")
                gone = {n: ~k for n, k in zip(layers, masks(p).values())}
                unit = [float(((w[n] ** 2 * gone[n]).flatten(1).sum(1) / (w[n] ** 2).flatten(1).sum(1)).mean())
                        for n in layers]
                r = renormalize(p, m, ds, "reset_bn", n_samples=512)
                with torch.no_grad():
                    row = {"removed_sq_norm": sum(float((w[n] ** 2 * gone[n]).sum()) for n in layers)
                           / sum(float((w[n] ** 2).sum()) for n in layers),
                           "removed_unit_sq_norm": sum(unit) / len(unit),
                           "predicted": 0.5 * sum(float((fd[f"{n}.weight"] * w[n] ** 2 * gone[n]).sum())
                                                  for n in layers),
                           "actual": float(F.cross_entropy(p.eval()(x), y)) - base,
                           "actual_reset_bn": float(F.cross_entropy(r.eval()(x), y)) - base}
                out.setdefault(f"{label} s={s:g}", []).append(row)
                print(f"{desc} seed {i} {label} s={s:g}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()),
                      flush=True)
    return out


def table(res: dict, which: str = "all") -> str:
    """Markdown: each diagfisher variant's lead over magnitude pruning at the same scope (magni for layer,
    globalmagni for global), mean over seeds (seeds ahead), per sparsity and re-normalisation."""
    sp = res["sparsities"]
    head = "| diagfisher variant | scope | renorm | " + " | ".join(f"s={s:g}" for s in sp) + " |"
    lines = [head, "|---|---|---|" + "---|" * len(sp)]
    for renorm in ("none", "reset_bn"):
        for base in ("magni", "globalmagni"):
            acc = res["acc"][f"{base}|{which}|{renorm}"]
            lines.append(f"| **{base}** (accuracy) | {'layer' if base == 'magni' else 'global'} | {renorm} | "
                         + " | ".join(f"{statistics.mean(v):.3f}" for v in acc) + " |")
        for key, acc in res["acc"].items():
            name, w, r = key.split("|")
            if not name.startswith("diagfisher") or w != which or r != renorm:
                continue
            scope = name.rsplit(" ", 1)[1]
            base = res["acc"][f"{'magni' if scope == 'layer' else 'globalmagni'}|{which}|{renorm}"]
            cells = []
            for v, b in zip(acc, base):
                d = [a - c for a, c in zip(v, b)]
                cells.append(f"{statistics.mean(d):+.3f} ({sum(x > 0 for x in d)}/{len(d)})")
            lines.append(f"| {name.rsplit(' ', 1)[0][len('diagfisher '):]} | {scope} | {renorm} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


SUMMARY = [  # (row label, key, layers) of the compact table in docs/sparsify.md
    ("per-sample n=1024, damping 0 (the scripts' statistic)", "per-sample n=1024 damping 0", "all"),
    ("per-sample n=1024, damping 1e-5 (our default)", "per-sample n=1024 damping 1e-05", "all"),
    ("per-sample n=128, damping 1e-5", "per-sample n=128 damping 1e-05", "all"),
    ("mini-batch 32 (squared batch gradients), n=1024, damping 1e-5", "mini-batch 32, n=1024 damping 1e-05", "all"),
    ("exact Fisher n=1024, damping 1e-5", "exact n=1024 damping 1e-05", "all"),
    ("per-sample n=1024, damping 1e-3", "per-sample n=1024 damping 0.001", "all"),
    ("OBD on the first layer only, magnitude elsewhere", "first layer only, per-sample n=1024 damping 1e-05",
     "all"),
    ("inner layers only (the scripts' ResNet-20 modules), damping 0", "per-sample n=1024 damping 0", "inner"),
    ("inner layers only, damping 1e-5", "per-sample n=1024 damping 1e-05", "inner"),
]


def summary(res: dict) -> str:
    """Compact markdown: magnitude accuracy, then each SUMMARY row's lead over magnitude pruning at the same scope
    and on the same layers (mean over seeds, seeds ahead), as 'no renorm / reset-BN' per sparsity."""
    sp = res["sparsities"]
    lines = ["| scope | diagfisher variant | " + " | ".join(f"s={s:g}: none / reset-BN" for s in sp) + " |",
             "|---|---|" + "---|" * len(sp)]
    for scope, base in (("layer", "magni"), ("global", "globalmagni")):
        for which in ("all", "inner"):
            a, b = res["acc"][f"{base}|{which}|none"], res["acc"][f"{base}|{which}|reset_bn"]
            lines.append(f"| {scope} | **{base}** accuracy{', inner layers' if which == 'inner' else ''} | "
                         + " | ".join(f"{statistics.mean(u):.3f} / {statistics.mean(v):.3f}" for u, v in zip(a, b))
                         + " |")
        for label, key, which in SUMMARY:
            cells = []
            for renorm in ("none", "reset_bn"):
                acc = res["acc"].get(f"diagfisher {key} {scope}|{which}|{renorm}")
                if acc is None:
                    break
                base_acc = res["acc"][f"{base}|{which}|{renorm}"]
                cells.append([[x - y for x, y in zip(v, u)] for v, u in zip(acc, base_acc)])
            if len(cells) < 2:
                continue
            lines.append(f"| {scope} | {label} | " + " | ".join(
                f"{statistics.mean(d0):+.3f} ({sum(x > 0 for x in d0)}) / {statistics.mean(d1):+.3f} "
                f"({sum(x > 0 for x in d1)})" for d0, d1 in zip(*cells)) + " |")
    return "\n".join(lines)


PLOTTED = [  # (key prefix, layers, label, colour, line style)
    ("magni", "all", "magni (layer)", "C0", "-"),
    ("diagfisher per-sample n=1024 damping 1e-05 layer", "all", "diagfisher, layer", "C0", "--"),
    ("diagfisher exact n=1024 damping 1e-05 layer", "all", "diagfisher exact Fisher, layer", "C0", ":"),
    ("globalmagni", "all", "globalmagni", "C3", "-"),
    ("diagfisher per-sample n=1024 damping 1e-05 global", "all", "diagfisher, global", "C3", "--"),
    ("diagfisher exact n=1024 damping 1e-05 global", "all", "diagfisher exact Fisher, global", "C3", ":"),
    ("magni", "inner", "magni (layer), inner layers", "C2", "-"),
    ("diagfisher per-sample n=1024 damping 0 layer", "inner", "diagfisher as the scripts (layer, inner, undamped)",
     "C2", "--"),
]


def plot(results: list[dict], path: Path) -> None:
    """Test accuracy vs sparsity (mean and std over the seeds) per pruner: one row per network, one column per
    re-normalisation; layer scope blue, global scope red, the scripts' setting (layer scope, inner layers) green;
    magnitude solid, diagonal Fisher dashed/dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zooscape._io import save_figure

    fig, axes = plt.subplots(len(results), 2, figsize=(9, 3.2 * len(results)), sharey=True, squeeze=False)
    for row, res in zip(axes, results):
        for ax, renorm in zip(row, ("none", "reset_bn")):
            for key, layers, label, colour, style in PLOTTED:
                acc = res["acc"][f"{key}|{layers}|{renorm}"]
                mean = [statistics.mean(v) for v in acc]
                std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in acc]
                ax.errorbar(res["sparsities"], mean, yerr=std, color=colour, ls=style, marker="o", ms=3,
                            capsize=2, label=label)
            ax.axhline(statistics.mean(res["dense_test_acc"]), color="k", ls=":", lw=0.8, label="dense")
            ax.set(xlabel="sparsity", ylim=(0, 1), title=f"{res['description']}\nre-normalisation: {renorm}")
            ax.title.set_fontsize(8)
        row[0].set_ylabel(f"test accuracy ({len(res['seeds'])} seeds)")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=list(NETS), default="mlp_digits")
    ap.add_argument("--out", default="docs/sparsify_results")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--name", default=None, help="JSON name suffix (default: the model's name)")
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.9])
    ap.add_argument("--dampings", nargs="+", type=float, default=[0.0, 1e-5, 1e-3])
    ap.add_argument("--n-renorm", type=int, default=512, help="samples for reset-BN")
    ap.add_argument("--table", action="store_true", help="print the tables of the written JSON files")
    ap.add_argument("--diagnose", action="store_true",
                    help="only the per-unit Fisher spread of the (cached) networks: diagfisher_<model>_units.json")
    ap.add_argument("--step", action="store_true",
                    help="only the pruning step and the quadratic model's prediction: diagfisher_<model>_step.json")
    ap.add_argument("--plot", default=None, help="draw the figure of the written JSON files to this path")
    ap.add_argument("--cache", default=None, help="folder for the trained networks (safetensors; reused if there)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    if args.plot:
        files = [out / f"diagfisher_{m}.json" for m in NETS if (out / f"diagfisher_{m}.json").exists()]
        plot([json.loads(f.read_text()) for f in files], Path(args.plot))
        return
    if args.table:
        for f in sorted(out.glob("diagfisher_*.json")):
            if f.stem.endswith(("_units", "_step")):
                continue
            res = json.loads(f.read_text())
            print(f"{res['description']}: dense {statistics.mean(res['dense_test_acc']):.3f}\n{summary(res)}\n")
            for which in ("all", "inner"):
                print(f"{res['description']} ({len(res['seeds'])} seeds, dense "
                      f"{statistics.mean(res['dense_test_acc']):.3f}), layers: {which}\n{table(res, which)}\n")
        return
    out.mkdir(parents=True, exist_ok=True)
    if args.diagnose:
        units = diagnose(args.model, list(range(args.seeds)), Path(args.cache) if args.cache else None)
        (out / f"diagfisher_{args.model}_units.json").write_text(json.dumps(units, indent=1))
        return
    if args.step:
        st = step(args.model, list(range(args.seeds)), Path(args.cache) if args.cache else None, [0.5, 0.7])
        (out / f"diagfisher_{args.model}_step.json").write_text(json.dumps(st, indent=1))
        return
    res = study(args.model, list(range(args.seeds)), args.sparsities, args.dampings, args.n_renorm,
                Path(args.cache) if args.cache else None)
    (out / f"diagfisher_{args.name or args.model}.json").write_text(json.dumps(res, separators=(",", ":")))


if __name__ == "__main__":
    main()
