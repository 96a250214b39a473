"""Counter-based weight noise (sparsify/counter_noise.py, train/_native/ard.c): Philox-4x32-10 known answers, the
native generator against its PyTorch twin, the noise's statistics, and a twin's noise independent of its
population, layout and path."""

import math

import pytest
import torch
from scipy import stats

from zooscape.sparsify import ARDControl, ARDLinear, _native_ard, counter_noise, pop_ard
from zooscape.sparsify.counter_noise import CounterNoise, CounterStream, counter_normal, philox4x32
from zooscape.sparsify.pop_ard import PopARDLinear, weight_sample, weight_sample_grads
from zooscape.train._flags import override

native = pytest.mark.skipif(not _native_ard.usable(torch.zeros(1, 1)), reason="native kernels unavailable")

# Random123 tests/kat_vectors, "philox4x32 10": counter[4], key[2] -> result[4]
KAT = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
       ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
       ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]


def _t(v):
    return torch.tensor(v, dtype=torch.int64)


@pytest.mark.parametrize("impl", ["wrap", "split", "public"])
def test_philox_matches_random123_known_answers(impl):
    fn = {"wrap": counter_noise._philox_wrap, "split": counter_noise._philox_split,
          "public": lambda *a, rounds: philox4x32(*a, rounds=rounds)}[impl]
    for ctr, key, want in KAT:
        got = fn(*map(_t, ctr), *map(_t, key), rounds=10)
        assert [int(x) for x in got] == list(want)
    # vectorised over counters and keys: each lane is the scalar result
    c0 = torch.tensor([0, 0xFFFFFFFF, 0x243F6A88])
    k = torch.tensor([[0, 0], [0xFFFFFFFF, 0xFFFFFFFF], [0xA4093822, 0x299F31D0]])
    rest = [torch.tensor([c[i] for c, _, _ in KAT]) for i in (1, 2, 3)]
    got = fn(c0, *rest, k[:, 0], k[:, 1], rounds=10)
    assert torch.equal(torch.stack(got, 1), torch.tensor([w for _, _, w in KAT]))


def _keys(n, seed=0):
    return torch.randint(0, 1 << 32, (n, 2), generator=torch.Generator().manual_seed(seed))


@native
@pytest.mark.parametrize("numel", [1, 7, 8, 31, 33, 100, 1000])
def test_native_noise_equals_pytorch_elementwise(numel):
    """The native generator and the PyTorch one (kernels off) give the same numbers to float32 rounding; every
    element, a row's tail included (lengths not a multiple of 8 or 32)."""
    keys = _keys(5)
    for step, tag in [(0, 0), (3, 0), (2 ** 32 - 1, 1)]:
        nat = counter_normal(keys, step, numel, tag=tag)
        with override(native_kernels=False):
            ref = counter_normal(keys, step, numel, tag=tag)
        assert nat.shape == ref.shape == (5, numel)
        torch.testing.assert_close(nat, ref, rtol=2e-6, atol=2e-6)
    # a prefix of a longer row is the shorter row (no dependence on the row length)
    torch.testing.assert_close(counter_normal(keys, 1, 1000)[:, :numel], counter_normal(keys, 1, numel),
                               rtol=0, atol=0)


