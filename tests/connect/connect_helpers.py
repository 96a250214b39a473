"""Small hand-built models and data for zooscape.connect tests (imported by conftest and tests)."""

import torch
from torch import nn


def make_mlp(seed: int, bn: bool = True, dropout: float = 0.0, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    """MLP 6 -> 8 -> 8 -> 3 with optional BatchNorm and Dropout."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(6, 8)]
    if bn:
        layers.append(nn.BatchNorm1d(8))
    layers += [act(), nn.Dropout(dropout), nn.Linear(8, 8)]
    if bn:
        layers.append(nn.BatchNorm1d(8))
    layers += [act(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def make_cnn(seed: int) -> nn.Module:
    """Tiny CNN on 1x6x6 inputs with BatchNorm2d."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(12, 4),
    )


def perturb_bn_stats(model: nn.Module, seed: int) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.num_batches_tracked.fill_(seed + 1)
    return model


def classification_data(seed: int, shape: tuple[int, ...], classes: int, n_train: int = 41, n_test: int = 23):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        out[split] = (torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g))
    return out
