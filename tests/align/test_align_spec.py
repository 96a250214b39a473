"""permutation_spec: groups derived from the torch.fx graph, flatten blocks, residual streams, reports."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from align_testlib import MLP, VGG, Exotic, ResNet, SeqNet, UpNet, seeded
from torch import nn

from zooscape.align import AxisPerm, PermutationSpec, permutation_spec
from zooscape.align.spec import expand_index
from zooscape.models import create_model

X_IMG = torch.randn(3, 1, 8, 8)


def _every_key_accounted(spec: PermutationSpec, model: nn.Module) -> None:
    keys = set(model.state_dict())
    assert set(spec.shapes) == keys
    assert set(spec.axes) | set(spec.unpermuted) == keys
    assert not set(spec.axes) & set(spec.unpermuted)
    assert all(reason for reason in spec.unpermuted.values())


def test_mlp_spec_one_group_per_hidden_layer():
    m = MLP((16, 12))
    spec = permutation_spec(m, torch.randn(2, 64))
    assert spec.group_sizes == {"net.0": 16, "net.2": 12}
    assert spec.axes["net.0.weight"] == (AxisPerm("net.0"), None)
    assert spec.axes["net.2.weight"] == (AxisPerm("net.2"), AxisPerm("net.0"))
    assert spec.axes["net.4.weight"] == (None, AxisPerm("net.2"))
    assert "reaches the model output" in spec.unpermuted["net.4.bias"]
    assert spec.frozen_groups == {"net.4": "reaches the model output"}
    _every_key_accounted(spec, m)


def test_conv_flatten_linear_permutes_blocks_of_spatial_features():
    m = VGG(4, "bn")
    spec = permutation_spec(m, X_IMG)
    # features.10 output is [B, 8, 2, 2] -> flatten -> Linear(32, 32): blocks of 4 input features
    assert spec.axes["classifier.1.weight"] == (AxisPerm("classifier.1"), AxisPerm("features.10", inner=4))
    for buf in ("running_mean", "running_var", "weight", "bias"):
        assert spec.axes[f"features.1.{buf}"] == (AxisPerm("features.0"),)
    assert spec.unpermuted["features.1.num_batches_tracked"].startswith("scalar")
    _every_key_accounted(spec, m)


@pytest.mark.parametrize("norm", ["ln", "gn", None])
def test_vgg_norm_variants_have_same_groups(norm):
    spec_bn = permutation_spec(VGG(4, "bn"), X_IMG)
    spec = permutation_spec(VGG(4, norm), X_IMG)
    assert spec.group_sizes == spec_bn.group_sizes
    if norm == "ln":  # LayerNorm over (C, H, W): weight [C, H, W] permuted along axis 0
        assert spec.axes["features.1.weight"] == (AxisPerm("features.0"), None, None)


def test_resnet_residual_stream_is_one_group_per_stage():
    m = ResNet(blocks=3, width=4)  # ResNet20
    spec = permutation_spec(m, X_IMG)
    # 3 streams + one internal group per block (9)
    assert len(spec.group_sizes) == 12
    stream1 = spec.axes["conv1.weight"][0].group
    for b in range(3):  # every block of stage 1 writes into the stem's stream
        assert spec.axes[f"layer1.{b}.conv2.weight"][0].group == stream1
        assert spec.axes[f"layer1.{b}.bn2.running_mean"][0].group == stream1
        assert spec.axes[f"layer1.{b}.conv1.weight"][1].group == stream1
    stream2 = spec.axes["layer2.0.shortcut.0.weight"][0].group
    assert spec.axes["layer2.0.conv2.weight"][0].group == stream2
    assert spec.axes["layer2.2.conv2.weight"][0].group == stream2
    assert stream2 != stream1
    assert spec.axes["fc.weight"] == (None, AxisPerm(spec.axes["layer3.0.conv2.weight"][0].group))
    _every_key_accounted(spec, m)


def test_unsupported_ops_freeze_groups_with_reasons():
    m = Exotic(c=6)
    spec = permutation_spec(m, X_IMG)
    # the depthwise conv (multiplier 2) and the learned per-channel scale follow conv's group in blocks of 2
    assert spec.group_sizes == {"conv": 6}
    assert spec.axes["dw.weight"][0] == AxisPerm("conv", inner=2)
    assert spec.axes["scale"] == (None, AxisPerm("conv", inner=2), None, None)
    assert "GroupNorm with 2 groups" in spec.frozen_groups["conv_b"]
    assert "cat" in spec.frozen_groups["conv_c"]
    assert "GroupNorm with 2 groups" in spec.unpermuted["gn.weight"]
    assert "reaches the model output" in spec.unpermuted["fc.weight"]
    _every_key_accounted(spec, m)
    assert "conv_b" in spec.report() and "unpermuted tensors" in spec.report()


def test_functional_view_and_unsupported_module():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.rnn = nn.GRU(4, 5, batch_first=True)
            self.fc = nn.Linear(4 * 64, 10)

        def forward(self, x):
            h = F.relu(self.conv(x))
            return self.fc(h.view(h.size(0), -1))

    m = Net()
    spec = permutation_spec(m, X_IMG)
    assert spec.axes["fc.weight"] == (None, AxisPerm("conv", inner=64))
    assert "not consumed" in spec.unpermuted["rnn.weight_ih_l0"]


def test_embedding_sequence_and_transposed_conv_specs():
    spec = permutation_spec(SeqNet(c=6), torch.randint(0, 11, (3, 7)))
    assert spec.axes["emb.weight"] == (None, AxisPerm("emb"))
    assert spec.axes["fc.weight"] == (AxisPerm("fc"), AxisPerm("emb"))
    assert spec.axes["ln.weight"] == (AxisPerm("fc"),)
    assert spec.axes["conv.weight"] == (AxisPerm("conv"), AxisPerm("fc"), None)  # after transpose(1, 2)
    assert spec.axes["head.weight"] == (None, AxisPerm("conv"))  # after permute(0, 2, 1) and mean(1)
    spec = permutation_spec(UpNet(c=5), X_IMG)
    assert spec.axes["dec.weight"] == (AxisPerm("enc"), AxisPerm("dec"), None, None)  # ConvTranspose: [in, out]
    assert spec.axes["bn.running_var"] == (AxisPerm("enc"),)


def test_reshape_that_splits_units_freezes_group():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(8, 6)
            self.fc2 = nn.Linear(3, 4)

        def forward(self, x):
            return self.fc2(self.fc1(x).view(-1, 2, 3)).sum(1)

    spec = permutation_spec(Net(), torch.randn(2, 8))
    assert "splits" in spec.frozen_groups["fc1"]
    assert "fc1" not in spec.group_sizes


@pytest.mark.parametrize("name,kw", [
    ("mlp", {"input_size": 64, "depth": 2, "width": 16, "norm": "ln"}),
    ("cnn_s", {"input_size": 28}),
    ("lenet5", {"input_size": 16}),
    ("vgg11_bn", {"input_size": 8, "width": 0.125}),
    ("vgg11_ln", {"input_size": 8, "width": 0.125}),
    ("resnet20", {"input_size": 8, "width": 4}),
    ("resnet20", {"input_size": 8, "width": 4, "norm": "ln"}),
])
def test_registered_models_only_leave_the_classifier_output_unpermuted(name, kw):
    m = create_model(name, seed=0, **kw)
    size = kw["input_size"]
    x = torch.randn(2, size) if name == "mlp" else torch.randn(2, 1, size, size)
    spec = permutation_spec(m, x)
    _every_key_accounted(spec, m)
    assert len(spec.frozen_groups) == 1
    for key, reason in spec.unpermuted.items():
        assert key.endswith("num_batches_tracked") or "reaches the model output" in reason, (key, reason)
    if name == "resnet20":
        assert len(spec.group_sizes) == 12


def test_expand_index_closed_form():
    perm = torch.tensor([2, 0, 1])
    idx = expand_index(perm, 12, 2)  # outer = 2, n = 3, inner = 2
    expected = [4, 5, 0, 1, 2, 3, 10, 11, 6, 7, 8, 9]
    assert idx.tolist() == expected
    with pytest.raises(ValueError, match="multiple"):
        expand_index(perm, 10, 2)


def test_spec_validation_and_trace_errors():
    with pytest.raises(ValueError, match="not a multiple"):
        PermutationSpec(group_sizes={"g": 3}, axes={"w": (AxisPerm("g"),)}, shapes={"w": (4,)})
    with pytest.raises(ValueError, match="unknown group"):
        PermutationSpec(group_sizes={}, axes={"w": (AxisPerm("g"),)}, shapes={"w": (4,)})

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(ValueError, match="cannot be traced"):
        permutation_spec(Branchy(), torch.randn(2, 4))
    with pytest.raises(ValueError, match="does not run"):
        permutation_spec(MLP((4,)), torch.randn(2, 7))
    with pytest.raises(ValueError, match="example_input"):
        permutation_spec(MLP((4,)), "not a tensor")


def test_tracing_does_not_touch_bn_statistics_or_modes():
    m = seeded(lambda: VGG(4, "bn"), 0).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    permutation_spec(m, X_IMG)
    assert m.training
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
