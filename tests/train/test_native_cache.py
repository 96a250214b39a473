"""The native kernels' build cache under attack and under concurrency (issue 17 defects 1 and 9, issue 13).

Attacks as a local user would mount them: a cache directory owned by another uid, one with mode 0777, a symlink to
a directory of planted files, a library planted under the predictable key name with a matching sidecar, a cached
library truncated (today: SIGBUS in every later run) or altered. Each must end with the planted code not run and the
kernels rebuilt in a private directory. Concurrency: builds with different compilers and variants into one
directory all survive, and a following run compiles nothing.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from zooscape import __version__
from zooscape.train import native
from zooscape.train._native import cache

pytestmark = pytest.mark.skipif(native._platform_reason() is not None or shutil.which("gcc") is None,
                                reason=f"native kernels not for this machine: {native._platform_reason()}")

# the cache's mechanics do not depend on the optimisation level: -O0 compiles in a quarter of the time
_FAST = [f if f != "-O3" else "-O0" for f in native._FLAGS]
PTHREADS = [("pthreads", _FAST)]
OPENMP = [("openmp", [*_FAST, "-fopenmp"])]
NOBODY = 65534
PLANTED_C = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("planted code ran", f); fclose(f); }
}
int zs_convpool_abi(void) { return 5; }
"""


def _load(candidates, variants=PTHREADS, cc="gcc"):
    return cache.load(candidates, cc, variants, version=__version__, abi=native._ABI)