def test_noise_statistics():
    """~1e6 draws: mean 0, variance 1, skewness 0, kurtosis 3, a Kolmogorov-Smirnov test against N(0, 1), and no
    correlation between neighbouring counters (elements 1, 8 and 32 apart), steps, tags or neighbouring keys."""
    keys = torch.tensor([[1, 2], [1, 3], [2, 2], [123456789, 987654321]])
    z = counter_normal(keys, 0, 1 << 18).double()  # 4 x 262144
    flat = z.flatten()
    n = flat.numel()
    assert abs(float(flat.mean())) < 5 / math.sqrt(n)
    assert abs(float(flat.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((flat ** 3).mean())) < 5 * math.sqrt(15 / n)
    assert abs(float((flat ** 4).mean()) - 3) < 5 * math.sqrt(96 / n)
    assert stats.kstest(flat.numpy(), "norm").pvalue > 1e-3

    def corr(a, b):
        return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])

    m = z.shape[1]
    bound = 5 / math.sqrt(m)
    for lag in (1, 8, 32):
        assert abs(corr(z[:, :-lag], z[:, lag:])) < 5 / math.sqrt(z[:, lag:].numel())
    assert abs(corr(z[0], z[1])) < bound  # keys differing in one bit of one word
    assert abs(corr(z[0], z[2])) < bound
    assert abs(corr(z[0], counter_normal(keys[:1], 1, m).double())) < bound  # next step
    assert abs(corr(z[0], counter_normal(keys[:1], 0, m, tag=1).double())) < bound  # other tag
    assert abs(corr(z[0] ** 2, z[1] ** 2)) < bound  # not only uncorrelated: squares too


@native
def test_inline_noise_sample_equals_materialised_noise():
    """The sample with inline noise is bitwise the sample of the materialised noise, both backward variants
    (eps kept, eps generated again) are bitwise the tensor path's, and a strided view into a flat buffer (the
    trainer's layout) gives the same numbers."""
    g = torch.Generator().manual_seed(0)
    n, shape = 4, (5, 13)
    w = torch.randn(n, *shape, generator=g) * 0.3
    ls = torch.empty(n, *shape).uniform_(-14.0, 4.0, generator=g)
    grad = torch.randn(n, *shape, generator=g)
    noise = CounterNoise(_keys(n), 7)
    eps = noise.tensor(shape)
    ref_out, ref_saved = weight_sample(w, ls, eps)
    ref = weight_sample_grads(ref_saved, grad, 0.3)
    flat = torch.zeros(n, 200)
    wv, lsv = flat[:, 1:66].view(n, *shape), flat[:, 100:165].view(n, *shape)
    wv.copy_(w)
    lsv.copy_(ls)
    for keep in (True, False):
        pop_ard.KEEP_EPS = keep
        try:
            for a, b in ((w, ls), (wv, lsv)):
                out, saved = weight_sample(a, b, noise)
                assert saved[0] == ("native" if keep else "rng")
                assert torch.equal(out, ref_out)
                for x, y in zip(weight_sample_grads(saved, grad, 0.3), ref):
                    assert torch.equal(x, y)
        finally:
            pop_ard.KEEP_EPS = True


