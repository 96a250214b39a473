"""Zoo-wide analyses vs a plain per-model (per-pair) loop over the same checkpoints (issue 20).

Usage:
    .venv/bin/python bench/analyses.py            # CKA of every seed pair of a 16-model CNN-s zoo (4 cells x 4 seeds)
    .venv/bin/python bench/analyses.py --quick    # the same on MLPs and digits

The plain loop is what a user writes with the public per-model functions: for every seed pair of every cell, load
both checkpoints (``zoo.load_model``) and compute ``landscape.cka`` of their ``layer_features``. ``zooscape metrics
run --metric cka`` (``studies.metrics.run_metrics``) plans one task per cell that computes each model's
representation once and then every pair. Both use the same samples; the script checks the values agree and prints
the wall-clock ratio. Other analyses (Hessian, Fisher, LMC, curves) are one model or one pair per task and are not
yet computed for a whole population at once (see bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

SPEC = """
[zoo]
name = "analyses"
[dataset]
name = "{dataset}"
seed = 42
[model]
name = "{model}"
{model_args}
[training]
epochs = 1
batch_size = 64
optimizer = "adam"
lr = 0.001
[grid]
"training.lr" = [0.0005, 0.001, 0.002, 0.004]
"training.seed" = [0, 1, 2, 3]
"""


def plain_loop(zoo_dir: Path, params: dict) -> dict[tuple[str, str], float]:
    from zooscape import landscape as ls
    from zooscape.studies.cells import zoo_cells
    from zooscape.studies.metrics import _subset
    from zooscape.zoo import open_zoo

    out = {}
    with open_zoo(zoo_dir) as zoo:
        x, _ = _subset(zoo.data(zoo.model_ids[0]), params)
        for cell in zoo_cells(zoo):
            for a, b in itertools.combinations(cell.model_ids, 2):
                ma, mb = zoo.load_model(a, 1), zoo.load_model(b, 1)
                fa = ls.layer_features(ma, x, [""])[""]
                fb = ls.layer_features(mb, x, [""])[""]
                out[(a, b)] = float(ls.cka(fa, fb))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="MLPs on digits")
    parser.add_argument("--n-samples", type=int, default=1024)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from zooscape.studies.metrics import metric_params, run_metrics
    from zooscape.zoo import train_zoo

    if args.quick:
        spec = SPEC.format(dataset="digits", model="mlp", model_args="width = 64\ndepth = 2")
    else:
        spec = SPEC.format(dataset="mnist5k", model="cnn_s", model_args="")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "spec.toml").write_text(spec)
        train_zoo(tmp / "spec.toml", tmp / "zoo", device="cpu", progress=False).close()
        params = metric_params("cka", {"n_samples": args.n_samples})
        times = {"loop": [], "zoo": []}
        for rep in range(2):
            t0 = time.perf_counter()
            ref = plain_loop(tmp / "zoo", params)
            times["loop"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rows = run_metrics(tmp / "zoo", "cka", params={"n_samples": args.n_samples, "data_seed": rep},
                               device="cpu") if rep else run_metrics(tmp / "zoo", "cka",
                                                                     params={"n_samples": args.n_samples},
                                                                     device="cpu")
            times["zoo"].append(time.perf_counter() - t0)
            if rep == 0:
                got = {(r["model_id"], r["other_id"]): r["value"] for r in rows}
                diff = max(abs(got[k] - v) for k, v in ref.items())
    load = os.getloadavg()[0]
    best = {k: min(v) for k, v in times.items()}
    what = "MLP 64-64-10 / digits" if args.quick else "CNN-s / MNIST-5k"
    print(f"CKA of every seed pair: {what}, 16 models in 4 cells ({len(ref)} pairs), {args.n_samples} samples, "
          f"1 thread, load average {load:.1f}")
    print(f"plain per-pair loop {best['loop']:.2f} s, metrics run {best['zoo']:.2f} s: "
          f"{best['loop'] / best['zoo']:.2f}x (values agree to {diff:.1e})")


if __name__ == "__main__":
    main()
