"""The native "weight" estimator kernel (train/_native/ard.c) against the PyTorch formula and a float64 reference."""

import pytest
import torch

from zooscape.sparsify import _native_ard, pop_ard
from zooscape.sparsify.pop_ard import _WeightSample

pytestmark = pytest.mark.skipif(not _native_ard.usable(torch.zeros(1, 1)), reason="native kernels unavailable")


def _run(w, ls, eps, grad, scale, native: bool, dtype=torch.float32):
    """Value and gradients of _WeightSample (native or the PyTorch formula)."""
    old = pop_ard._native_ard.usable
    if not native:
        pop_ard._native_ard.usable = lambda *a: False
    try:
        w = w.to(dtype).clone().requires_grad_()
        ls = ls.to(dtype).clone().requires_grad_()
        out = _WeightSample.apply(w, ls, eps.to(dtype), scale)
        out.backward(grad.to(dtype))
        return out.detach().double(), w.grad.double(), ls.grad.double()
    finally:
        pop_ard._native_ard.usable = old


def _inputs(n: int, shape: tuple[int, ...], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, *shape, generator=g) * 0.3
    w.view(n, -1)[0, :4] = torch.tensor([0.0, 1e-6, -2.0, 3.0])  # zero weight, tiny weight
    ls = torch.empty(n, *shape).uniform_(-14.0, 4.0, generator=g)
    ls.view(n, -1)[-1, :3] = torch.tensor([40.0, -40.0, 0.0])  # clipped at both ends
    return w, ls, torch.randn(n, *shape, generator=g), torch.randn(n, *shape, generator=g)


@pytest.mark.parametrize("scale", [0.0, 0.37])
@pytest.mark.parametrize("shape", [(5, 13), (6, 8, 5, 5), (4,)])
def test_native_weight_sample_matches_pytorch_and_float64(shape, scale):
    """Value, d/dw and d/dlog_sigma2 agree with the PyTorch formula; against a float64 evaluation the native error
    is no larger than float32 PyTorch's (plus an ulp-sized slack). Row lengths not a multiple of 8 test the tail."""
    w, ls, eps, grad = _inputs(4, shape)
    nat = _run(w, ls, eps, grad, scale, True)
    ref32 = _run(w, ls, eps, grad, scale, False)
    ref64 = _run(w, ls, eps, grad, scale, False, torch.float64)
    for a, b, c in zip(nat, ref32, ref64):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        top = c.abs().max()
        assert (a - c).abs().max() <= (b - c).abs().max() + 4e-7 * top


def test_native_weight_sample_is_independent_of_the_population():
    """A model's sample and gradients are bitwise the same alone, in a population, and as a strided view into a
    flat buffer (the trainer's layout): a twin computes the same in any population."""
    w, ls, eps, grad = _inputs(5, (7, 9), seed=1)
    alone = [_run(w[i:i + 1], ls[i:i + 1], eps[i:i + 1], grad[i:i + 1], 0.2, True) for i in range(5)]
    together = _run(w, ls, eps, grad, 0.2, True)
    flat = torch.zeros(5, 200)
    wv = flat[:, 3:66].view(5, 7, 9)
    wv.copy_(w)
    lsv = flat[:, 70:133].view(5, 7, 9)
    lsv.copy_(ls)
    out, la_coded = _native_ard.sample_forward(wv, lsv, eps)
    strided = (out, *_native_ard.sample_backward(grad, wv, la_coded, eps, 0.2))
    for i in range(5):
        for a, b, c in zip(alone[i], together, strided):
            assert torch.equal(a[0], b[i]) and torch.equal(b[i], c[i].double())


def test_native_weight_sample_propagates_nan():
    w, ls, eps, grad = _inputs(2, (9,))
    w[0, 2] = float("nan")
    ls[1, 5] = float("nan")
    out, gw, gls = _run(w, ls, eps, grad, 0.1, True)
    assert out[0, 2].isnan() and out[1, 5].isnan() and gls[1, 5].isnan()
    assert torch.isfinite(out[0, :2]).all() and torch.isfinite(gw[0, :2]).all()

