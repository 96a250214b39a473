"""apply_permutation keeps the function of every model family; Permutation algebra."""

from __future__ import annotations

import copy

import pytest
import torch
from align_testlib import MLP, VGG, Exotic, ResNet, SeqNet, UpNet, randomize_bn, seeded
from torch import nn

from zooscape.align import Permutation, apply_permutation, permutation_spec, permute_state_dict
from zooscape.models import create_model

X_IMG = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
X_VEC = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))

FAMILIES = {
    "mlp": (lambda: MLP((16, 16, 16)), X_VEC),
    "mlp_ln": (lambda: MLP((16, 16), norm="ln"), X_VEC),
    "mlp_bn": (lambda: MLP((16, 16), norm="bn"), X_VEC),
    "cnn_bn": (lambda: VGG(4, "bn", dropout=0.0), X_IMG),
    "vgg_ln": (lambda: VGG(4, "ln", dropout=0.0), X_IMG),
    "vgg_gn": (lambda: VGG(4, "gn", dropout=0.0), X_IMG),
    "vgg_plain": (lambda: VGG(4, None, dropout=0.0), X_IMG),
    "resnet20": (lambda: ResNet(3, 4), X_IMG),
    "resnet8_gn": (lambda: ResNet(1, 4, norm="gn"), X_IMG),
    "exotic": (lambda: Exotic(6), X_IMG),
    "seq_tokens": (lambda: SeqNet(), torch.randint(0, 11, (8, 7), generator=torch.Generator().manual_seed(0))),
    "convtranspose": (lambda: UpNet(), X_IMG),
    "zoo_mlp_bn": (lambda: create_model("mlp", input_size=64, depth=3, width=16, norm="bn"), X_VEC),
    "zoo_cnn_s": (lambda: create_model("cnn_s", input_size=28), torch.randn(4, 1, 28, 28)),
    "zoo_vgg11_bn": (lambda: create_model("vgg11_bn", input_size=8, width=0.125), X_IMG),
    "zoo_vgg11_ln": (lambda: create_model("vgg11_ln", input_size=8, width=0.125), X_IMG),
    "zoo_resnet20": (lambda: create_model("resnet20", input_size=8, width=4), X_IMG),
    "zoo_resnet20_ln": (lambda: create_model("resnet20", input_size=8, width=4, norm="ln"), X_IMG),
}


def _outputs(model: nn.Module, x: torch.Tensor, train: bool) -> torch.Tensor:
    model = copy.deepcopy(model).train(train)  # train mode would update the BN statistics
    with torch.no_grad():
        return model(x).double()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_random_permutation_keeps_function(family):
    make, x = FAMILIES[family]
    model = randomize_bn(seeded(make, 1), seed=2)
    spec = permutation_spec(model, x[:2])
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        perm = Permutation.random(spec, gen)
        permuted = apply_permutation(model, perm)
        assert type(permuted) is type(model)
        moved = [k for k in spec.axes if not torch.equal(model.state_dict()[k], permuted.state_dict()[k])]
        assert moved, "a random permutation must move some tensors"
        for train in (False, True):  # eval: running stats; train: batch statistics
            ref, out = _outputs(model, x, train), _outputs(permuted, x, train)
            scale = ref.abs().max().clamp_min(1e-3)
            assert (ref - out).abs().max() / scale < 1e-5, (family, train)
    # and the inverse brings every tensor back exactly
    restored = apply_permutation(permuted, perm.inverse())
    for k, v in model.state_dict().items():
        assert torch.equal(v, restored.state_dict()[k]), k


def test_batchnorm_buffers_are_permuted_and_needed():
    model = randomize_bn(seeded(lambda: VGG(4, "bn", dropout=0.0), 0), seed=1).eval()
    spec = permutation_spec(model, X_IMG[:2])
    perm = Permutation.random(spec, torch.Generator().manual_seed(0))
    permuted = apply_permutation(model, perm)
    p = perm["features.0"]
    assert torch.equal(permuted.features[1].running_mean, model.features[1].running_mean[p])
    assert torch.equal(permuted.features[1].running_var, model.features[1].running_var[p])
    # negative control: the buggy reference behaviour (buffers left alone) changes the function
    buggy = apply_permutation(model, perm)
    for i in (1, 4, 8, 11):
        buggy.features[i].running_mean.copy_(model.features[i].running_mean)
        buggy.features[i].running_var.copy_(model.features[i].running_var)
    with torch.no_grad():
        assert (buggy(X_IMG) - model(X_IMG)).abs().max() > 1e-2
        assert (permuted(X_IMG) - model(X_IMG)).abs().max() < 1e-5


def test_permutation_algebra_and_state_dict_form():
    model = seeded(lambda: MLP((5, 7)), 0)
    spec = permutation_spec(model, X_VEC[:2])
    gen = torch.Generator().manual_seed(0)
    p, q = Permutation.random(spec, gen), Permutation.random(spec, gen)
    assert p.then(p.inverse()).is_identity()
    twice = apply_permutation(apply_permutation(model, p), q)
    once = apply_permutation(model, p.then(q))
    for k, v in twice.state_dict().items():
        assert torch.equal(v, once.state_dict()[k])
    # mapping form and plain dict with explicit spec agree
    plain = {g: t.tolist() for g, t in p.items()}
    sd = permute_state_dict(model.state_dict(), plain, spec)
    assert torch.equal(sd["net.0.weight"], model.net[0].weight[p["net.0"]])
    assert torch.equal(sd["net.2.weight"], model.net[2].weight[p["net.2"]][:, p["net.0"]])
    assert Permutation(spec, plain) == p
    assert "units moved" in repr(p)


def test_permutation_validation_errors():
    model = MLP((4,))
    spec = permutation_spec(model, X_VEC[:2])
    with pytest.raises(ValueError, match="not a permutation"):
        Permutation(spec, {"net.0": [0, 0, 1, 2]})
    with pytest.raises(KeyError, match="nope"):
        Permutation(spec, {"nope": [0]})
    with pytest.raises(ValueError, match="spec is required"):
        apply_permutation(model, {"net.0": torch.arange(4)})
    with pytest.raises(ValueError, match="spec expects"):
        apply_permutation(MLP((5,)), Permutation.identity(spec))


def test_permuted_model_shares_no_storage_with_the_input():
    model = seeded(lambda: VGG(4, "bn"), 0)
    spec = permutation_spec(model, X_IMG[:2])
    permuted = apply_permutation(model, Permutation.random(spec, torch.Generator().manual_seed(0)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for t in list(permuted.parameters()) + list(permuted.buffers()):
            t.add_(1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in permuted.parameters())
    assert isinstance(permuted.classifier[4].bias, nn.Parameter)
