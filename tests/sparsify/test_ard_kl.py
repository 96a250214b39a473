"""The native "kl" format of the weight sample (train/_native/ard.c, branch ardfast): the forward with inline noise
also evaluates the KL term's gradient, the backward is a pass without transcendental functions. Against the
previous native format (eps kept, the KL gradient in the backward), the PyTorch formula and float64."""

import pytest
import torch
from test_native_ard import _inputs as _native_inputs

from zooscape.sparsify import _native_ard, pop_ard
from zooscape.sparsify.counter_noise import CounterNoise
from zooscape.sparsify.pop_ard import weight_sample, weight_sample_grads
from zooscape.train._flags import override

pytestmark = pytest.mark.skipif(not _native_ard.usable(torch.zeros(1, 1)), reason="native kernels unavailable")


def _inputs(n: int, shape: tuple[int, ...], seed: int = 0):
    """test_native_ard's weights (a zero and a tiny weight, log alpha clipped at both ends) and gradient, with
    counter noise instead of its eps."""
    w, ls, _, grad = _native_inputs(n, shape, seed)
    keys = torch.randint(0, 1 << 32, (n, 2), generator=torch.Generator().manual_seed(seed + 100))
    return w, ls, CounterNoise(keys, 3), grad


def _grads(w, ls, noise, grad, scale, kl: bool):
    out, saved = weight_sample(w, ls, noise, scale if kl else None)
    assert saved[0] == ("kl" if kl else "native")
    return (out, *weight_sample_grads(saved, grad, scale))


@pytest.mark.parametrize("scale", [0.0, 0.37, 1e-4])
@pytest.mark.parametrize("shape", [(5, 13), (6, 8, 5, 5), (4,), (32, 64)])
def test_kl_format_equals_previous_format_pytorch_and_float64(shape, scale):
    """The sample is bitwise the previous native format's; the gradients agree with it and with the PyTorch
    formula (kernels off) to float32 rounding (the KL term is summed in another order), and against float64 the
    error is no larger than float32 PyTorch's (plus an ulp-sized slack). Row lengths not a multiple of 8 or 32
    test the tails."""
    w, ls, noise, grad = _inputs(4, shape)
    got = _grads(w, ls, noise, grad, scale, True)
    prev = _grads(w, ls, noise, grad, scale, False)
    assert torch.equal(got[0], prev[0])
    eps = noise.tensor(shape)
    with override(native_kernels=False):
        out32, saved = weight_sample(w, ls, eps)
        ref32 = (out32, *weight_sample_grads(saved, grad, scale))
        out64, saved = weight_sample(w.double(), ls.double(), eps.double())
        ref64 = (out64, *weight_sample_grads(saved, grad.double(), scale))
    for a, b, c, d in zip(got, prev, ref32, ref64):
        top = d.abs().max()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(top))  # (cancellation in d/dw: see below)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5 * float(top))
        assert (a.double() - d).abs().max() <= (c.double() - d).abs().max() + 4e-7 * top


def test_kl_format_writes_into_given_gradients_and_is_independent_of_the_population():
    """Gradients written into strided views of a flat buffer (the trainer's layout, from strided inputs) are
    bitwise those returned as new tensors; a model alone computes bitwise what it computes in a population."""
    w, ls, noise, grad = _inputs(5, (7, 9), seed=1)
    together = _grads(w, ls, noise, grad, 0.2, True)
    flat = torch.zeros(5, 400)
    wv, lsv = flat[:, 3:66].view(5, 7, 9), flat[:, 70:133].view(5, 7, 9)
    gwv, glsv = flat[:, 140:203].view(5, 7, 9), flat[:, 210:273].view(5, 7, 9)
    wv.copy_(w)
    lsv.copy_(ls)
    out, saved = weight_sample(wv, lsv, noise, 0.2)
    gw, gls = weight_sample_grads(saved, grad, 0.2, (gwv, glsv))
    assert gw is gwv and gls is glsv
    for a, b in zip((out, gwv, glsv), together):
        assert torch.equal(a, b)
    for i in range(5):
        one = _grads(w[i:i + 1], ls[i:i + 1], CounterNoise(noise.keys[i:i + 1], noise.step), grad[i:i + 1], 0.2,
                     True)
        for a, b in zip(one, together):
            assert torch.equal(a[0], b[i])


