"""Registry, create_model arguments, seeding and zoo_config of zooscape.models."""

import json

import pytest
import torch
from torch import nn

import zooscape.models.registry as registry
from zooscape.models import (
    count_parameters,
    create_model,
    get_model_entry,
    init_weights,
    list_models,
    register_model,
)
from zooscape.models.cnn_s import CNNSmall


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_list_models_contains_all_families_and_filters():
    names = list_models()
    assert names == sorted(names)
    for name in ("mlp", "cnn_s", "cnn_l", "lenet5", "resnet18", "resnet20"):
        assert name in names
    vggs = [f"vgg{d}{s}" for d in (11, 13, 16, 19) for s in ("", "_bn", "_ln", "_nobias")]
    assert sorted(vggs) == list_models("vgg*")
    assert list_models("vgg1[13]_bn") == ["vgg11_bn", "vgg13_bn"]
    assert list_models("nothing*") == []


@pytest.mark.parametrize("name", ["cnn_s", "resnet20", "mlp"])
@pytest.mark.parametrize("init", [None, "kaiming_normal", "uniform"])
def test_seed_gives_bitwise_identical_weights(name, init):
    kw = {"width": 4} if name != "cnn_s" else {}
    a = create_model(name, in_channels=3, input_size=28, init=init, seed=7, **kw)
    b = create_model(name, in_channels=3, input_size=28, init=init, seed=7, **kw)
    c = create_model(name, in_channels=3, input_size=28, init=init, seed=8, **kw)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


def test_seeded_creation_leaves_global_rng_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    create_model("resnet20", width=2, seed=3)
    create_model("cnn_l", in_channels=3, init="kaiming_uniform", seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    # the unseeded path does consume the global RNG, so the check above can fail
    create_model("cnn_s")
    assert not torch.equal(torch.get_rng_state(), state)


def test_seed_without_init_equals_pytorch_default_under_manual_seed():
    model = create_model("cnn_s", activation="tanh", seed=11)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        reference = CNNSmall(1, 10, (28, 28), "tanh", 0.0)
    assert _same_weights(model, reference)


def test_seeded_init_matches_explicit_generator():
    model = create_model("mlp", width=16, init="xavier_normal", seed=5)
    with torch.random.fork_rng(devices=[]):
        other = create_model("mlp", width=16)
    init_weights(other, "xavier_normal", torch.Generator().manual_seed(5))
    assert _same_weights(model, other)


def test_zoo_config_is_json_and_recreates_the_model():
    model = create_model("resnet20", in_channels=3, input_size=(32, 32), init="kaiming_normal", seed=2, width=2)
    cfg = model.zoo_config
    assert cfg["name"] == "resnet20"
    assert cfg["width"] == 2 and cfg["norm"] == "bn"  # resolved defaults are recorded
    assert cfg["input_size"] == [32, 32] and cfg["seed"] == 2 and cfg["init"] == "kaiming_normal"
    cfg = json.loads(json.dumps(cfg))
    again = create_model(**cfg)
    assert again.zoo_config == model.zoo_config
    assert _same_weights(model, again)


def test_default_init_aliases_none_in_config():
    assert create_model("cnn_s", init="default").zoo_config["init"] is None


def test_device_argument_moves_model():
    model = create_model("cnn_s", seed=0, device="cpu")
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "resnet19"}, "resnet19"),
        ({"name": "mlp", "activation": "swish"}, "swish"),
        ({"name": "mlp", "init": "orthogonal"}, "orthogonal"),
        ({"name": "mlp", "widht": 3}, "widht"),
        ({"name": "resnet18", "dropout": 0.5}, "dropout"),
        ({"name": "vgg11", "dropout": 0.1}, "dropout"),
        ({"name": "mlp", "dropout": 1.0}, "dropout"),
        ({"name": "mlp", "num_classes": 0}, "num_classes"),
        ({"name": "mlp", "in_channels": 2.5}, "in_channels"),
        ({"name": "mlp", "seed": -1}, "seed"),
        ({"name": "mlp", "seed": True}, "seed"),
        ({"name": "mlp", "norm": "gn"}, "gn"),
        ({"name": "mlp", "depth": -1}, "depth"),
        ({"name": "resnet20", "width": 0}, "width"),
        ({"name": "resnet18", "stem": "tiny"}, "tiny"),
        ({"name": "vgg11", "width": -1.0}, "width"),
        ({"name": "lenet5", "pool": "median"}, "median"),
        ({"name": "cnn_s", "input_size": 16}, "input_size"),
        ({"name": "cnn_s", "input_size": (3, 28, 28)}, "in_channels"),
        ({"name": "cnn_s", "input_size": (0, 28)}, "input_size"),
        ({"name": "cnn_s", "input_size": "28"}, "input_size"),
        ({"name": "mlp", "width": 4.0}, "width"),
        ({"name": "mlp", "bias": "yes"}, "bias"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        create_model(**kwargs)


def test_error_messages_list_valid_choices():
    with pytest.raises(ValueError, match="resnet20"):
        create_model("resnet21")
    with pytest.raises(ValueError, match="leakyrelu"):
        create_model("mlp", activation="elu")
    with pytest.raises(ValueError, match="kaiming_uniform"):
        create_model("mlp", init="he")
    with pytest.raises(ValueError, match="depth"):
        create_model("mlp", layers=3)


def test_non_json_kwarg_is_rejected():
    with pytest.raises(ValueError, match="JSON"):
        create_model("vgg11", width=torch.tensor(0.5))


def test_register_model_custom_family(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("tiny_linear", init_bias=0.5)
    def tiny_linear(*, num_classes, in_channels, input_size, activation, dropout, hidden: int = 3):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 4, hidden), nn.Linear(hidden, num_classes))

    assert "tiny_linear" in list_models("tiny*")
    assert get_model_entry("tiny_linear").family_kwargs == ("hidden",)
    model = create_model("tiny_linear", num_classes=2, in_channels=1, init="normal", hidden=5)
    assert count_parameters(model) == 4 * 5 + 5 + 5 * 2 + 2
    assert torch.all(model[1].bias == 0.5)
    assert model.zoo_config["hidden"] == 5
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_linear")(tiny_linear)
    with pytest.raises(ValueError, match="num_classes"):

        @register_model("broken")
        def broken(*, in_channels, input_size, activation, dropout):
            return nn.Identity()

    with pytest.raises(ValueError, match="default"):

        @register_model("broken2")
        def broken2(*, num_classes, in_channels, input_size, activation, dropout, size):
            return nn.Identity()


