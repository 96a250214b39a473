"""The native conv + 2x2 max-pool kernels compute what conv2d followed by max_pool2d computes.

Forward values, the pool's choice of window position (first maximum wins, NaN propagates), and the weight and
bias gradients are compared with PyTorch's own path for several shapes and memory layouts; population training
through the kernels is compared with the PyTorch path and with one model at a time.
"""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from zooscape.data import load_dataset
from zooscape.models import create_model
from zooscape.train import Member, Population, TrainConfig, native, train_population, train_sequential
from zooscape.train._flags import override

needs_native = pytest.mark.skipif(not native.available(), reason=f"native kernels unavailable: {native.why_not()}")


def _reference(x, w, b, shared, relu=False):
    g, o, c, k, _ = w.shape
    if shared:
        x = x.repeat(1, g, 1, 1)
    z = F.conv2d(x, w.reshape(g * o, c, k, k), b.reshape(-1) if b is not None else None, groups=g)
    z = F.max_pool2d(z, 2)
    return F.relu(z) if relu else z


CASES = [  # G, C, O, K, H, W
    (3, 1, 8, 5, 28, 28),
    (2, 3, 16, 3, 13, 11),   # odd sizes: the last conv row/column is dropped by the pool
    (4, 1, 8, 2, 9, 10),     # a kernel size without a specialised path
    (1, 2, 8, 5, 12, 12),
]


@needs_native
@pytest.mark.parametrize("g,c,o,k,h,w", CASES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "shared"])
@pytest.mark.parametrize("bias,relu", [(True, False), (False, False), (True, True)])
def test_conv_pool_forward_and_gradients_equal_pytorch(g, c, o, k, h, w, layout, bias, relu):
    gen = torch.Generator().manual_seed(g * 100 + k)
    shared = layout == "shared"
    x = torch.randn(5, c if shared else g * c, h, w, generator=gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(g, o, c, k, k, generator=gen, requires_grad=True)
    bs = torch.randn(g, o, generator=gen, requires_grad=True) if bias else None
    out = native.ConvPool2x2.apply(x, wt, bs, shared, relu)
    ref = _reference(x, wt, bs, shared, relu)
    assert out.shape == ref.shape == (5, g * o, (h - k + 1) // 2, (w - k + 1) // 2)
    if relu:
        assert (out == 0).float().mean() > 0.02  # the ReLU really cut something
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn(ref.shape, generator=gen)
    params = (wt, bs) if bias else (wt,)
    got = torch.autograd.grad(out, params, grad)
    want = torch.autograd.grad(ref, params, grad)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)
    # no-grad forward (evaluation) gives the same values
    with torch.no_grad():
        fast, idx = native.conv_pool_forward(x, wt, bs, shared=shared, indices=False, relu=relu)
    assert idx is None
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


@needs_native
@pytest.mark.parametrize("input_grad", [False, True])
def test_results_do_not_depend_on_the_thread_count(input_grad):
    # each model's outputs and gradients are computed by one thread in a fixed order: any split of the models
    # over threads (uneven ones included) gives bitwise the same numbers; a race would not
    gen = torch.Generator().manual_seed(5)
    g, c, o, k = 5, 8 if input_grad else 1, 6, 3
    x = torch.randn(7, g * c, 11, 12, generator=gen)
    if input_grad:
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    wt = torch.randn(g, o, c, k, k, generator=gen, requires_grad=True)
    bs = torch.randn(g, o, generator=gen, requires_grad=True)
    grad = torch.randn(7, g * o, 4, 5, generator=gen)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3, 8):
            torch.set_num_threads(threads)
            out = native.ConvPool2x2.apply(x, wt, bs, False)
            params = (x, wt, bs) if input_grad else (wt, bs)
            results.append((out.detach(), *torch.autograd.grad(out, params, grad)))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@needs_native
