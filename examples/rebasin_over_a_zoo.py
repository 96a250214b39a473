"""Re-basin over a zoo: train configs/rebasin_width_digits.toml, measure the barriers of every seed pair naive,
after weight matching and after weight matching + renormalisation, and plot barrier vs width.

    python examples/rebasin_over_a_zoo.py --out runs/rebasin [--figure docs/figures/rebasin_width.png]

Everything is stored in the zoo's catalog (``zooscape lmc pairs`` rows); re-running skips what is stored.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from zooscape._io import save_figure
from zooscape.studies.lmc import pair_barriers
from zooscape.zoo import open_zoo, train_zoo

ROOT = Path(__file__).resolve().parents[1]
RENORMS = ("repair", "rescale", "reset_bn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="zoo directory (created)")
    parser.add_argument("--figure", default=None, help="PNG to write (default OUT/rebasin_width.png)")
    parser.add_argument("--metric", default="loss", choices=("loss", "error"))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    train_zoo(ROOT / "configs" / "rebasin_width_digits.toml", args.out, device="cpu", progress=True).close()
    runs = {r: pair_barriers(args.out, n_points=11, splits=("train", "test"), align="weight", renorm=r, device="cpu",
                             workers=args.workers, bar=True, progress=print) for r in RENORMS}
    with open_zoo(args.out) as zoo:
        setting = {m: (zoo.config(m)["model"]["norm"], zoo.config(m)["model"]["width"]) for m in zoo.model_ids}
    key = f"barrier_{args.metric}_test_linear"
    stages = {"naive": ("repair", "naive_" + key), "weight matching": ("repair", "aligned_" + key),
              **{f"weight matching + {r}": (r, key) for r in RENORMS}}
    table: dict[tuple[str, str, int], list[float]] = {}
    for name, (run, k) in stages.items():
        for rec in runs[run]:
            norm, width = setting[rec["model_id"]]
            table.setdefault((name, norm, width), []).append(rec[k])
    norms = sorted({n for n, _ in setting.values()}, key=lambda n: n != "none")
    widths = sorted({w for _, w in setting.values()})
    print(f"mean test {args.metric} barrier over seed pairs (min..max)")
    for norm in norms:
        print(f"norm = {norm}")
        print("stage".ljust(28) + "".join(f"{w:>22d}" for w in widths))
        for name in stages:
            cells = [table.get((name, norm, w), []) for w in widths]
            print(name.ljust(28) + "".join(f"{statistics.mean(v):.4f} ({min(v):.3f}-{max(v):.3f})".rjust(22)
                                         if v else " " * 22 for v in cells))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(norms), figsize=(5.2 * len(norms), 3.8), sharey=True, squeeze=False)
    styles = {"naive": ("k", "--"), "weight matching": ("tab:blue", "-"),
              "weight matching + repair": ("tab:green", "-"), "weight matching + rescale": ("tab:orange", ":"),
              "weight matching + reset_bn": ("tab:red", "-.")}
    for ax, norm in zip(axes[0], norms):
        for name in stages:
            pts = [(w, table[(name, norm, w)]) for w in widths if (name, norm, w) in table]
            if norm == "none" and name.endswith("reset_bn"):
                continue  # no BatchNorm: identical to weight matching
            color, style = styles[name]
            ax.plot([w for w, _ in pts], [statistics.mean(v) for _, v in pts], style, color=color, marker="o", ms=3,
                    label=name)
            ax.fill_between([w for w, _ in pts], [min(v) for _, v in pts], [max(v) for _, v in pts], color=color,
                            alpha=0.12)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden width")
        ax.set_title(f"MLP 64-w-w-10, norm = {norm}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"linear test {args.metric} barrier")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    print(save_figure(fig, Path(args.figure) if args.figure else Path(args.out) / "rebasin_width.png"))


if __name__ == "__main__":
    main()
