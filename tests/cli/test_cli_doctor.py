"""``zooscape doctor`` reports the environment and the fast paths, as text and as JSON."""

import json
import os
import subprocess
import sys

import torch

from zooscape.cli import main
from zooscape.train import native


def test_doctor_json_reports_versions_threads_and_native_kernels(capsys):
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"system", "packages", "torch", "threads", "fast_paths", "extras"}
    assert report["packages"]["torch"] == torch.__version__
    assert report["torch"]["threads"] == torch.get_num_threads()
    assert report["fast_paths"]["native_kernels"] == native.available()
    assert report["threads"]["torch_threads_per_process"] == 1
    assert report["threads"]["workers_auto"] >= 1
    switches = report["fast_paths"]["switches"]
    assert {s["env"] for s in switches.values()} >= {"ZOOSCAPE_NATIVE_KERNELS", "ZOOSCAPE_FLAT_OPTIM"}
    if native.available():
        assert os.path.exists(report["fast_paths"]["native_kernels_library"])
    else:
        assert report["fast_paths"]["native_kernels_reason"]


def test_doctor_text_and_the_kernel_switch():
    env = dict(os.environ, ZOOSCAPE_NATIVE_KERNELS="0")
    out = subprocess.run([sys.executable, "-m", "zooscape.cli", "doctor"], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert "[fast_paths]" in out
    line = next(line for line in out.splitlines() if line.strip().startswith("native_kernels_reason"))
    assert "ZOOSCAPE_NATIVE_KERNELS=0" in line
    line = next(line for line in out.splitlines() if line.strip().startswith("switch native_kernels"))
    assert "False" in line and "(env; ZOOSCAPE_NATIVE_KERNELS)" in line
    assert "[threads]" in out
