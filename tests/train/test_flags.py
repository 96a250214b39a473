"""The fast-path switchboard (``zooscape.train._flags``): one place reads the ``ZOOSCAPE_*`` switches, and
``override`` changes them for code and tests without touching any module's globals."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from zooscape.models import create_model
from zooscape.train import Population, _flags, native
from zooscape.train._flags import ENV, Switches, current, describe, from_env, override
from zooscape.train.layers import PopConv2d


def test_environment_parsing():
    assert from_env({}) == Switches()
    got = from_env({"ZOOSCAPE_NATIVE_KERNELS": "0", "ZOOSCAPE_CHANNELS_LAST": "1", "ZOOSCAPE_CACHE_DIR": "/tmp/x",
                    "ZOOSCAPE_FLAT_OPTIM": "false", "ZOOSCAPE_SHARED_INPUT": "on", "ZOOSCAPE_NATIVE_OPENMP": "0"})
    assert got == Switches(native_kernels=False, channels_last=True, cache_dir="/tmp/x", flat_optim=False,
                           shared_input=True, native_openmp=False)
    assert from_env({"ZOOSCAPE_CHANNELS_LAST": "auto"}).channels_last is None
    with pytest.raises(ValueError, match="ZOOSCAPE_MALLOC_TUNE='maybe'"):
        from_env({"ZOOSCAPE_MALLOC_TUNE": "maybe"})


def test_override_changes_and_restores_nested():
    before = current()
    with override(native_kernels=False) as outer:
        assert current() is outer and outer.native_kernels is False
        with override(channels_last=True, flat_optim=False):
            assert current().native_kernels is False and current().channels_last is True
            assert {r["name"]: r["source"] for r in describe()}["channels_last"] == "override"
        assert current() == outer
    assert current() == before
    with pytest.raises(TypeError, match="unknown fast-path switch"):
        with override(rowconv=True):
            pass
    with pytest.raises(ValueError, match="channels_last"):
        with override(channels_last="yes"):
            pass
    assert current() == before


def test_describe_lists_every_switch():
    rows = describe()
    assert [r["name"] for r in rows] == list(ENV)
    assert all(r["env"].startswith("ZOOSCAPE_") for r in rows)


def test_switches_reach_the_layers_without_patching_globals():
    models = [create_model("cnn_s", seed=s, in_channels=1) for s in range(2)]
    with override(channels_last=False, shared_input=False):
        pop = Population(models)
    assert pop.channels_last is False and pop._shared_enabled is False
    assert Population(models).channels_last is True  # auto: a population of two
    conv = next(m for m in pop.net.modules() if isinstance(m, PopConv2d))
    with override(native_kernels=False):
        assert not conv.native_pool_ok() and not native.available()
        assert "ZOOSCAPE_NATIVE_KERNELS=0" in native.why_not()
    if native.available():
        assert conv.native_pool_ok()


def test_environment_is_read_in_a_fresh_process():
    code = ("from zooscape.models import create_model; from zooscape.train import Population; "
            "print(Population([create_model('cnn_s', seed=s, in_channels=1) for s in range(2)]).channels_last)")
    env = dict(os.environ, ZOOSCAPE_CHANNELS_LAST="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_other_module_reads_the_switches():
    root = Path(_flags.__file__).parent
    pattern = re.compile(r"environ(?:\.get)?\s*[\(\[]\s*[\"']ZOOSCAPE_")
    readers = [p.name for p in root.glob("*.py") if p.name != "_flags.py" and pattern.search(p.read_text())]
    assert readers == []
