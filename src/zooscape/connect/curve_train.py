"""Curve training: minimise the expected loss along a curve, ``E_{t ~ U[0, 1)} L(w(t))``.

Every mini-batch draws **one** ``t ~ U[0, 1)`` (from a seeded ``torch.Generator``, so a run is reproducible and
the global RNG is never used), evaluates the network at ``w(t)`` in training mode (BatchNorm normalises with
the batch's statistics) and adds the regulariser ``0.5 * weight_decay * ||w(t)||^2`` over all parameters *at
the sampled point*; the optimiser itself has no weight decay. The data order of epoch ``e`` is
``zooscape.train.epoch_order(n, seed, e)``, the order zoo training uses.

Learning-rate schedule ``"garipov"`` (default; the reference ``train.py`` of Garipov et al. 2018): with
``a = epoch / epochs`` (epochs counted from 1, constant within an epoch) the factor is 1 for ``a <= 0.5``,
``1 - 0.99 (a - 0.5) / 0.4`` for ``0.5 < a <= 0.9`` and 0.01 after; epoch 14 of 20 gives 0.505. The
phase-transition zoo's ``curve_fitting.py`` feeds the previous epoch's rate back in as the base rate
(``lr = schedule(lr, epoch, epochs)``), so its factors *compound*: with 10 epochs it trains epochs 6-10 at
0.7525, 0.38, 0.098, 9.8e-4 and 9.8e-6 times the base rate instead of 0.7525, 0.505, 0.2575, 0.01, 0.01. We do
not reproduce that. Any schedule of :mod:`zooscape.train.schedule` (``"constant"``, ``"cosine"``, ...) can be
used instead, per optimiser step.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zooscape.connect.bn import batch_slices
from zooscape.connect.curve import Curve
from zooscape.data.adapt import get_split, infer_task
from zooscape.train import SCHEDULES, epoch_order, lr_factor

__all__ = [
    "CURVE_OPTIMIZERS",
    "CURVE_SCHEDULES",
    "CurveOptimizer",
    "CurveTrainConfig",
    "CurveTrainResult",
    "curve_loss",
    "garipov_lr_factor",
    "sample_ts",
    "train_curve",
]

CURVE_OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
CURVE_SCHEDULES: tuple[str, ...] = ("garipov", *SCHEDULES)


def garipov_lr_factor(epoch: int, epochs: int) -> float:
    """Learning-rate factor of the reference curve-training schedule.

    Args:
        epoch: current epoch, counted from 1 (``1 <= epoch <= epochs``).
        epochs: total epochs.

    Returns:
        1.0 for ``epoch / epochs <= 0.5``; linear decay to 0.01 at ``0.9``; 0.01 afterwards.

    References:
        Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity, and Fast
        Ensembling of DNNs" (``learning_rate_schedule`` in the released ``train.py``).
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not isinstance(epoch, int) or not 1 <= epoch <= epochs:
        raise ValueError(f"epoch must be an integer in [1, {epochs}], got {epoch!r}")
    a = epoch / epochs
    if a <= 0.5:
        return 1.0
    if a <= 0.9:
        return 1.0 - (a - 0.5) / 0.4 * 0.99
    return 0.01


@dataclass
class CurveTrainConfig:
    """Hyperparameters of curve training.

    Attributes:
        epochs: passes over the training split.
        batch_size: samples per step.
        optimizer: ``"sgd"`` or ``"adam"`` (no built-in weight decay; see ``weight_decay``).
        lr: base learning rate.
        momentum: SGD momentum (reference default 0.9).
        nesterov: Nesterov momentum (SGD).
        betas, eps: Adam parameters.
        weight_decay: ``wd`` of the regulariser ``0.5 * wd * ||w(t)||^2`` at the sampled ``t``.
        schedule: ``"garipov"`` (per epoch, see module docstring) or a :data:`zooscape.train.SCHEDULES` name
            (per step).
        seed: seeds the data order, the sampled ``t`` and dropout masks.
        drop_last: drop the last incomplete batch of every epoch (otherwise a last batch of one sample is
            merged into the previous batch, as BatchNorm cannot train on one sample).
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-4
    schedule: str = "garipov"
    seed: int = 0
    drop_last: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        for name in ("epochs", "batch_size", "seed"):
            v = getattr(self, name)
            low = 1 if name == "batch_size" else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"CurveTrainConfig.{name} must be an integer >= {low}, got {v!r}")
        if self.optimizer not in CURVE_OPTIMIZERS:
            raise ValueError(f"CurveTrainConfig.optimizer must be one of {CURVE_OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in CURVE_SCHEDULES:
            raise ValueError(f"CurveTrainConfig.schedule must be one of {CURVE_SCHEDULES}, got {self.schedule!r}")
        for name in ("lr", "momentum", "weight_decay", "eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"CurveTrainConfig.{name} must be a finite number >= 0, got {v!r}")
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"CurveTrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields.

        Returns:
            dict.
        """
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


