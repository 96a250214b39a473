"""The console entry point ``zooscape.cli.run`` ends the process without the interpreter's module teardown (~0.4 s
once torch is imported, issue 20's end-to-end time) yet loses nothing: exit code, Python and C output, atexit
handlers, files of commands; and it waits for running threads like an ordinary exit."""

import os
import subprocess
import sys

from test_cli_zoo import SPEC


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # (-u would leave C's stdio unbuffered)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env)


def test_exit_keeps_code_output_and_atexit_but_skips_teardown():
    res = _python(
        "import atexit, ctypes, sys\n"
        "from zooscape.cli import _exit_now\n"
        "class Noisy:\n"
        "    def __del__(self):\n"
        "        print('teardown ran', flush=True)\n"
        "keep = Noisy()\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "print('python line')\n"
        "sys.stderr.write('stderr line')\n"
        "ctypes.CDLL(None).printf(b'C line\\n')\n"  # buffered in C's stdio (stdout is a pipe)
        "_exit_now(3)\n"
    )
    assert res.returncode == 3, res.stderr
    for line in ("python line", "atexit ran", "C line"):
        assert line in res.stdout, (line, res.stdout)
    assert "stderr line" in res.stderr
    assert "teardown ran" not in res.stdout  # module globals were not torn down (the time it saves)


def test_exit_waits_for_a_running_thread(tmp_path):
    flag = tmp_path / "flag"
    res = _python(
        "import sys, threading, time\n"
        "from pathlib import Path\n"
        "from zooscape.cli import _exit_now\n"
        "def late():\n"
        "    time.sleep(0.3)\n"
        "    Path(sys.argv[1]).write_text('done')\n"
        "threading.Thread(target=late).start()\n"
        "_exit_now(0)\n",
        str(flag),
    )
    assert res.returncode == 0, res.stderr
    assert flag.read_text() == "done"


def test_module_run_trains_a_zoo_and_reports_exit_codes(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace('"model.width" = [8, 12]', "").replace("[0, 1]", "[0]"))
    out = tmp_path / "zoo"
    res = subprocess.run([sys.executable, "-m", "zooscape", "zoo", "train", str(spec), "--out", str(out), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{out}: 2 done"
    res = subprocess.run([sys.executable, "-m", "zooscape", "zoo", "verify", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "fine" in res.stdout, res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-m", "zooscape.cli", "zoo", "train", str(tmp_path / "missing.toml"),
                          "--out", str(tmp_path / "other")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no such file" in res.stderr
    assert not (tmp_path / "other").exists()


def test_heavy_imports_switches_the_collector_off_then_freezes_what_it_imported():
    res = _python(
        "import gc, sys\n"
        "from zooscape.cli._common import heavy_imports\n"
        "assert gc.isenabled() and gc.get_freeze_count() == 0\n"
        "with heavy_imports():\n"
        "    assert not gc.isenabled()\n"
        "    import torch\n"
        "assert gc.isenabled() and gc.get_freeze_count() > 100_000, gc.get_freeze_count()\n"
        "gc.disable()\n"
        "with heavy_imports():\n"
        "    pass\n"
        "assert not gc.isenabled()  # left as it found it\n"
        "print('ok')\n"
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


LIGHT = ("sklearn", "scipy", "pandas", "matplotlib")


def _light_run(tmp_path, commands: str) -> list[str]:
    """Run ``commands`` (calls of ``main`` on ``sys.argv[1]`` = a one-model spec, ``sys.argv[2]`` = its zoo) in a
    fresh interpreter; returns its output lines, the last one listing which of :data:`LIGHT` got imported."""
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace('"model.width" = [8, 12]', "").replace("[0, 1]", "[0]"))
    res = _python("import sys\nfrom zooscape.cli import main\n" + commands
                  + f"print(rc, [m for m in {LIGHT!r} if m in sys.modules])\n", str(spec), str(tmp_path / "zoo"))
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()


def test_zoo_train_imports_no_sklearn_scipy_pandas_matplotlib(tmp_path):
    lines = _light_run(tmp_path, "rc = main(['zoo', 'train', sys.argv[1], '--out', sys.argv[2], '--quiet'])\n")
    assert lines[-1] == "0 []", lines  # digits read without scikit-learn


def test_sparsify_twins_imports_no_sklearn_scipy_pandas_matplotlib(tmp_path):
    """``sparsify twins`` pays for torch only: its summary table is read from the catalog without pandas, and
    importing ``zooscape.sparsify`` (hence ``align``) does not import scipy."""
    lines = _light_run(tmp_path, "assert main(['zoo', 'train', sys.argv[1], '--out', sys.argv[2], '--quiet']) == 0\n"
                                 "rc = main(['sparsify', 'twins', sys.argv[2], '--epochs', '1', '--quiet'])\n")
    assert lines[-1] == "0 []", lines
    assert any(line.split()[:1] == ["model_id"] and "sparsity" in line for line in lines), lines  # the summary
