"""Hand-built models, digits data and a tiny training loop for the zooscape.align tests."""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from zooscape.models import create_model


class MLP(nn.Module):
    """64 -> widths -> 10 ReLU MLP, optionally with LayerNorm or BatchNorm1d after each hidden Linear."""

    def __init__(self, widths=(32, 32), n_in=64, n_out=10, norm: str | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = n_in
        for w in widths:
            layers.append(nn.Linear(prev, w))
            if norm == "ln":
                layers.append(nn.LayerNorm(w))
            elif norm == "bn":
                layers.append(nn.BatchNorm1d(w))
            layers.append(nn.ReLU())
            prev = w
        layers.append(nn.Linear(prev, n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(torch.flatten(x, 1))


def _norm2d(kind: str | None, c: int, hw: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(c)
    if kind == "ln":
        return nn.LayerNorm([c, hw, hw])
    if kind == "gn":
        return nn.GroupNorm(1, c)
    return nn.Identity()


class VGG(nn.Module):
    """Small VGG for 1x8x8 inputs: [conv-norm-relu]x2, pool, [conv-norm-relu]x2, pool, flatten, fc-relu-fc."""

    def __init__(self, width: int = 8, norm: str | None = "bn", n_out: int = 10, dropout: float = 0.1) -> None:
        super().__init__()
        c1, c2 = width, 2 * width
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), _norm2d(norm, c1, 8), nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1), _norm2d(norm, c1, 8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), _norm2d(norm, c2, 4), nn.ReLU(),
            nn.Conv2d(c2, c2, 3, padding=1), _norm2d(norm, c2, 4), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 4, 32), nn.ReLU(), nn.Dropout(dropout),
                                        nn.Linear(32, n_out))

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str = "bn") -> None:
        super().__init__()
        mk = (lambda c: nn.BatchNorm2d(c)) if norm == "bn" else (lambda c: nn.GroupNorm(1, c))
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = mk(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = mk(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), mk(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (depth 6n+2) for 1-channel inputs; ``blocks=3`` gives ResNet20."""

    def __init__(self, blocks: int = 3, width: int = 4, n_out: int = 10, norm: str = "bn") -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width]
        self.conv1 = nn.Conv2d(1, w[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0]) if norm == "bn" else nn.GroupNorm(1, w[0])
        layers = []
        c_in = w[0]
        for i, c in enumerate(w):
            stage = []
            for j in range(blocks):
                stage.append(BasicBlock(c_in, c, 2 if (i > 0 and j == 0) else 1, norm))
                c_in = c
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w[2], n_out)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = self.pool(out)
        return self.fc(out.view(out.size(0), -1))


class Exotic(nn.Module):
    """Functional ops: depthwise conv, learned per-channel scale, cat, x.view, mean, a custom block."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, c, 3, padding=1)
        self.dw = nn.Conv2d(c, 2 * c, 3, padding=1, groups=c)
        self.scale = nn.Parameter(torch.rand(1, 2 * c, 1, 1) + 0.5)
        self.gn = nn.GroupNorm(2, 2 * c)  # 2 groups of c channels: not permutation-compatible
        self.conv_b = nn.Conv2d(1, 2 * c, 3, padding=1)
        self.conv_c = nn.Conv2d(2 * c, c, 1)
        self.fc = nn.Linear(2 * c, 10)

    def forward(self, x):
        h = F.gelu(self.dw(torch.relu(self.conv(x)))) * self.scale
        g = self.gn(self.conv_b(x))
        h = self.conv_c(h) + self.conv_c(h * 0.5)  # conv_c called twice: shared units
        h = torch.cat([h, torch.sigmoid(g[:, : h.shape[1]])], dim=1)
        return self.fc(h.mean((2, 3)))


class SeqNet(nn.Module):
    """Token model: Embedding, Linear on [B, T, C], LayerNorm, transposes around a Conv1d, mean over T."""

    def __init__(self, vocab: int = 11, c: int = 6) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, c)
        self.fc = nn.Linear(c, 2 * c)
        self.ln = nn.LayerNorm(2 * c)
        self.conv = nn.Conv1d(2 * c, c, 3, padding=1)
        self.head = nn.Linear(c, 3)

    def forward(self, tokens):
        h = self.ln(F.gelu(self.fc(self.emb(tokens))))            # [B, T, 2c]
        h = torch.relu(self.conv(h.transpose(1, 2))).permute(0, 2, 1)  # [B, T, c]
        return self.head(h.mean(1))


class UpNet(nn.Module):
    """ConvTranspose2d decoder with a concatenation along the batch dim and spatial slicing."""

    def __init__(self, c: int = 5) -> None:
        super().__init__()
        self.enc = nn.Conv2d(1, c, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.dec = nn.ConvTranspose2d(c, c, 2, stride=2)
        self.out = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        h = F.relu(self.bn(self.enc(x)))
        h = torch.cat([h, h.flip(0)], dim=0)[: x.shape[0]]
        h = F.silu(self.dec(h))[:, :, 1:, :]
        return self.out(h).sum((2, 3))


@functools.lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """zooscape's digits data set: (train_x [1257, 64], train_y, test_x [270, 64], test_y)."""
    from zooscape.data import load_dataset

    ds = load_dataset("digits", seed=0)
    return ds.train_x, ds.train_y, ds.test_x, ds.test_y


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 10, lr: float = 3e-3,
          seed: int = 0, batch_size: int = 64) -> nn.Module:
    """Adam training with a seeded data order; returns the model (trained in place) in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in eval mode."""
    model.eval()
    logits = model(x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


TRAINED = {
    "mlp": (lambda: create_model("mlp", input_size=64, depth=3, width=32), False, 6),
    "mlp_wide": (lambda: create_model("mlp", input_size=64, depth=2, width=64), False, 6),
    "vgg_bn": (lambda: create_model("vgg11_bn", input_size=8, width=0.25), True, 2),
    "resnet20": (lambda: create_model("resnet20", input_size=8, width=4), True, 2),
}


@functools.cache
def _trained(kind: str, seed: int) -> nn.Module:
    make, image, epochs = TRAINED[kind]
    x, y, _, _ = digits()
    return train(seeded(make, seed), x.view(-1, 1, 8, 8) if image else x, y, epochs=epochs, seed=seed)


def trained(kind: str, seed: int = 0) -> nn.Module:
    """A copy of a model of ``kind`` (see TRAINED) trained briefly on digits (cached per process)."""
    return copy.deepcopy(_trained(kind, seed))


def inputs(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits (train_x, test_x) shaped for ``kind``."""
    x, _, xt, _ = digits()
    if TRAINED[kind][1]:
        return x.view(-1, 1, 8, 8), xt.view(-1, 1, 8, 8)
    return x, xt


def seeded(model_fn, seed: int):
    """Build a model under a fixed torch seed without disturbing the caller's RNG state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_fn()


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer non-trivial affine params and running stats (so permutation bugs show)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(m, name, None)
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and t is not None:
                with torch.no_grad():
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name in ("weight", "running_var")
                            else torch.randn(t.shape, generator=g))
    return model


__all__ = [
    "MLP", "VGG", "ResNet", "Exotic", "SeqNet", "UpNet", "digits", "train", "evaluate", "seeded", "randomize_bn",
    "trained", "inputs",
]
