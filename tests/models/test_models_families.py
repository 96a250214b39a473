"""Architectures of zooscape.models: parameter counts, layouts, shapes and population compatibility."""

import fnmatch
import operator

import pytest
import torch
import torch.fx
from torch import nn

from zooscape.models import count_parameters, create_model, list_models
from zooscape.models.shapes import conv_out
from zooscape.models.vgg import VGG_CONFIGS

# small variants so every registered model runs in milliseconds
SMALL = {"resnet*": {"width": 2}, "vgg*": {"width": 1 / 16}, "mlp": {"width": 8}}


def _small_kwargs(name):
    for pattern, kw in SMALL.items():
        if fnmatch.fnmatchcase(name, pattern):
            return dict(kw)
    return {}


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    ("name", "in_channels", "size", "expected"),
    [
        ("cnn_s", 1, 28, 2_464),  # Model Zoos MNIST / F-MNIST
        ("cnn_s", 3, 28, 2_864),  # Model Zoos CIFAR-10 / SVHN (resized to 28x28 by the reference)
        ("cnn_l", 3, 32, 10_853),  # Model Zoos CIFAR-10 / STL-10 "CNN3"
        ("lenet5", 1, 28, 61_706),  # LeNet-5 with full C3
    ],
)
def test_reference_parameter_counts(name, in_channels, size, expected):
    assert count_parameters(create_model(name, in_channels=in_channels, input_size=size)) == expected


def test_cnn_s_on_32x32_only_changes_the_first_linear():
    # 3x32x32 leaves a 4x4x4 map: Linear(64, 20) instead of Linear(36, 20)
    n28 = count_parameters(create_model("cnn_s", in_channels=3, input_size=28))
    n32 = count_parameters(create_model("cnn_s", in_channels=3, input_size=32))
    assert n32 - n28 == (64 - 36) * 20


def test_resnet_parameter_counts():
    r18 = count_parameters(create_model("resnet18", in_channels=3, input_size=32))
    assert r18 == 11_173_962  # standard CIFAR ResNet-18
    r20 = count_parameters(create_model("resnet20", in_channels=3, input_size=32))
    # He et al.'s option-A ResNet-20 has 269,722; option B adds two 1x1 projections + their BN
    assert r20 == 269_722 + (16 * 32 + 32 * 64) + 2 * (32 + 64)
    assert abs(r20 - 0.27e6) < 0.01e6


def test_resnet18_width_scales_planes():
    model = create_model("resnet18", in_channels=3, width=3, stem="imagenet")
    assert [getattr(model, f"layer{i}")[0].conv1.out_channels for i in (1, 2, 3, 4)] == [3, 6, 12, 24]
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)
    assert model.fc.in_features == 24


def _vgg_count(depth, width, in_channels, num_classes, norm, bias):
    total, c = 0, in_channels
    for v in VGG_CONFIGS[depth]:
        if v == "M":
            continue
        out = max(1, round(v * width))
        total += 9 * c * out + (out if bias else 0) + (2 * out if norm else 0)
        c = out
    return total + c * num_classes + (num_classes if bias else 0)


@pytest.mark.parametrize("suffix", ["", "_bn", "_ln", "_nobias"])
@pytest.mark.parametrize("depth", [11, 19])
def test_vgg_parameter_counts(depth, suffix):
    model = create_model(f"vgg{depth}{suffix}", in_channels=3, num_classes=7, width=0.125)
    expected = _vgg_count(depth, 0.125, 3, 7, norm=suffix in ("_bn", "_ln"), bias=suffix != "_nobias")
    assert count_parameters(model) == expected
    if suffix == "_nobias":
        assert all(m.bias is None for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    if suffix == "_ln":
        assert any(isinstance(m, nn.GroupNorm) and m.num_groups == 1 for m in model.modules())


def test_mlp_count_and_norm_layout():
    model = create_model("mlp", input_size=(1, 28, 28), depth=2, width=64)
    assert count_parameters(model) == 784 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    flat = create_model("mlp", input_size=64, depth=0)
    assert count_parameters(flat) == 64 * 10 + 10
    bn = create_model("mlp", input_size=64, depth=3, width=8, norm="bn", dropout=0.1, bias=False)
    kinds = [type(m) for m in bn.module_list]
    assert kinds[:4] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]
    assert kinds.count(nn.Linear) == 4
    ln = create_model("mlp", input_size=64, width=8, norm="ln")
    assert isinstance(ln.module_list[1], nn.LayerNorm)


