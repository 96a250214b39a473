"""Wall time of the metadata commands (``zooscape --help``, ``zoo --help``, ``zoo info``, ``zoo verify``) as whole
processes, median of several interleaved runs; with ``--baseline-src`` the same commands run side by side with an
older checkout's ``src`` (e.g. ``main`` before the torch-free metadata path) and the ratio is printed.

Usage:
    .venv/bin/python bench/cli_latency.py                         # trains a 16-MLP zoo first (~5 s)
    .venv/bin/python bench/cli_latency.py --zoo DIR --baseline-src /path/to/old/checkout/src --runs 7

``python -c pass`` and ``python -c "import torch"`` are printed as the floor and the cost this path avoids.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from e2e import SPEC  # noqa: E402  (bench/e2e.py's 16-MLP zoo, here 3 epochs)


def wall(argv: list[str], src: str | None) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if src:
        env["PYTHONPATH"] = src
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", default=None, help="zoo directory (default: train a 16-MLP zoo in a temp dir)")
    parser.add_argument("--baseline-src", default=None, metavar="DIR", help="src/ of an older checkout")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        zoo = args.zoo
        if zoo is None:
            spec = Path(tmp) / "spec.toml"
            spec.write_text(SPEC.format(epochs=3, seeds=list(range(8))))
            zoo = str(Path(tmp) / "zoo")
            subprocess.run([sys.executable, "-m", "zooscape", "zoo", "train", str(spec), "--out", zoo, "--quiet"],
                           check=True)
        py = sys.executable
        cases = {
            "python -c pass": [py, "-c", "pass"],
            "python -c 'import torch'": [py, "-c", "import torch"],
            "zooscape --help": [py, "-m", "zooscape", "--help"],
            "zooscape zoo --help": [py, "-m", "zooscape", "zoo", "--help"],
            "zooscape zoo info ZOO": [py, "-m", "zooscape", "zoo", "info", zoo],
            "zooscape zoo verify ZOO": [py, "-m", "zooscape", "zoo", "verify", zoo],
        }
        times: dict[tuple[str, str], list[float]] = {}
        sides = [("now", None)] + ([("baseline", args.baseline_src)] if args.baseline_src else [])
        for _ in range(args.runs):  # interleaved: every case and side once per round
            for name, argv in cases.items():
                for side, src in sides:
                    if side == "baseline" and not name.startswith("zooscape"):
                        continue
                    times.setdefault((name, side), []).append(wall(argv, src))
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; median of {args.runs} runs, seconds")
    head = f"{'command':28s} {'now':>7s}" + (f" {'baseline':>9s} {'ratio':>7s}" if args.baseline_src else "")
    print(head)
    for name in cases:
        now = statistics.median(times[(name, "now")])
        line = f"{name:28s} {now:7.3f}"
        if args.baseline_src and (name, "baseline") in times:
            base = statistics.median(times[(name, "baseline")])
            line += f" {base:9.3f} {base / now:6.1f}x"
        print(line)


if __name__ == "__main__":
    main()