def test_kl_format_gradient_buffers_that_do_not_fit_are_not_written():
    """A gradient buffer of another shape or dtype is left alone and new tensors are returned."""
    w, ls, noise, grad = _inputs(2, (3, 8))
    out, saved = weight_sample(w, ls, noise, 0.1)
    wrong = (torch.zeros(2, 8, 3), torch.zeros(2, 3, 8, dtype=torch.float64))
    gw, gls = weight_sample_grads(saved, grad, 0.1, wrong)
    assert gw is not wrong[0] and gls is not wrong[1]
    assert not wrong[0].any() and not wrong[1].any()
    ref = _grads(w, ls, noise, grad, 0.1, True)
    assert torch.equal(gw, ref[1]) and torch.equal(gls, ref[2])


def test_kl_format_propagates_nan_and_checks_the_scale():
    w, ls, noise, grad = _inputs(2, (9,))
    w[0, 2] = float("nan")
    ls[1, 5] = float("nan")
    out, gw, gls = _grads(w, ls, noise, grad, 0.1, True)
    assert out[0, 2].isnan() and out[1, 5].isnan() and gls[1, 5].isnan() and gw[1, 5].isnan()
    assert torch.isfinite(out[0, :2]).all() and torch.isfinite(gw[0, :2]).all() and torch.isfinite(gls[0, :2]).all()
    _, saved = weight_sample(w, ls, noise, 0.1)
    with pytest.raises(ValueError, match="KL scale"):
        weight_sample_grads(saved, grad, 0.2)


def test_kl_format_switch():
    """``KL_FORWARD = False`` (or no scale at the forward) keeps the previous native format."""
    w, ls, noise, grad = _inputs(2, (3, 8))
    pop_ard.KL_FORWARD = False
    try:
        _, saved = weight_sample(w, ls, noise, 0.1)
    finally:
        pop_ard.KL_FORWARD = True
    assert saved[0] == "native"


def _train(pass_on: bool, epochs: int = 2):
    from types import SimpleNamespace

    from zooscape.models import create_model
    from zooscape.sparsify import train_twins
    from zooscape.train import TrainConfig

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 64, generator=g), torch.randint(0, 10, (300,), generator=g)
    data = SimpleNamespace(task="classification", train_x=x[:200], train_y=y[:200], val_x=x[200:250],
                           val_y=y[200:250], test_x=x[250:], test_y=y[250:])
    sources = [create_model("mlp", input_size=64, depth=2, width=16, seed=s) for s in range(3)]
    cfg = TrainConfig(epochs=epochs, batch_size=32, optimizer="adam", lr=3e-3)
    old = pop_ard.MANUAL_PASS
    pop_ard.MANUAL_PASS = pass_on
    try:
        with override(manual_mlp=True):
            return train_twins(sources, data, cfg, estimator="weight", kl_scale=3.0, device="cpu")
    finally:
        pop_ard.MANUAL_PASS = old


def test_manual_step_pass_equals_the_weight_sample_path(monkeypatch):
    """The manual MLP step through the checked-once native pass (into its buffers and the flat gradient buffer)
    trains bitwise as through weight_sample each step; the pass is made again when the keys change (each epoch)."""
    made = []
    real = _native_ard.KLPass.make.__func__

    def counting(cls, *a, **kw):
        made.append(1)
        return real(cls, *a, **kw)

    monkeypatch.setattr(_native_ard.KLPass, "make", classmethod(counting))
    a = _train(True)
    assert len(made) >= 3 * 2  # three layers, two epochs (new keys each epoch), not once per step
    assert len(made) <= 3 * 2 * 2
    made.clear()
    b = _train(False)
    assert not made
    for ha, hb in zip(a.history, b.history):
        for ra, rb in zip(ha, hb):
            assert {k: v for k, v in ra.items() if k != "epoch_time_s"} == {
                k: v for k, v in rb.items() if k != "epoch_time_s"}
    for sa, sb in zip(a.state_dicts, b.state_dicts):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