# ---------------------------------------------------------------- Model Zoos layouts / checkpoint keys


def _reference_cnn_s(c_in, dropout):
    """Model Zoos' CNN layout, written out independently from the reference description."""
    layers = [nn.Conv2d(c_in, 8, 5), nn.MaxPool2d(2, 2), nn.Tanh()]
    layers += [nn.Dropout(dropout)] if dropout > 0 else []
    layers += [nn.Conv2d(8, 6, 5), nn.MaxPool2d(2, 2), nn.Tanh()]
    layers += [nn.Dropout(dropout)] if dropout > 0 else []
    layers += [nn.Conv2d(6, 4, 2), nn.Tanh(), nn.Flatten(), nn.Linear(36, 20), nn.Tanh()]
    layers += [nn.Dropout(dropout)] if dropout > 0 else []
    layers += [nn.Linear(20, 10)]
    return nn.ModuleList(layers)


@pytest.mark.parametrize(("dropout", "indices"), [(0.0, (0, 3, 6, 9, 11)), (0.5, (0, 4, 8, 11, 14))])
def test_cnn_s_state_dict_keys_and_reference_checkpoint(dropout, indices):
    model = create_model("cnn_s", in_channels=3, activation="tanh", dropout=dropout, seed=0)
    expected = {f"module_list.{i}.{p}" for i in indices for p in ("weight", "bias")}
    assert set(model.state_dict()) == expected
    reference = _reference_cnn_s(3, dropout)
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0, 0.3)
    checkpoint = {f"module_list.{k}": v for k, v in reference.state_dict().items()}
    model.load_state_dict(checkpoint, strict=True)
    model.eval()
    reference.eval()
    x = torch.randn(4, 3, 28, 28)
    y = x
    for layer in reference:
        y = layer(y)
    torch.testing.assert_close(model(x), y, rtol=0, atol=0)


def test_cnn_l_layout_keeps_dropout_modules():
    for dropout in (0.0, 0.3):
        model = create_model("cnn_l", in_channels=3, dropout=dropout)
        expected = {f"module_list.{i}.{p}" for i in (0, 4, 8, 13, 16) for p in ("weight", "bias")}
        assert set(model.state_dict()) == expected
        assert [i for i, m in enumerate(model.module_list) if isinstance(m, nn.Dropout)] == [3, 7, 11, 15]
        assert all(m.p == dropout for m in model.module_list if isinstance(m, nn.Dropout))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.endswith("weight")}
    assert shapes == {
        "module_list.0.weight": (16, 3, 3, 3),
        "module_list.4.weight": (32, 16, 3, 3),
        "module_list.8.weight": (15, 32, 3, 3),
        "module_list.13.weight": (20, 60),
        "module_list.16.weight": (10, 20),
    }


def test_resnet_keys_follow_torchvision_names():
    keys = set(create_model("resnet18", width=2).state_dict())
    assert {"conv1.weight", "bn1.weight", "bn1.running_mean", "fc.weight", "fc.bias"} <= keys
    assert {"layer1.0.conv1.weight", "layer1.1.bn2.bias", "layer4.1.conv2.weight"} <= keys
    assert {"layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var"} <= keys
    assert not any(k.startswith("layer1.0.downsample") for k in keys)
    assert not any(k.startswith("layer5") for k in keys)
    r20 = set(create_model("resnet20", width=2).state_dict())
    assert "layer3.2.conv2.weight" in r20 and not any(k.startswith("layer4") for k in r20)


@pytest.mark.parametrize("norm", ["bn", "ln", "none"])
def test_resnet_norm_option(norm):
    model = create_model("resnet20", width=2, norm=norm)
    block = model.layer1[0]
    expected = {"bn": nn.BatchNorm2d, "ln": nn.GroupNorm, "none": nn.Identity}[norm]
    assert type(block.bn1) is expected and type(model.bn1) is expected


def test_lenet5_pads_small_inputs_to_classic_geometry():
    mnist = create_model("lenet5", input_size=28)
    assert mnist.features[0].padding == (2, 2)
    classic = create_model("lenet5", input_size=32, in_channels=3, pool="max")
    assert classic.features[0].padding == (0, 0)
    assert isinstance(classic.features[2], nn.MaxPool2d)
    # both end in a 120x1x1 map
    assert mnist.classifier[1].in_features == classic.classifier[1].in_features == 120


