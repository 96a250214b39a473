"""Where the seconds of ``zooscape zoo train`` go for a small-model zoo (bench/e2e.py's 16 MLPs x 20 epochs).

Runs the command's code in this process with wall-clock timers wrapped around its phases (no profiler overhead):
interpreter start (measured as ``python -c pass``), imports, spec planning and catalog set-up, data and model
building, training steps, evaluation, the per-epoch bookkeeping (checkpoint shards, catalog rows, resume file) and
the rest, and the interpreter's exit (the child's whole-process wall clock less the timed phases and
``python -c pass``). Prints a table with each phase's share and the share of training + evaluation (issue 20
asks >= 70 %).

Usage:
    .venv/bin/python bench/e2e_profile.py [--epochs 20] [--seeds 8] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from e2e import SPEC  # noqa: E402  (the same spec as bench/e2e.py)


class Timers:
    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.local = threading.local()
        self.main = threading.get_ident()

    def wrap(self, owner: object, attr: str, name: str) -> None:
        """Time ``owner.attr`` as phase ``name`` (time inside nested timed phases is theirs, not the outer's)."""
        fn = getattr(owner, attr)
        timers = self

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            stack = timers.local.__dict__.setdefault("stack", [])
            label = name if threading.get_ident() == timers.main else f"(background thread) {name}"
            stack.append(label)
            try:
                return fn(*args, **kwargs)
            finally:
                stack.pop()
                dt = time.perf_counter() - t0
                timers.total[label] += dt
                if stack:
                    timers.total[stack[-1]] -= dt

        setattr(owner, attr, timed)


def one_run(epochs: int, seeds: list[int]) -> dict[str, float]:
    timers = Timers()
    t_start = time.perf_counter()
    try:  # as `zoo train` imports them: collector off, then frozen (absent before this change)
        from zooscape.cli._common import heavy_imports
    except ImportError:
        from contextlib import nullcontext as heavy_imports
    with heavy_imports():
        import torch  # noqa: F401

        from zooscape.cli import main
        from zooscape.zoo import runner  # noqa: F401  (what `zoo train` imports)
    t_import = time.perf_counter() - t_start

    import zooscape.train.trainer as trainer
    import zooscape.zoo as zoo_pkg
    import zooscape.zoo.runner as runner_mod
    import zooscape.zoo.task as task
    from zooscape.zoo.store import ZooStore

    timers.wrap(runner_mod, "train_zoo", "planning, catalog, driver")
    if "train_zoo" in vars(zoo_pkg):  # (bound at import by older versions of zooscape.zoo)
        zoo_pkg.train_zoo = runner_mod.train_zoo
    timers.wrap(task, "load_data", "data and models")
    timers.wrap(task, "build_model", "data and models")
    timers.wrap(trainer._Run, "train_epoch", "training steps")
    timers.wrap(trainer._Run, "evaluate", "evaluation")
    timers.wrap(ZooStore, "write_shard", "checkpoint shards")
    timers.wrap(task, "_write_resume", "resume file + journal")
    timers.wrap(task, "emit", "catalog rows (emit)")
    timers.wrap(task.GroupRecorder, "observe", "recorder")
    if hasattr(task, "_EpochWriter"):  # files written in a background thread; the task waits for them here
        timers.wrap(task._EpochWriter, "flush", "waiting for an epoch's files")
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.toml"
        spec.write_text(SPEC.format(epochs=epochs, seeds=seeds))
        t0 = time.perf_counter()
        assert main(["zoo", "train", str(spec), "--out", str(Path(tmp) / "zoo"), "--quiet"]) == 0
        t_cmd = time.perf_counter() - t0
    out = dict(timers.total)
    out["imports (torch, zooscape)"] = t_import
    out["other (cli, summary line)"] = t_cmd - sum(v for k, v in timers.total.items() if not k.startswith("("))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes; the median of each phase is shown")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    if args.child:
        import json

        print(json.dumps(one_run(args.epochs, seeds)), flush=True)
        try:  # end the process the way the `zooscape` command does (absent before this change: ordinary exit)
            from zooscape.cli import _exit_now
        except ImportError:
            return
        _exit_now(0)
    import json

    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs, starts = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
        starts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--child", "--epochs", str(args.epochs), "--seeds",
                              str(args.seeds)], check=True, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        # what the child's own timers do not see: its interpreter start and its exit (module teardown)
        runs[-1]["interpreter exit (rest of the process)"] = max(wall - starts[-1] - sum(
            v for k, v in runs[-1].items() if not k.startswith("(")), 0.0)
    phases = {"interpreter start": statistics.median(starts)}
    for key in runs[0]:
        phases[key] = statistics.median(r.get(key, 0.0) for r in runs)
    background = {k: phases.pop(k) for k in list(phases) if k.startswith("(")}
    total = sum(phases.values())
    print(f"{2 * len(seeds)} MLPs x {args.epochs} epochs on digits; median of {args.runs} runs; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'phase':40s} {'s':>7s} {'share':>7s}")
    for key, v in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"{key:40s} {v:7.3f} {100 * v / total:6.1f}%")
    print("-" * 56)
    work = phases.get("training steps", 0.0) + phases.get("evaluation", 0.0)
    print(f"{'total (wall clock)':40s} {total:7.3f}")
    for key, v in background.items():
        print(f"{key:48s} {v:7.3f}  (overlaps training)")
    print(f"training + evaluation: {100 * work / total:.1f}% of the whole process; "
          f"{100 * work / (total - phases['interpreter start'] - phases['imports (torch, zooscape)']):.1f}% "
          "after start-up and imports")


if __name__ == "__main__":
    main()
