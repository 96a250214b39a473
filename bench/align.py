"""Benchmark: zooscape.align.weight_matching vs a plain implementation of the Git Re-Basin algorithm.

The plain implementation follows the reference (Ainsworth et al. 2023, samuela/git-re-basin) line by line
in NumPy: for every group, loop over its (tensor, axis) entries, permute every *other* axis of model B's
tensor, move the axis to the front, reshape and accumulate ``A += W_a @ W_b.T``; then one
``linear_sum_assignment``.  Both visit the groups in the same seeded random order and use float64, so they
must find the same permutation; the script checks that and prints the speed ratio.

Usage::

    python bench/align.py --quick        # MLP 64-256x3-10 and ResNet20 x1, one repeat (seconds)
    python bench/align.py                # MNIST MLP 784-512x3-10, ResNet20 x1 and x4 (minutes)
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from zooscape.align import (
    Permutation,
    apply_permutation,
    permutation_spec,
    weight_matching,
    weight_matching_state_dicts,
)
from zooscape.models import create_model


def plain_weight_matching(spec, sd_a, sd_b, max_iter=100, seed=0):
    """Reference coordinate descent (per-tensor loop, NumPy float64); returns (perm dict, sweeps)."""
    a = {k: v.detach().double().numpy() for k, v in sd_a.items()}
    b = {k: v.detach().double().numpy() for k, v in sd_b.items()}
    perm_to_axes = {g: [] for g in spec.group_sizes}
    for key, axes in spec.axes.items():
        for axis, ap in enumerate(axes):
            if ap is not None:
                if ap.inner != 1:
                    raise ValueError("the plain reference handles unit blocks of size 1 only")
                perm_to_axes[ap.group].append((key, axis))
    names = list(spec.group_sizes)
    perm = {g: np.arange(n) for g, n in spec.group_sizes.items()}

    def get_permuted_param(key, except_axis):
        w = b[key]
        for axis, ap in enumerate(spec.axes[key]):
            if axis == except_axis or ap is None:
                continue
            w = np.take(w, perm[ap.group], axis=axis)
        return w

    rng = np.random.default_rng(seed)
    sweeps = 0
    for _ in range(max_iter):
        sweeps += 1
        progress = False
        for gi in rng.permutation(len(names)):
            g = names[gi]
            n = spec.group_sizes[g]
            cost = np.zeros((n, n))
            for key, axis in perm_to_axes[g]:
                w_a = np.moveaxis(a[key], axis, 0).reshape((n, -1))
                w_b = np.moveaxis(get_permuted_param(key, axis), axis, 0).reshape((n, -1))
                cost += w_a @ w_b.T
            _, cols = linear_sum_assignment(cost, maximize=True)
            old = cost[np.arange(n), perm[g]].sum()
            new = cost[np.arange(n), cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                progress = True
                perm[g] = cols
        if not progress:
            break
    return perm, sweeps


def best_time(fn, repeats):
    """Minimum CPU time of this process over ``repeats`` calls (robust on a shared machine), and the result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.process_time()
        out = fn()
        times.append(time.process_time() - t0)
    return min(times), out


def run_case(label, make, x, repeats, seed=0):
    """Time both implementations on two pairs and compare the permutations.

    Pairs: two independently initialised models, and a model with a randomly permuted copy of itself (which
    the matching must undo exactly).
    """
    model_a, model_b = make(0), make(1)
    spec = permutation_spec(model_a, x)
    permuted = apply_permutation(model_a, Permutation.random(spec, torch.Generator().manual_seed(seed)))
    n_params = sum(p.numel() for p in model_a.parameters())
    ok = True
    sd_a = model_a.state_dict()
    for pair, other in (("independent", model_b), ("permuted copy", permuted)):
        sd_b = other.state_dict()
        ours = functools.partial(weight_matching_state_dicts, sd_a, sd_b, spec, seed=seed)
        full = functools.partial(weight_matching, model_a, other, spec, seed=seed)
        plain = functools.partial(plain_weight_matching, spec, sd_a, sd_b, seed=seed)
        t_perm, (perm, sweeps, _) = best_time(ours, repeats)
        t_full, _ = best_time(full, repeats)
        t_plain, (ref, ref_sweeps) = best_time(plain, repeats)
        same = all(np.array_equal(perm[g].numpy(), ref[g]) for g in spec.group_sizes)
        ok &= same and sweeps == ref_sweeps
        print(f"{label:24s} {pair:13s} params={n_params:>9,d} groups={len(spec.group_sizes):>2d} "
              f"sweeps={sweeps:>3d} ours={t_perm:7.3f}s (+model {t_full:7.3f}s) plain={t_plain:7.3f}s "
              f"ratio plain/ours={t_plain / t_perm:5.2f} same_perm={same}")
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small models and one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default 1 quick, 3 full)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.quick:
        mlp_width, mlp_in, resnet_widths = 256, 64, (16,)
    else:
        mlp_width, mlp_in, resnet_widths = 512, 784, (16, 64)
    ok = run_case(
        f"MLP {mlp_in}-{mlp_width}x3-10",
        lambda s: create_model("mlp", input_size=mlp_in, depth=3, width=mlp_width, seed=s),
        torch.zeros(2, mlp_in), repeats,
    )
    for w in resnet_widths:
        ok &= run_case(
            f"ResNet20 width {w} (BN)",
            lambda s, w=w: create_model("resnet20", in_channels=3, input_size=32, width=w, seed=s),
            torch.zeros(2, 3, 32, 32), repeats,
        )
    print("all permutations identical" if ok else "MISMATCH between implementations")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