def test_rethink_rebasin_names_are_aliases_of_registered_models():
    import torch

    from zooscape.models import create_model, get_model_entry, list_aliases, list_models
    from zooscape.zoo.spec import parse_spec

    table = list_aliases()
    assert table["cifar_vgg11_bn"] == ("vgg11_bn", {"width": 1.0})
    assert table["cifar_vgg16_bn_4x"] == ("vgg16_bn", {"width": 4.0})
    assert table["cifar_vgg11_nobias"] == ("vgg11_nobias", {"width": 1.0})
    assert table["plain_cifar_resnet20"] == ("resnet20", {"norm": "none", "width": 16})
    assert table["cifar_resnet20_ln_4x"] == ("resnet20", {"norm": "ln", "width": 64})
    assert "cifar_vgg11" not in list_models() and "cifar_vgg11" in list_models("cifar_*", aliases=True)
    # the alias builds exactly the canonical model and records the canonical config
    a = create_model("cifar_vgg11_bn_2x", in_channels=3, seed=3)
    b = create_model("vgg11_bn", in_channels=3, width=2.0, seed=3)
    assert a.zoo_config == b.zoo_config and a.zoo_config["name"] == "vgg11_bn"
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    ln = create_model("cifar_resnet20_ln", in_channels=3, seed=0)
    assert ln.zoo_config["norm"] == "ln" and ln.zoo_config["width"] == 16
    assert "width" not in get_model_entry("cifar_resnet20").family_kwargs
    with pytest.raises(ValueError, match="fixes"):
        create_model("cifar_resnet20_4x", width=8)
    with pytest.raises(ValueError, match="did you mean"):
        create_model("cifar_vgg11_bnn")
    spec = parse_spec({"dataset": {"name": "digits"}, "model": {"name": "cifar_vgg11_nobias"},
                       "training": {"epochs": 1}})
    assert spec.model["name"] == "cifar_vgg11_nobias"
