"""The thread policy: the CLI and ``train_zoo`` train with the thread count they document (one per process by
default, ``--threads N`` / ``threads=N`` otherwise), whatever ``OMP_NUM_THREADS`` says."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zooscape.train.threads import describe_policy, resolve_threads, resolve_workers, torch_threads, usable_cores

SPEC = """
[zoo]
name = "threads"

[dataset]
name = "digits"

[model]
name = "mlp"
width = 4
depth = 1

[training]
epochs = 1
batch_size = 256
optimizer = "sgd"
lr = 0.1

[grid]
"training.seed" = [0, 1]
"""

# Records torch's thread count inside every train_population call, then runs the CLI or the API.
PROBE = """
import json, sys, torch
import zooscape.train as train
seen = []
real = train.train_population
def probe(*a, **k):
    seen.append(torch.get_num_threads())
    return real(*a, **k)
train.train_population = probe
mode, spec, out, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
before = torch.get_num_threads()
if mode == "cli":
    from zooscape.cli import main
    assert main(["zoo", "train", spec, "--out", out, "--quiet", *extra]) == 0
else:
    from zooscape.zoo import train_zoo
    train_zoo(spec, out, progress=False, **({"threads": int(extra[0])} if extra else {}))
print(json.dumps({"before": before, "seen": seen, "after": torch.get_num_threads()}))
"""


def _run(tmp_path: Path, mode: str, *extra: str) -> dict:
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    out = tmp_path / f"zoo-{mode}-{'-'.join(extra) or 'default'}"
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")  # as a shell without our Makefile
    proc = subprocess.run([sys.executable, "-c", PROBE, mode, str(spec), str(out), *extra], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["cli", "api"])
def test_training_uses_one_thread_whatever_omp_num_threads_says(tmp_path, mode):
    got = _run(tmp_path, mode)
    assert got["before"] == 2  # the environment asked for two
    assert got["seen"] and set(got["seen"]) == {1}
    if mode == "api":
        assert got["after"] == 2  # the library call restores the caller's setting


@pytest.mark.parametrize("mode", ["cli", "api"])
def test_explicit_threads_are_used(tmp_path, mode):
    got = _run(tmp_path, mode, *(["--threads", "3"] if mode == "cli" else ["3"]))
    assert set(got["seen"]) == {3}


def test_resolution_rules():
    assert resolve_threads(None) == 1 and resolve_threads(4) == 4
    assert resolve_workers("auto") == usable_cores() >= 1
    assert resolve_workers(3) == resolve_workers("3") == 3
    for bad in (0, -1, "many", True, 1.5):
        with pytest.raises(ValueError, match="workers"):
            resolve_workers(bad)
    with pytest.raises(ValueError, match="threads"):
        resolve_threads(0)
    if hasattr(os, "sched_getaffinity"):
        assert usable_cores() == len(os.sched_getaffinity(0))
    policy = describe_policy()
    assert policy["torch_threads_per_process"] == 1 and policy["workers_auto"] == usable_cores()
    from zooscape.cli import build_parser

    args = build_parser().parse_args(["zoo", "train", "spec.toml", "--out", "z", "--workers", "auto"])
    assert args.workers == usable_cores() and args.threads is None


def test_torch_threads_restores():
    import torch

    before = torch.get_num_threads()
    with torch_threads(None) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