def _plant(directory: Path, marker: Path, tmp_path: Path, variants=PTHREADS, cc="gcc") -> None:
    """Plant a library whose constructor writes ``marker``, under the key the loader will look for, with a sidecar
    that matches it (the attacker can compute both: the key is predictable)."""
    directory.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "planted.c"
    src.write_text(PLANTED_C)
    lib = tmp_path / "planted.so"
    subprocess.run(["gcc", "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(lib), str(src)], check=True)
    data = lib.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    for name, flags in variants:
        key, parts = cache.cache_key(cache.compiler_id(cc), flags, name, version=__version__, abi=native._ABI)
        libname = f"{key}-{digest[:12]}.so"
        (directory / libname).write_bytes(data)
        (directory / f"{key}.json").write_text(json.dumps({"file": libname, "size": len(data), "sha256": digest,
                                                           "parts": parts}))
        (directory / f"kernels-{key}.so").write_bytes(data)  # the name main used


def _works(lib) -> bool:
    return lib.zs_convpool_abi() == native._ABI


def _assert_rebuilt_elsewhere(lib, info, hostile: Path, marker: Path, reason: str) -> None:
    assert not marker.exists(), "the planted library ran"
    assert _works(lib) and info.built
    assert not info.directory.startswith(str(hostile))
    assert any(reason in r for r in info.rejected), info.rejected
    mode = os.lstat(info.directory)
    assert mode.st_uid == os.getuid() and stat.S_IMODE(mode.st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the cache directory to another uid (nobody)")
def test_a_cache_directory_owned_by_another_uid_is_refused(tmp_path):
    hostile, marker = tmp_path / "cache" / "kernels", tmp_path / "marker"
    _plant(hostile, marker, tmp_path)
    os.chmod(hostile, 0o700)
    for p in [hostile, *hostile.iterdir()]:
        os.chown(p, NOBODY, NOBODY)
    with pytest.warns(UserWarning, match=f"owned by uid {NOBODY}"):
        lib, info = _load([hostile])
    _assert_rebuilt_elsewhere(lib, info, hostile, marker, f"owned by uid {NOBODY}")


def test_a_world_writable_cache_directory_is_refused(tmp_path):
    hostile, marker = tmp_path / "cache" / "kernels", tmp_path / "marker"
    _plant(hostile, marker, tmp_path)
    os.chmod(hostile, 0o777)
    with pytest.warns(UserWarning, match="mode 0777"):
        lib, info = _load([hostile])
    _assert_rebuilt_elsewhere(lib, info, hostile, marker, "mode 0777")


def test_a_symlinked_cache_directory_is_refused(tmp_path):
    target, marker = tmp_path / "elsewhere", tmp_path / "marker"
    _plant(target, marker, tmp_path)
    os.chmod(target, 0o700)  # private and ours: only the link is wrong
    link = tmp_path / "kernels"
    link.symlink_to(target)
    with pytest.warns(UserWarning, match="symbolic link"):
        lib, info = _load([link])
    _assert_rebuilt_elsewhere(lib, info, link, marker, "symbolic link")


def test_the_tmp_fallback_pre_created_by_someone_else_is_refused(tmp_path, monkeypatch):
    # the attack: the cache directory cannot be created (a home that cannot hold it: below a regular file,
    # which stops root too), so the loader falls back to <tmp>/zooscape-<uid>, which another user created first, with
    # a library under the predictable key
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("HOME", str(tmp_path / "file" / "home"))
    monkeypatch.delenv("ZOOSCAPE_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    candidates = native._cache_candidates()
    assert candidates[-1] == tmp_path / f"zooscape-{os.getuid()}"
    hostile, marker = candidates[-1], tmp_path / "marker"
    _plant(hostile, marker, tmp_path)
    if os.geteuid() == 0:
        for p in [hostile, *hostile.iterdir()]:
            os.chown(p, NOBODY, NOBODY)
    os.chmod(hostile, 0o777)
    with pytest.warns(UserWarning, match="refused"):
        lib, info = _load(candidates)
    _assert_rebuilt_elsewhere(lib, info, hostile, marker, "refused")
    assert Path(info.directory).parent == tmp_path and "zooscape-kernels-" in info.directory  # a private mkdtemp


def test_a_private_directory_is_created_0700_and_used(tmp_path):
    d = tmp_path / "a" / "b" / "kernels"
    old = os.umask(0o022)
    try:
        lib, info = _load([d])
    finally:
        os.umask(old)
    assert _works(lib) and info.directory == str(d) and info.rejected == []
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700
    meta = json.loads((d / f"{info.key}.json").read_text())
    data = (d / meta["file"]).read_bytes()
    assert meta["size"] == len(data) and meta["sha256"] == hashlib.sha256(data).hexdigest()


def test_an_altered_cached_library_is_rebuilt_not_loaded(tmp_path):
    d = tmp_path / "kernels"
    _, info = _load([d])
    path = Path(info.library)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    path.unlink()  # (a new file: this process has the old one mapped)
    path.write_bytes(bytes(data))
    before = cache.builds
    lib, again = _load([d])
    assert again.built and cache.builds == before + 1 and _works(lib)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == json.loads((d / f"{info.key}.json").read_text())["sha256"]


def test_a_truncated_cached_library_is_rebuilt_in_a_fresh_process(tmp_path):
    # on main a truncated cached library killed every later process with SIGBUS (exit -7), and was never rebuilt
    d = tmp_path / "kernels"
    _, info = cache.load([d], native._compiler(), [("pthreads", native._FLAGS)], version=__version__,
                         abi=native._ABI)  # what the process below looks for
    path = Path(info.library)
    data = path.read_bytes()
    path.unlink()  # (a new file: this process has the old one mapped)
    path.write_bytes(data[: len(data) // 3])
    env = dict(os.environ, ZOOSCAPE_CACHE_DIR=str(tmp_path), ZOOSCAPE_NATIVE_OPENMP="0")
    code = ("from zooscape.train import native; from zooscape.train._native import cache; import torch; "
            "assert native.available(), native.why_not(); "
            "x = torch.randn(2, 1, 8, 8); w = torch.randn(1, 8, 1, 3, 3); "
            "out, _ = native.conv_pool_forward(x, w, None); "
            "ref = torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(x, w[0]), 2); "
            "torch.testing.assert_close(out, ref); print(cache.builds, native.library_path())")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", str(path)]  # rebuilt (one compilation): same content, same name
    assert path.read_bytes() == data


def _build_in_child(d: str, cc: str, variants, barrier, queue) -> None:
    barrier.wait(timeout=60)
    try:
        lib, info = _load([Path(d)], variants, cc)
        queue.put((cc, variants[0][0], info.key, info.library, info.built, cache.builds, _works(lib)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        queue.put((cc, variants[0][0], None, repr(e), False, cache.builds, False))


def test_concurrent_builds_with_other_compilers_and_variants_all_survive(tmp_path):
    d = tmp_path / "kernels"
    wrapper = tmp_path / "cc-wrapper"
    wrapper.write_text('#!/bin/sh\nexec gcc -DZOOSCAPE_CC_WRAPPER=1 "$@"\n')
    wrapper.chmod(0o755)
    jobs = [("gcc", OPENMP), ("gcc", PTHREADS), (str(wrapper), OPENMP), (str(wrapper), PTHREADS),
            ("gcc", OPENMP)]  # the last one races the first for the same key
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(len(jobs)), ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(str(d), cc, v, barrier, queue)) for cc, v in jobs]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(r[6] for r in results), results
    keys = {r[2] for r in results}
    assert len(keys) == 4  # other compiler or other variant: another key
    libs = sorted(d.glob("*.so"))
    assert len(libs) == 4 and sorted(d.glob("*.json")) == sorted(d / f"{k}.json" for k in keys)
    assert not list(d.glob(".tmp-*"))  # no leftovers
    mtimes = {p: p.stat().st_mtime_ns for p in d.iterdir()}
    # a following run (each configuration again) compiles nothing and touches nothing
    before = cache.builds
    for cc, variants in jobs:
        lib, info = _load([d], variants, cc)
        assert _works(lib) and not info.built and info.key in keys
    assert cache.builds == before
    assert {p: p.stat().st_mtime_ns for p in d.iterdir()} == mtimes


def test_the_key_changes_with_everything_that_changes_the_binary():
    cc = cache.compiler_id("gcc")
    base, parts = cache.cache_key(cc, native._FLAGS, "pthreads", version="1.0", abi=5)
    assert set(parts) >= {"compiler", "compiler_version", "flags", "variant", "sources", "zooscape", "platform",
                          "machine", "abi"}
    others = [
        cache.cache_key({**cc, "compiler": "/usr/bin/clang"}, native._FLAGS, "pthreads", version="1.0", abi=5),
        cache.cache_key({**cc, "compiler_version": "gcc 99"}, native._FLAGS, "pthreads", version="1.0", abi=5),
        cache.cache_key(cc, [*native._FLAGS, "-fopenmp"], "openmp", version="1.0", abi=5),
        cache.cache_key(cc, [*native._FLAGS, "-O2"], "pthreads", version="1.0", abi=5),
        cache.cache_key(cc, native._FLAGS, "pthreads", version="1.1", abi=5),
        cache.cache_key(cc, native._FLAGS, "pthreads", version="1.0", abi=6),
    ]
    assert len({base, *(k for k, _ in others)}) == len(others) + 1
    assert cache.cache_key(cc, native._FLAGS, "pthreads", version="1.0", abi=5)[0] == base  # deterministic


def test_doctor_builds_the_kernels_and_reports_the_refused_directory_and_the_key(tmp_path):
    # `zooscape doctor --build-kernels` (what `make venv` runs) in the setting: no usable home cache and a
    # pre-created, planted <tmp>/zooscape-<uid>
    fast_cc = tmp_path / "cc-fast"
    fast_cc.write_text('#!/bin/sh\nexec gcc "$@" -O0\n')  # (a later -O wins: a cheap build for the test)
    fast_cc.chmod(0o755)
    hostile, marker = tmp_path / f"zooscape-{os.getuid()}", tmp_path / "marker"
    _plant(hostile, marker, tmp_path, [("pthreads", native._FLAGS)], cc=str(fast_cc))
    if os.geteuid() == 0:
        for p in [hostile, *hostile.iterdir()]:
            os.chown(p, NOBODY, NOBODY)
    os.chmod(hostile, 0o777)
    (tmp_path / "file").write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("ZOOSCAPE_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path / "file" / "home"), TMPDIR=str(tmp_path), CC=str(fast_cc),
               ZOOSCAPE_NATIVE_OPENMP="0")
    proc = subprocess.run([sys.executable, "-m", "zooscape.cli", "doctor", "--build-kernels", "--json"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)["fast_paths"]
    assert not marker.exists(), "the planted library ran"
    assert report["native_kernels"] is True
    assert any(str(hostile) in r and "refused" in r for r in report["native_kernels_cache_refused"])
    assert Path(report["native_kernels_cache"]).parent == tmp_path
    assert "zooscape-kernels-" in report["native_kernels_cache"] and "mode 0700" in report["native_kernels_cache_check"]
    assert len(report["native_kernels_key"]) == 16 and report["native_kernels_variant"] == "pthreads"
    assert "refused" in proc.stderr  # the warning names the refused directory
    assert not Path(report["native_kernels_cache"]).exists()  # the private temporary directory went at exit
