"""A plain PyTorch training loop for one model: the independent slow path.

It uses ``torch.optim`` and an ordinary ``nn.Module`` — nothing of the population machinery — but the same data
order as :func:`zooscape.train.train_population`, so the two can be compared model by model (tests) and timed side
by side (``bench/population.py``). Dropout uses the global RNG here, so models with dropout are not expected to
match; augmentation is not supported.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from .config import Member, TrainConfig
from .schedule import lr_factor
from .trainer import epoch_order, resolve_device


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, bs: int) -> dict[str, float]:
    model.eval()
    loss, correct = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], bs):
            out = model(x[i:i + bs])
            yb = y[i:i + bs]
            if task == "regression":
                loss += float(((out - yb) ** 2).mean(1).sum())
            else:
                loss += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
                correct += float((out.argmax(1) == yb).sum())
    model.train()
    n = max(x.shape[0], 1)
    return {"loss": loss / n, "acc": correct / n} if task != "regression" else {"loss": loss / n}


def train_sequential(
    model: nn.Module,
    data: Any,
    config: TrainConfig,
    member: Member | None = None,
    *,
    device: str | torch.device = "auto",
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train one model with ``torch.optim`` (reference implementation; slow).

    Args:
        model: an initialised model (copied, not modified).
        data: a :class:`zooscape.data.DataSplits`.
        config: hyperparameters (``augment`` must be empty).
        member: the model's seed and hyperparameter overrides.
        device: where to train.

    Returns:
        ``(trained_model, history)`` with one metric dict per epoch (epoch 0 first), keys as ``train_population``.
    """
    if config.augment:
        raise ValueError("train_sequential does not support augmentation")
    m = (member or Member()).resolved(config)
    dev = resolve_device(device)
    model = copy.deepcopy(model).to(dev)
    task = data.task
    x_tr, y_tr = data.train_x.to(dev), data.train_y.to(dev)
    splits = {"train": (x_tr, y_tr), "val": (data.val_x.to(dev), data.val_y.to(dev)),
              "test": (data.test_x.to(dev), data.test_y.to(dev))}
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=m.lr, momentum=m.momentum, weight_decay=m.weight_decay,
                              nesterov=config.nesterov)
    elif config.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=m.lr, betas=config.betas, eps=config.eps,
                               weight_decay=m.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=m.lr, betas=config.betas, eps=config.eps,
                                weight_decay=m.weight_decay)
    n = x_tr.shape[0]
    bs = config.batch_size
    steps = n // bs if config.drop_last else math.ceil(n / bs)
    total = max(1, config.epochs * steps)
    kw = dict(warmup_epochs=config.warmup_epochs, step_size=config.step_size, gamma=config.gamma)

    def metrics() -> dict[str, float]:
        row = {}
        for name, (x, y) in splits.items():
            if x.shape[0]:
                row.update({f"{name}_{k}": v for k, v in _evaluate(model, x, y, task, config.eval_batch_size).items()})
        return row

    history = [metrics()]
    model.train()
    for epoch in range(1, config.epochs + 1):
        perm = epoch_order(n, m.data_seed, epoch).to(dev)
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            for group in opt.param_groups:
                group["lr"] = m.lr * lr_factor(config.schedule, (epoch - 1) * steps + s, total, steps, **kw)
            out = model(x_tr[idx])
            if task == "regression":
                loss = ((out - y_tr[idx]) ** 2).mean()
            else:
                loss = nn.functional.cross_entropy(out, y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
        history.append(metrics())
    return model, history