@native
def test_inline_noise_sample_equals_pytorch_fallback():
    """Kernels off (the PyTorch generator and formula): the same sample and gradients to float32 rounding."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 4, 19, generator=g) * 0.3
    ls = torch.empty(3, 4, 19).uniform_(-10.0, 2.0, generator=g)
    grad = torch.randn(3, 4, 19, generator=g)
    noise = CounterNoise(_keys(3, 1), 2)
    out, saved = weight_sample(w, ls, noise)
    got = (out, *weight_sample_grads(saved, grad, 0.1))
    with override(native_kernels=False):
        out, saved = weight_sample(w, ls, noise)
        assert saved[0] == "torch"
        ref = (out, *weight_sample_grads(saved, grad, 0.1))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_twin_noise_does_not_depend_on_population_or_path():
    """A model's weight noise is a function of its own generator and the step: the same alone, at any place in a
    population of any size, as a single layer's stream, with the kernels on or off (the single ARD layers' samples
    are compared in test_ard.py); a new stream (new generators, as
    every epoch) starts at step 0 with new keys, and equal generators (a resumed run) give equal noise."""
    control = ARDControl(estimator="weight")
    singles = [ARDLinear(9, 5, control=control) for _ in range(3)]
    pop = PopARDLinear(singles).train()
    pop_one = PopARDLinear(singles[1:2]).train()

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    pop.noise.set_generators(gens([10, 11, 12]))
    pop_one.noise.set_generators(gens([11]))
    steps = [(pop._weight_noise().tensor((5, 9)), pop_one._weight_noise().tensor((5, 9))) for _ in range(3)]
    for big, one in steps:
        assert torch.equal(big[1], one[0])
    stream = CounterStream([torch.Generator().manual_seed(11)], ("a single layer's",))  # as ARDLinear draws it
    for big, _ in steps:
        mine = stream.next().tensor((5, 9))[0]
        assert torch.equal(big[1], mine)
        with override(native_kernels=False):
            torch.testing.assert_close(CounterNoise(stream.keys, stream.step - 1).tensor((5, 9))[0], mine,
                                       rtol=2e-6, atol=2e-6)
    assert not torch.equal(steps[0][0], steps[1][0])
    pop.noise.set_generators(gens([10, 11, 12]))  # the next epoch's generators (equal seeds: a resumed epoch)
    again = pop._weight_noise()
    assert again.step == 0 and torch.equal(again.tensor((5, 9)), steps[0][0])


def test_pytorch_generator_blocks_of_steps_equal_single_steps():
    """Kernels off, a stream's noise is made a block of steps at a time (one set of tensor operations per block):
    every step, across block boundaries, equals that step made alone (and the native generator's numbers)."""
    shape = (3, 700)  # 2100 weights per model: blocks of 31 steps
    assert counter_noise._block_steps(2100) == 31
    stream = CounterStream([torch.Generator().manual_seed(s) for s in (4, 5)], ())
    with override(native_kernels=False):
        got = [stream.next().tensor(shape) for _ in range(33)]
        alone = [counter_normal(stream.keys, s, 2100).reshape(2, *shape) for s in (0, 30, 31, 32)]
    for s, ref in zip((0, 30, 31, 32), alone):
        assert torch.equal(got[s], ref)
        torch.testing.assert_close(got[s], counter_normal(stream.keys, s, 2100).reshape(2, *shape),
                                   rtol=2e-6, atol=2e-6)


@native
@pytest.mark.parametrize("layout", ["channels_last", "channel", "stacked", "nchw"])
def test_local_sample_inline_equals_materialised_noise(layout):
    """The "local" estimator's native sample with inline noise (and its var gradient) equals the materialised noise
    through sample_preactivation, kernels on or off, in every layout; model n's part is the same alone (N = 1)."""
    from zooscape.sparsify.ard import sample_preactivation
    from zooscape.sparsify.counter_noise import TAG_LOCAL, local_noise

    n, g = 3, torch.Generator().manual_seed(2)
    shape, dim = {"channels_last": ((4, n * 6, 5, 7), 1), "nchw": ((4, n * 6, 5, 7), 1),
                  "channel": ((5, n * 11), 1), "stacked": ((n * 5, 11), 0)}[layout]
    mu = torch.randn(shape, generator=g)
    var = torch.rand(shape, generator=g)
    if layout == "channels_last":
        mu, var = (t.contiguous(memory_format=torch.channels_last) for t in (mu, var))
    keys = _keys(n, 3)
    noise = CounterNoise(keys, 5, TAG_LOCAL)
    lay = _native_ard.local_layout(mu, n, dim)
    assert (lay is None) == (layout == "nchw")
    grad = torch.randn(shape, generator=g)

    def run(fn):
        m, v = mu.clone().requires_grad_(), var.clone().requires_grad_()
        out = fn(m, v)
        out.backward(grad)
        return out.detach(), m.grad, v.grad

    ref = run(lambda m, v: sample_preactivation(m, v, local_noise(noise, shape, dim, m)))
    with override(native_kernels=False):
        off = run(lambda m, v: sample_preactivation(m, v, local_noise(noise, shape, dim, m)))
    for a, b in zip(ref, off):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if lay is None:
        return
    got = run(lambda m, v: pop_ard._LocalSample.apply(m, v, noise, lay, {}))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    eps, _ = _native_ard.local_sample(mu, None, keys, 5, TAG_LOCAL, lay)
    torch.testing.assert_close(eps, local_noise(noise, shape, dim, mu), rtol=0, atol=0)
    # model 1 alone
    one = [t.reshape(*t.shape[:dim], n, -1, *t.shape[dim + 1:]).select(dim, 1) for t in (mu, var)]
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    one = [t.contiguous(memory_format=fmt) for t in one]
    lay1 = _native_ard.local_layout(one[0], 1, dim)
    alone, _ = _native_ard.local_sample(one[0], one[1], keys[1:2], 5, TAG_LOCAL, lay1)
    part = got[0].reshape(*shape[:dim], n, -1, *shape[dim + 1:]).select(dim, 1)
    assert torch.equal(alone, part)


@native
def test_local_sample_buffer_is_reused_only_when_free():
    """The backward's map buffer is reused once its pass has been differentiated, never while a graph still holds
    it: two passes before any backward, and a graph differentiated again with retain_graph after a later pass,
    give the gradients of independent passes."""
    from zooscape.sparsify.counter_noise import TAG_LOCAL

    n, shape = 2, (3, 2 * 8, 4, 4)
    g = torch.Generator().manual_seed(5)
    mu = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last)
    var = torch.rand(shape, generator=g).contiguous(memory_format=torch.channels_last)
    lay = _native_ard.local_layout(mu, n, 1)
    keys = _keys(n, 4)
    pool: dict = {}

    def fwd(step):
        v = var.clone().requires_grad_()
        return v, pop_ard._LocalSample.apply(mu, v, CounterNoise(keys, step, TAG_LOCAL), lay, pool)

    def ref_grad(step, grad):
        v = var.clone().requires_grad_()
        pop_ard._LocalSample.apply(mu, v, CounterNoise(keys, step, TAG_LOCAL), lay, {}).backward(grad)
        return v.grad

    grad = torch.randn(shape, generator=g)
    v0, o0 = fwd(0)
    v1, o1 = fwd(1)  # o0's graph still holds the buffer: a new one
    assert pool["h"].data_ptr() != 0
    o0.backward(grad, retain_graph=True)
    v2, o2 = fwd(2)  # pass 1 not differentiated yet: a new buffer
    o1.backward(grad)
    o2.backward(grad)
    v0.grad = None
    o0.backward(grad)  # again, after passes 1 and 2
    for v, step in ((v0, 0), (v1, 1), (v2, 2)):
        assert torch.equal(v.grad, ref_grad(step, grad))
    used = pool["h"].data_ptr()
    v3, o3 = fwd(3)  # pass 2 was differentiated (no retain_graph): its buffer is taken again
    assert pool["h"].data_ptr() == used
    o3.backward(grad, retain_graph=True)
    v4, o4 = fwd(4)  # pass 3's graph was retained: its buffer is not taken
    assert pool["h"].data_ptr() != used
    o4.backward(grad)
    v3.grad = None
    o3.backward(grad)
    assert torch.equal(v3.grad, ref_grad(3, grad)) and torch.equal(v4.grad, ref_grad(4, grad))


@native
@pytest.mark.parametrize("estimator", ["weight", "local"])
def test_twins_train_the_same_with_kernels_off(estimator):
    """Twins trained with the native kernels (noise inline) and with them off (the PyTorch generator and formulas)
    follow the same trajectory to float32 rounding: same noise, same updates."""
    from zooscape.data import load_dataset
    from zooscape.models import create_model
    from zooscape.sparsify import train_twins
    from zooscape.train import Member, TrainConfig

    ds = load_dataset("digits", seed=0)
    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="adam", lr=1e-2)
    srcs = [create_model("mlp", input_size=64, depth=1, width=16, seed=i) for i in range(2)]
    members = [Member(seed=0), Member(seed=1)]
    on = train_twins(srcs, ds, cfg, members, kl_scale=50.0, estimator=estimator)
    with override(native_kernels=False):
        off = train_twins(srcs, ds, cfg, members, kl_scale=50.0, estimator=estimator)
    for a, b in zip(on.state_dicts, off.state_dicts):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
    assert on.history[0][-1]["test_acc"] == pytest.approx(off.history[0][-1]["test_acc"], abs=0.02)