# ---------------------------------------------------------------- forward shapes for every model


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(("in_channels", "size"), [(1, 28), (3, 32)])
def test_every_model_forward_shape(name, in_channels, size):
    kw = _small_kwargs(name)
    input_size = (in_channels, size, size)
    model = create_model(name, num_classes=5, in_channels=in_channels, input_size=input_size, seed=0, **kw)
    out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


def test_image_models_accept_non_square_inputs():
    for name in ("cnn_s", "cnn_l", "lenet5", "vgg11_bn", "resnet20"):
        kw = _small_kwargs(name)
        model = create_model(name, in_channels=1, input_size=(30, 26), **kw).eval()
        assert model(torch.randn(1, 1, 30, 26)).shape == (1, 10)


def test_conv_out_matches_torch():
    for size in range(1, 40):
        for kernel, stride, padding, ceil in [(5, 1, 0, False), (2, 2, 0, False), (2, 2, 0, True), (3, 2, 1, False),
                                              (7, 2, 3, False), (3, 2, 1, True)]:
            if size + 2 * padding < kernel and not ceil:
                continue
            if ceil:
                out = nn.MaxPool2d(kernel, stride, padding, ceil_mode=True)(torch.zeros(1, 1, size, size))
            else:
                out = nn.Conv2d(1, 1, kernel, stride, padding)(torch.zeros(1, 1, size, size))
            assert conv_out(size, kernel, stride, padding, ceil) == out.shape[-1], (size, kernel, stride, ceil)


# ---------------------------------------------------------------- population compatibility

ALLOWED_LEAVES = (
    nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.Dropout,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity,
    nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU,
)  # fmt: skip


def _population_kwargs(name):
    kw = _small_kwargs(name)
    if name in ("mlp", "cnn_s", "cnn_l"):
        kw["dropout"] = 0.25
    if name == "mlp":
        kw["norm"] = "bn"
    return kw


@pytest.mark.parametrize("name", list_models())
def test_models_are_population_compatible(name):
    model = create_model(name, in_channels=3, input_size=32, activation="leakyrelu", **_population_kwargs(name))
    leaves = [m for m in model.modules() if not list(m.children())]
    assert leaves, name
    for leaf in leaves:
        assert type(leaf) in ALLOWED_LEAVES, f"{name}: {type(leaf).__name__} is not a standard leaf module"
        assert not getattr(leaf, "inplace", False), f"{name}: in-place {type(leaf).__name__}"
    # no module instance used twice (one activation instance per use)
    assert len(list(model.named_modules(remove_duplicate=False))) == len(list(model.named_modules()))
    # forward code: only leaf-module calls and residual additions, no functional ops or reshapes
    graph = torch.fx.symbolic_trace(model).graph
    for node in graph.nodes:
        if node.op == "call_function":  # residual additions (torch.flatten(x, 1) would also be fine)
            assert node.target in (operator.add, torch.flatten), f"{name}: forward calls {node.target}"
        assert node.op != "call_method", f"{name}: forward calls tensor method {node.target}"


def test_population_check_rejects_functional_forward():
    """The fx check above can fail: a forward using F.relu / view is flagged."""

    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.relu(x.view(x.shape[0], 4)))

    graph = torch.fx.symbolic_trace(Bad()).graph
    flagged = [n for n in graph.nodes if n.op == "call_method" or
               (n.op == "call_function" and n.target is not operator.add)]
    assert flagged


@pytest.mark.parametrize("name", list_models())
def test_population_of_models_matches_individual_models(name):
    """Integration with zooscape.train: N models folded into channels give each model's own outputs."""
    train = pytest.importorskip("zooscape.train")
    kw = _small_kwargs(name)
    if name == "mlp":
        kw["norm"] = "bn"
    models = [create_model(name, in_channels=3, input_size=(3, 32, 32), activation="silu", init="kaiming_normal",
                           seed=s, **kw) for s in range(3)]
    population = train.Population(models).train()
    x = torch.randn(4, 3, 32, 32)
    expected = torch.stack([m.train()(x) for m in models], 1)  # train mode: BatchNorm uses batch statistics
    assert not torch.allclose(expected[:, 0], expected[:, 1])
    torch.testing.assert_close(population.forward_shared(x), expected, rtol=1e-4, atol=1e-5)