def test_population_training_really_uses_the_kernels(small_digits, monkeypatch):
    calls = {"forward": 0, "backward": 0, "backward_full": 0}
    for name in calls:
        fn = getattr(native, f"conv_pool_{name}")

        def counted(*a, _fn=fn, _name=name, **kw):
            calls[_name] += 1
            return _fn(*a, **kw)

        monkeypatch.setattr(native, f"conv_pool_{name}", counted)
    cfg = TrainConfig(epochs=1, optimizer="sgd", lr=0.05, batch_size=64)
    _train_cnn(small_digits, 2, cfg, True)
    steps = 2  # 128 training samples, batch 64
    assert calls["backward"] == steps  # conv1: weight gradient only (its input is data)
    assert calls["backward_full"] == steps  # conv2: input gradient too
    assert calls["forward"] >= 2 * steps  # both layers in training, and again in every evaluation


@needs_native
def test_pool_ties_pick_the_first_position_and_nan_propagates():
    g, o, c, k = 2, 8, 1, 3
    x = torch.zeros(2, g * c, 8, 8)
    x[0, 0, 3, 3] = float("nan")
    wt = torch.zeros(g, o, c, k, k)
    wt[:, :4] = 1.0  # channels 0-3 see the input (NaN spreads), channels 4-7 are constant: every window ties
    wt.requires_grad_(True)
    bs = torch.full((g, o), 0.5, requires_grad=True)
    out = native.ConvPool2x2.apply(x, wt, bs, False)
    ref = _reference(x, wt, bs, False)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out).any()
    torch.testing.assert_close(out, ref, equal_nan=True)
    x2 = torch.randn(2, g * c, 8, 8, generator=torch.Generator().manual_seed(0))
    x2[:, :, 4:, :] = 1.0  # ties inside windows: the gradient must go where max_pool2d sends it
    out = native.ConvPool2x2.apply(x2, wt, bs, False)
    ref = _reference(x2, wt, bs, False)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    for a, e in zip(torch.autograd.grad(out, (wt, bs), grad), torch.autograd.grad(ref, (wt, bs), grad)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@needs_native
@pytest.mark.parametrize("g,c,o,k,h,w", [(3, 8, 6, 5, 12, 12), (2, 16, 15, 3, 13, 11), (2, 8, 8, 2, 9, 10)])
@pytest.mark.parametrize("relu", [False, True])
def test_input_gradient_equals_pytorch(g, c, o, k, h, w, relu):
    gen = torch.Generator().manual_seed(c + o)
    x = torch.randn(4, g * c, h, w, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_()
    wt = torch.randn(g, o, c, k, k, generator=gen, requires_grad=True)
    bs = torch.randn(g, o, generator=gen, requires_grad=True)
    out = native.ConvPool2x2.apply(x, wt, bs, False, relu)
    ref = _reference(x, wt, bs, False, relu)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn(ref.shape, generator=gen)
    got = torch.autograd.grad(out, (x, wt, bs), grad)
    want = torch.autograd.grad(ref, (x, wt, bs), grad)
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


@needs_native
def test_input_gradient_needs_channels_last_input_with_8k_channels():
    wt = torch.randn(1, 8, 8, 3, 3, requires_grad=True)
    with pytest.raises(ValueError, match="input gradient"):
        native.ConvPool2x2.apply(torch.randn(2, 8, 8, 8, requires_grad=True), wt, None, False)  # NCHW
    wt3 = torch.randn(1, 8, 3, 3, 3, requires_grad=True)
    x3 = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    with pytest.raises(ValueError, match="input gradient"):
        native.ConvPool2x2.apply(x3, wt3, None, False)  # 3 channels per model


@needs_native
def test_population_layer_takes_the_native_path_only_where_it_applies():
    pop = Population([create_model("cnn_s", seed=s, in_channels=1) for s in range(3)])
    first = pop.net.module_list[0]
    second = pop.net.module_list[3]
    assert first.native_pool_ok() and pop._native_input(torch.zeros(1, 3, 28, 28))
    assert second.native_pool_ok()  # conv2 (8 -> 6 channels, then a pool) too, with its input gradient
    assert not pop.net.module_list[6].native_pool_ok()  # conv3: no pool follows
    assert not pop._native_input(torch.zeros(1, 3, 28, 28, dtype=torch.float64))


@pytest.fixture(scope="module")
def small_digits():
    d = load_dataset("digits", resize=28)
    return SimpleNamespace(task=d.task, train_x=d.train_x[:128], train_y=d.train_y[:128], val_x=d.val_x[:40],
                           val_y=d.val_y[:40], test_x=d.test_x[:40], test_y=d.test_y[:40])


CFG = TrainConfig(epochs=2, optimizer="sgd", lr=0.05, momentum=0.9, batch_size=32)


def _train_cnn(data, n, cfg, native_on):
    models = [create_model("cnn_s", seed=s, in_channels=1) for s in range(n)]
    with override(native_kernels=native_on):
        return train_population(models, data, cfg, [Member(seed=s) for s in range(n)], device="cpu")


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@needs_native
def test_population_training_through_native_kernels_equals_pytorch_path(small_digits):
    fast = _train_cnn(small_digits, 3, CFG, True)
    slow = _train_cnn(small_digits, 3, CFG, False)
    for hf, hs in zip(fast.history, slow.history):
        for rf, rs in zip(hf, hs):
            for key in ("train_loss", "val_loss", "test_acc"):
                assert rf[key] == pytest.approx(rs[key], rel=1e-4, abs=1e-5), key
    for sf, ss in zip(fast.state_dicts, slow.state_dicts):
        assert _max_diff(sf, ss) < 1e-4
    assert _max_diff(fast.state_dicts[0], fast.state_dicts[1]) > 1e-2  # the members really differ


@needs_native
def test_cnn_l_population_through_native_kernels_equals_pytorch_path():
    # CNN-l: 3x3 convolutions 3 -> 16 -> 32 -> 15, each followed by a 2x2 max-pool: the first layer takes the
    # weight-gradient kernel, the other two the input-gradient kernel (16 and 32 channels per model); the last
    # has 15 outputs (a partial SIMD block)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(96, 3, 28, 28, generator=gen)
    y = torch.randint(0, 10, (96,), generator=gen)
    data = SimpleNamespace(task="classification", train_x=x[:64], train_y=y[:64], val_x=x[64:80], val_y=y[64:80],
                           test_x=x[80:], test_y=y[80:])
    cfg = TrainConfig(epochs=1, optimizer="adam", lr=1e-3, batch_size=16)
    res = {}
    for on in (True, False):
        models = [create_model("cnn_l", seed=s, in_channels=3, input_size=28) for s in range(2)]
        with override(native_kernels=on):
            pop = Population(models)
            assert [m.native_pool_ok() for m in pop.net.modules() if hasattr(m, "native_pool_ok")] == [on] * 3
            res[on] = train_population(models, data, cfg, [Member(seed=s) for s in range(2)], device="cpu")
    for sf, ss in zip(res[True].state_dicts, res[False].state_dicts):
        assert _max_diff(sf, ss) < 1e-4
    for hf, hs in zip(res[True].history, res[False].history):
        assert hf[-1]["val_loss"] == pytest.approx(hs[-1]["val_loss"], rel=1e-4)


@needs_native
def test_population_with_native_kernels_equals_one_model_at_a_time(small_digits):
    res = _train_cnn(small_digits, 2, CFG, True)
    for i in range(2):
        model, hist = train_sequential(create_model("cnn_s", seed=i, in_channels=1), small_digits, CFG,
                                       Member(seed=i), device="cpu")
        assert _max_diff(res.state_dicts[i], model.state_dict()) < 1e-4
        assert res.history[i][-1]["test_acc"] == pytest.approx(hist[-1]["test_acc"], abs=1 / 40)


class _ReusesConvOutput(torch.nn.Module):
    """A model whose forward feeds a convolution's output to the pool after it *and* elsewhere: fusing the pool
    into the convolution would change what the second use sees."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.seq = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.MaxPool2d(2), torch.nn.ReLU(),
                                       torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10))
        self.other = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))

    def forward(self, x):
        z = self.seq[0](x)
        return self.seq[4](self.seq[3](self.seq[2](self.seq[1](z)))) + self.other(z)


@needs_native
def test_population_checks_the_fused_path_and_falls_back_for_a_model_that_reuses_the_conv_output():
    models = [_ReusesConvOutput(s) for s in range(2)]
    pop = Population(models).train()
    x = torch.randn(4, 2, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    out = pop(x)
    assert pop._native_ok is False and not pop.net.seq[0].native_pool_ok()
    for i, m in enumerate(models):
        torch.testing.assert_close(out[:, i], m(x[:, i]), rtol=1e-5, atol=1e-5)
    ok = Population([create_model("cnn_s", seed=s, in_channels=1) for s in range(2)]).train()
    ok(torch.randn(3, 2, 1, 28, 28))
    assert ok._native_ok is True  # the usual Sequential models pass the check


@needs_native
@pytest.mark.parametrize("kind", ["adam", "adamw"])
@pytest.mark.parametrize("eps", [1e-8, 1e-30])  # 1e-30: no sqrt floor
def test_fused_adam_step_equals_the_pytorch_whole_buffer_update(kind, eps):
    """The fused step follows PyTorch's operations and roundings; PyTorch itself rounds some elements of a
    division by a Python scalar differently (scalar vs vectorised loops), so they agree to an ulp per step."""
    from zooscape.train.optim import PopulationOptimizer

    n, p = 5, 103  # rows not a multiple of 8 long
    lr = torch.tensor([1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    wd = torch.tensor([0.0, 1e-3, 1e-2, 0.1, 0.5])

    def run(use_native: bool, rows: slice) -> tuple[torch.Tensor, ...]:
        with override(native_kernels=use_native):
            return _run(rows)

    def _run(rows: slice) -> tuple[torch.Tensor, ...]:
        params = torch.randn(n, p, generator=torch.Generator().manual_seed(1))[rows].contiguous()
        grads = torch.zeros_like(params)
        k = params.shape[0]
        opt = PopulationOptimizer([("w", params)], kind, weight_decay=wd[rows], momentum=torch.zeros(k), eps=eps)
        opt.use_flat(params, grads)
        g = torch.Generator().manual_seed(2)
        for step in range(6):
            full = torch.randn(n, p, generator=g) * 10.0 ** (-step)
            full[:, :7] = 0.0  # always-zero gradients: exp_avg_sq stays 0 (the sqrt floor's case)
            if step == 3:
                full[4, 50] = float("nan")  # a diverging member: NaN must reach its weights
            grads.copy_(full[rows])
            opt.step(lr[rows], torch.ones(k, dtype=torch.bool), True)
        return params.clone(), opt._flat[2]["exp_avg"].clone(), opt._flat[2]["exp_avg_sq"].clone()

    fast, slow = run(True, slice(None)), run(False, slice(None))
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, equal_nan=True)
    assert torch.isnan(fast[0][4, 50]) and not torch.isnan(fast[0][:4]).any()
    # a model's update does not depend on its population: each row alone gives bitwise the same numbers
    for i in range(n):
        alone = run(True, slice(i, i + 1))
        for a, b in zip(alone, fast):
            assert torch.equal(torch.nan_to_num(a[0], nan=7.0), torch.nan_to_num(b[i], nan=7.0))


@needs_native
def test_the_pthreads_build_computes_the_same(tmp_path):
    # where -fopenmp does not build, the kernels are compiled with pthreads instead: same results
    code = """
import torch
from zooscape.train import native
torch.set_num_threads(2)
assert native.available(), native.why_not()
g = torch.Generator().manual_seed(0)
x = torch.randn(6, 3 * 8, 12, 12, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
w = torch.randn(3, 6, 8, 5, 5, generator=g, requires_grad=True)
b = torch.randn(3, 6, generator=g, requires_grad=True)
out = native.ConvPool2x2.apply(x, w, b, False, True)
grads = torch.autograd.grad(out, (x, w, b), torch.randn(out.shape, generator=g))
torch.save([out.detach(), *grads], {path!r})
"""
    results = []
    for openmp in ("1", "0"):
        path = str(tmp_path / f"out{openmp}.pt")
        env = dict(os.environ, ZOOSCAPE_NATIVE_OPENMP=openmp, ZOOSCAPE_CACHE_DIR=str(tmp_path / f"cache{openmp}"))
        subprocess.run([sys.executable, "-c", code.format(path=path)], env=env, check=True, capture_output=True)
        results.append(torch.load(path, weights_only=True))
    builds = [sorted(p.name for p in (tmp_path / f"cache{o}" / "kernels").glob("*.so")) for o in ("1", "0")]
    assert len(builds[0]) == len(builds[1]) == 1 and builds[0] != builds[1]  # two builds (other flags)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_switch_turns_the_kernels_off():
    code = ("from zooscape.train import native; import torch; "
            "print(native.available(), native.why_not())")
    env = dict(os.environ, ZOOSCAPE_NATIVE_KERNELS="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("False") and "ZOOSCAPE_NATIVE_KERNELS=0" in out


def test_build_failure_falls_back_with_a_warning(tmp_path):
    code = ("import warnings; warnings.simplefilter('always'); from zooscape.train import native; "
            "print(native.available()); print(native.why_not())")
    env = dict(os.environ, CC=str(tmp_path / "no-such-compiler"), ZOOSCAPE_CACHE_DIR=str(tmp_path / "cache"),
               TMPDIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("False")
    assert "PyTorch path" in proc.stderr or "could not" in proc.stdout


@pytest.mark.parametrize("system,machine,flags,expect", [
    ("linux", "aarch64", {"fp", "asimd"}, "this machine is aarch64"),
    ("linux", "ppc64le", set(), "this machine is ppc64le"),
    ("darwin", "arm64", set(), "Linux only, not darwin"),
    ("win32", "AMD64", set(), "Linux only, not win32"),
    ("linux", "x86_64", {"sse2", "avx"}, "lacks AVX2/FMA"),
    ("linux", "x86_64", {"avx2"}, "lacks FMA"),
    ("linux", "x86_64", {"avx2", "fma"}, None),
])
def test_platform_detection_says_why_the_kernels_do_not_apply(monkeypatch, system, machine, flags, expect):
    monkeypatch.setattr(native.sys, "platform", system)
    monkeypatch.setattr(native.platform, "machine", lambda: machine)
    monkeypatch.setattr(native, "_cpu_flags", lambda: flags)
    reason = native._platform_reason()
    assert (reason is None) if expect is None else (expect in reason)
    assert native._cpu_has_avx2_fma() is (expect is None)


def test_off_x86_the_population_takes_the_pytorch_path_quietly_and_compiles_nothing(tmp_path, small_digits):
    # an aarch64 Linux machine, simulated: no compiler run (CC would leave a mark), no warning, no native call,
    # and training gives what the PyTorch path gives
    cc = tmp_path / "cc"
    cc.write_text(f'#!/bin/sh\ntouch {tmp_path / "compiler-ran"}\nexec gcc "$@"\n')
    cc.chmod(0o755)
    out = tmp_path / "state.pt"
    code = f"""
import platform, warnings
platform.machine = lambda: "aarch64"
warnings.simplefilter("error")
import torch
from types import SimpleNamespace
from zooscape.data import load_dataset
from zooscape.models import create_model
from zooscape.train import Member, TrainConfig, native, train_population
calls = []
for name in ("conv_pool_forward", "conv_pool_backward", "conv_pool_backward_full", "adam_step"):
    setattr(native, name, lambda *a, _n=name, **k: calls.append(_n))
assert not native.available() and "aarch64" in native.why_not(), native.why_not()
d = load_dataset("digits", resize=28)
data = SimpleNamespace(task=d.task, train_x=d.train_x[:128], train_y=d.train_y[:128], val_x=d.val_x[:40],
                       val_y=d.val_y[:40], test_x=d.test_x[:40], test_y=d.test_y[:40])
cfg = TrainConfig(epochs=1, optimizer="adam", lr=1e-3, batch_size=32)
res = train_population([create_model("cnn_s", seed=s, in_channels=1) for s in range(2)], data, cfg,
                       [Member(seed=s) for s in range(2)], device="cpu")
assert calls == [], calls
from zooscape.cli.doctor import _kernels
report = _kernels()  # doctor's lines: the reason, and no cache
assert "aarch64" in report["native_kernels_reason"] and report["native_kernels_cache"] is None, report
torch.save(res.state_dicts, {str(out)!r})
"""
    env = dict(os.environ, CC=str(cc), ZOOSCAPE_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "compiler-ran").exists() and not (tmp_path / "cache").exists()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(epochs=1, optimizer="adam", lr=1e-3, batch_size=32)
        want = _train_cnn(small_digits, 2, cfg, False).state_dicts  # the PyTorch path (native_kernels off)
    finally:
        torch.set_num_threads(before)
    for got, ref in zip(torch.load(out, weights_only=True), want):
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)


def _op_inputs(shared: bool, input_grad: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    g, c = 2, 8 if input_grad else 1
    x = torch.randn(3, c if shared else g * c, 10, 9, generator=gen)
    if input_grad:
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(g, 7, c, 3, 3, generator=gen, requires_grad=True)  # 7 outputs: a partial SIMD block
    b = torch.randn(g, 7, generator=gen, requires_grad=True)
    return x, w, b


@needs_native
@pytest.mark.parametrize("shared,relu,input_grad", [(False, True, False), (True, False, False), (False, True, True),
                                                    (False, False, True)])
def test_the_kernels_are_a_torch_library_custom_op_with_fake_and_autograd(shared, relu, input_grad):
    x, w, b = _op_inputs(shared, input_grad)
    # schema, fake (shape/stride) implementation, autograd registration, AOT dispatch: torch's own checks
    torch.library.opcheck(torch.ops.zooscape.conv_pool2x2.default, (x, w, b, shared, relu))
    # the op and the eager path compute bitwise the same values and gradients
    out_op = torch.ops.zooscape.conv_pool2x2.default(x, w, b, shared, relu)[0]
    out_eager = native.ConvPool2x2.apply(x, w, b, shared, relu)
    assert torch.equal(out_op, out_eager)
    params = (x, w, b) if input_grad else (w, b)
    grad = torch.randn(out_op.shape, generator=torch.Generator().manual_seed(1))
    for a, e in zip(torch.autograd.grad(out_op, params, grad), torch.autograd.grad(out_eager, params, grad)):
        assert torch.equal(a, e)


@needs_native
def test_torch_compile_and_fx_see_the_custom_op():
    from torch.fx.experimental.proxy_tensor import make_fx

    x, w, b = _op_inputs(False, True)
    graph = make_fx(lambda x, w, b: native.ConvPool2x2.apply(x, w, b, False, True))(x.detach(), w.detach(),
                                                                                    b.detach())
    targets = [n.target for n in graph.graph.nodes if n.op == "call_function"]
    assert torch.ops.zooscape.conv_pool2x2.default in targets

    def loss(x, w, b):
        return native.ConvPool2x2.apply(x, w, b, False, True).square().sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)  # fullgraph: no graph break on the kernels
    got = compiled(x, w, b)
    want = loss(x, w, b)
    assert torch.equal(got, want)
    for a, e in zip(torch.autograd.grad(got, (x, w, b)), torch.autograd.grad(want, (x, w, b))):
        assert torch.equal(a, e)