@dataclass
class CurveTrainResult:
    """Outcome of :func:`train_curve`.

    Attributes:
        curve: the trained curve (the object passed in, trained in place).
        history: one dict per epoch: ``epoch``, ``lr``, ``train_loss`` (nll + regulariser), ``train_nll``,
            ``train_error`` (classification), ``t_mean`` (mean sampled t), ``epoch_time_s``.
        config: the configuration used.
    """

    curve: Curve
    history: list[dict[str, float]] = field(default_factory=list)
    config: CurveTrainConfig | None = None


def _derive(seed: int, epoch: int, stream: str) -> int:
    h = hashlib.blake2b(f"curve:{int(seed)}:{int(epoch)}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def sample_ts(seed: int, epoch: int, steps: int) -> Tensor:
    """The curve positions drawn for the ``steps`` batches of one epoch: one ``t ~ U[0, 1)`` per batch.

    Args:
        seed: training seed.
        epoch: epoch (from 1).
        steps: batches in the epoch.

    Returns:
        Float64 tensor ``[steps]`` in [0, 1), a pure function of ``(seed, epoch)``.
    """
    g = torch.Generator().manual_seed(_derive(seed, epoch, "t"))
    return torch.rand(steps, generator=g, dtype=torch.float64)


def _nll(out: Tensor, y: Tensor, task: str) -> Tensor:
    if task == "classification":
        return F.cross_entropy(out, y)
    target = y.to(out.dtype)
    if target.dim() == 1:
        target = target.unsqueeze(-1)
    return ((out - target) ** 2).mean()


def curve_loss(
    curve: Curve, x: Tensor, y: Tensor, t: float, weight_decay: float, task: str = "classification"
) -> tuple[Tensor, Tensor, Tensor]:
    """The curve-training objective of one batch at one position ``t``.

    Args:
        curve: the curve (its train/eval mode decides how BatchNorm and Dropout behave).
        x: inputs ``[B, *input_shape]``.
        y: targets ``[B]`` (class indices) or ``[B, k]`` (regression).
        t: position in [0, 1].
        weight_decay: ``wd`` of the regulariser.
        task: ``"classification"`` (cross-entropy) or ``"regression"`` (MSE).

    Returns:
        ``(loss, nll, outputs)``: ``loss = nll + 0.5 * wd * ||w(t)||^2`` (0-d, differentiable with respect to the
        trainable nodes), the mean task loss ``nll`` and the network outputs ``[B, C]``.

    References:
        Garipov et al. (2018), "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs" (``l2_regularizer``
        of ``curves.py``: the squared norm of the weights at the sampled point).
    """
    weights = curve.weights(t)
    out = curve.call_with(x, weights, curve.buffers_at(t))
    nll = _nll(out, y, task)
    if weight_decay:
        return nll + 0.5 * float(weight_decay) * sum(w.pow(2).sum() for w in weights.values()), nll, out
    return nll, nll, out


class CurveOptimizer:
    """SGD (momentum, Nesterov) or Adam over a curve's tensors: the population optimiser with a population of one.

    A curve is trained with :class:`zooscape.train.optim.PopulationOptimizer` (the project's one optimiser, the
    update rules of ``torch.optim``): each tensor is seen through a ``[1, ...]`` view that shares its storage, so
    updates land in place. No weight decay: curve training regularises explicitly at the sampled point.

    Args:
        params: tensors with ``requires_grad=True``.
        config: supplies ``optimizer``, ``momentum``, ``nesterov``, ``betas``, ``eps``.

    References:
        Sutskever, Martens, Dahl, Hinton (2013) (momentum); Kingma, Ba (2015), "Adam".
    """

    def __init__(self, params: list[nn.Parameter], config: CurveTrainConfig) -> None:
        from zooscape.train.optim import PopulationOptimizer

        self.params = list(params)
        self._views = [p.data.unsqueeze(0) for p in self.params]
        like = {"dtype": self.params[0].dtype, "device": self.params[0].device}
        self._opt = PopulationOptimizer(
            [(str(i), v) for i, v in enumerate(self._views)], config.optimizer, weight_decay=torch.zeros(1, **like),
            momentum=torch.full((1,), float(config.momentum), **like), nesterov=bool(config.nesterov),
            betas=tuple(config.betas), eps=float(config.eps))
        self._active = torch.ones(1, dtype=torch.bool, device=like["device"])

    def zero_grad(self) -> None:
        """Drop the gradients."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """Apply one update with learning rate ``lr``.

        Args:
            lr: learning rate of this step.
        """
        for p, v in zip(self.params, self._views):
            v.grad = None if p.grad is None else p.grad.unsqueeze(0)
        self._opt.step(torch.full((1,), float(lr), dtype=self.params[0].dtype, device=self.params[0].device),
                       self._active, all_active=True)


def _has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


def train_curve(
    curve: Curve,
    data: Any,
    config: CurveTrainConfig | None = None,
    *,
    task: str | None = None,
    device: str | torch.device | None = None,
    callback: Callable[[dict[str, float]], None] | None = None,
) -> CurveTrainResult:
    """Train the bends (and free endpoints) of a curve, in place.

    Args:
        curve: a :class:`~zooscape.connect.curve.Curve`; moved to ``device``.
        data: ``DataSplits``-like object or mapping with a ``"train"`` split ``(x [n, ...], y [n])``.
        config: hyperparameters (default :class:`CurveTrainConfig()`).
        task: ``"classification"`` (cross-entropy) or ``"regression"`` (MSE); inferred from the data.
        device: where to train (default: the curve's device).
        callback: called with each epoch's history row.

    Returns:
        :class:`CurveTrainResult` with the curve and the per-epoch history.

    References:
        Garipov, Izmailov, Podoprikhin, Vetrov, Wilson (2018), "Loss Surfaces, Mode Connectivity, and Fast
        Ensembling of DNNs".
    """
    config = config or CurveTrainConfig()
    config.validate()
    if not isinstance(curve, Curve):
        raise TypeError(f"curve must be a zooscape.connect.Curve, got {type(curve).__name__}")
    x_tr, y_tr = get_split(data, "train")
    task = infer_task(data, y_tr, task)
    dev = torch.device(device) if device is not None else next(curve.parameters()).device
    curve.to(dev)
    params = curve.trainable_parameters()
    if not params:
        raise ValueError("the curve has nothing to train: num_bends=0 and both endpoints fixed")
    opt = CurveOptimizer(params, config)
    x_tr, y_tr = x_tr.to(dev), y_tr.to(dev)
    n, bs = x_tr.shape[0], config.batch_size
    if config.drop_last:
        slices = [slice(i * bs, (i + 1) * bs) for i in range(n // bs)]
    else:
        slices = batch_slices(n, bs)  # a trailing batch of one sample joins the previous one (BatchNorm)
    steps = len(slices)
    if steps == 0:
        raise ValueError(f"batch_size {bs} exceeds the {n} training samples with drop_last=True")
    total = max(1, config.epochs * steps)
    wd = float(config.weight_decay)
    dropout = _has_dropout(curve.template)
    fork_devices = [dev] if dev.type == "cuda" else []
    history: list[dict[str, float]] = []
    was_training = curve.training
    curve.train()
    try:
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            order = epoch_order(n, config.seed, epoch).to(dev)
            ts = sample_ts(config.seed, epoch, steps)
            sums = torch.zeros(3, dtype=torch.float64)
            seen = 0
            lr = config.lr
            with torch.random.fork_rng(devices=fork_devices, enabled=dropout):
                if dropout:
                    torch.manual_seed(_derive(config.seed, epoch, "dropout"))
                for s in range(steps):
                    if config.schedule == "garipov":
                        lr = config.lr * garipov_lr_factor(epoch, config.epochs)
                    else:
                        lr = config.lr * lr_factor(config.schedule, (epoch - 1) * steps + s, total, steps)
                    idx = order[slices[s]]
                    xb, yb = x_tr[idx], y_tr[idx]
                    loss, nll, out = curve_loss(curve, xb, yb, float(ts[s]), wd, task)
                    opt.zero_grad()
                    loss.backward()
                    opt.step(lr)
                    b = idx.shape[0]
                    with torch.no_grad():
                        err = (out.argmax(-1) != yb).double().sum() if task == "classification" else 0.0
                        sums += torch.tensor([float(loss) * b, float(nll) * b, float(err)], dtype=torch.float64)
                    seen += b
            row = {"epoch": float(epoch), "lr": float(lr), "train_loss": float(sums[0] / seen),
                   "train_nll": float(sums[1] / seen), "t_mean": float(ts.mean()),
                   "epoch_time_s": time.perf_counter() - t0}
            if task == "classification":
                row["train_error"] = float(sums[2] / seen)
            if not math.isfinite(row["train_loss"]):
                raise RuntimeError(f"curve training diverged: non-finite training loss in epoch {epoch} (lower lr)")
            history.append(row)
            if callback is not None:
                callback(row)
    finally:
        curve.train(was_training)
    return CurveTrainResult(curve=curve, history=history, config=config)
