"""Population-first training: N models of one architecture train together in one vectorised computation.

One model is a population of one: there is a single training code path. Each model keeps its own seed (data
order, dropout masks, augmentation), learning rate, weight decay and momentum, and its results do not depend on
which population it trained in (tests compare with :func:`zooscape.train.train_sequential`, a plain PyTorch loop).

Randomness is stateless: everything random in epoch ``e`` of a model comes from generators seeded by
``(data_seed, e, stream)``, so a run resumed from a :class:`PopulationState` continues exactly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import _flags, manual_mlp
from .config import Member, TrainConfig
from .layers import PopBatchNorm
from .losses import gather_rows, predictions, task_loss
from .memory import tune_allocator
from .optim import PopulationOptimizer
from .population import Population, models_from_states
from .schedule import lr_factor

STREAMS = {"order": 1, "dropout": 2, "augment": 3}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else MPS if available, else CPU; anything else -> ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"invalid device {device!r}: {e}") from None


def derive_seed(seed: int, epoch: int, stream: str) -> int:
    """A 63-bit seed for ``stream`` ("order", "dropout", "augment") of ``epoch`` of the model with ``seed``."""
    h = hashlib.blake2b(f"{int(seed)}:{int(epoch)}:{STREAMS[stream]}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def epoch_generator(seed: int, epoch: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator a model with ``seed`` uses for ``stream`` in ``epoch``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, epoch, stream))
    return g


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The permutation of ``n`` training samples a model with data seed ``seed`` uses in ``epoch``: ``[n]``."""
    return torch.randperm(n, generator=epoch_generator(seed, epoch, "order"))




@dataclass
class PopulationState:
    """Everything needed to resume a population after ``epoch``.

    Attributes:
        epoch: the last completed epoch.
        model_states: one state dict per member.
        optimizer_states: one flat optimizer-state dict per member.
        member_extra: one dict per member (status, reason, early-stopping bookkeeping).
    """

    epoch: int
    model_states: list[dict[str, Tensor]]
    optimizer_states: list[dict[str, Tensor]]
    member_extra: list[dict[str, Any]]

    def to_tensors(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        """Flat ``{key: tensor}`` and string metadata, ready for ``safetensors.torch.save_file``."""
        tensors: dict[str, Tensor] = {}
        for i, (ms, os_) in enumerate(zip(self.model_states, self.optimizer_states)):
            tensors.update({f"{i}/model/{k}": v.contiguous() for k, v in ms.items()})
            tensors.update({f"{i}/optim/{k}": v.contiguous() for k, v in os_.items()})
        meta = {"epoch": str(self.epoch), "n": str(len(self.model_states)), "extra": json.dumps(self.member_extra)}
        return tensors, meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], metadata: dict[str, str]) -> PopulationState:
        """Inverse of :meth:`to_tensors`."""
        try:
            n, epoch = int(metadata["n"]), int(metadata["epoch"])
            extra = json.loads(metadata["extra"])
        except (KeyError, ValueError) as e:
            raise ValueError(f"population state metadata is incomplete or corrupt: {e}") from None
        models: list[dict[str, Tensor]] = [{} for _ in range(n)]
        optims: list[dict[str, Tensor]] = [{} for _ in range(n)]
        for key, v in tensors.items():
            i, kind, name = key.split("/", 2)
            (models if kind == "model" else optims)[int(i)][name] = v
        return cls(epoch, models, optims, extra)


@dataclass
class EpochReport:
    """What the trainer reports after the epoch-0 evaluation and after every epoch (see ``train_population``)."""

    epoch: int
    metrics: list[dict[str, float]]
    status: list[str]
    reasons: list[str | None]
    population: Population = field(repr=False)  # the live population: read only, until training continues
    _optimizer: PopulationOptimizer = field(repr=False)
    _extra: list[dict[str, Any]] = field(repr=False)

    def state_dicts(self) -> list[dict[str, Tensor]]:
        """One CPU state dict per member."""
        return self.population.state_dicts()

    def member_views(self, index: int) -> dict[str, Tensor]:
        """Member ``index``'s parameters and buffers (keys of its state dict) as views into the population's
        tensors: no copy. Read only, and valid only until training continues."""
        own = self.population.net.state_dict()
        return {k: own[k][index] for k in self.population._names}

    def optimizer_states(self) -> list[dict[str, Tensor]]:
        """One flat optimizer-state dict per member (safetensors-ready)."""
        return [self._optimizer.member_state(i) for i in range(self.population.size)]

    def state(self, model_states: list[dict[str, Tensor]] | None = None,
              optimizer_states: list[dict[str, Tensor]] | None = None) -> PopulationState:
        """A :class:`PopulationState` to resume after this epoch (given: this epoch's :meth:`state_dicts` and
        :meth:`optimizer_states`, reused instead of copied again)."""
        return PopulationState(self.epoch, model_states or self.state_dicts(),
                               optimizer_states or self.optimizer_states(), json.loads(json.dumps(self._extra)))


@dataclass
class PopulationResult:
    """Outcome of :func:`train_population`: per-member metric history, final weights and status."""

    history: list[list[dict[str, float]]]
    state_dicts: list[dict[str, Tensor]]
    status: list[str]
    reasons: list[str | None]
    template: nn.Module = field(repr=False)

    @functools.cached_property
    def models(self) -> list[nn.Module]:
        """Plain single models (copies of the template model) holding each member's final weights, built on first
        access."""
        return models_from_states(self.template, self.state_dicts)


@torch.no_grad()
def evaluate_population(pop: Population, x: Tensor, y: Tensor, task: str, batch_size: int = 1024) -> dict[str, Tensor]:
    """Loss (and accuracy) of every member on the same data, in eval mode.

    Args:
        pop: the population.
        x: ``[n, *input_shape]`` inputs; y: ``[n]`` labels or ``[n, 1]`` targets.
        task: ``"classification"`` or ``"regression"``.

    Returns:
        ``{"loss": [N], "acc": [N]}`` (``acc`` only for classification).
    """
    was = pop.training
    pop.eval()
    n = x.shape[0]
    batch_size = max(1, min(batch_size, (1 << 13) // pop.size))  # bound the population batch (b * N rows)
    loss_sum = torch.zeros(pop.size, dtype=torch.float64, device=x.device)
    correct = torch.zeros(pop.size, dtype=torch.float64, device=x.device)
    for i in range(0, n, batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        out = pop.forward_shared(xb)
        b = xb.shape[0]
        yy = yb.unsqueeze(1).expand(b, pop.size, *yb.shape[1:])
        loss_sum += task_loss(out, yy, task).double() * b
        if task != "regression":
            correct += (predictions(out) == yy).double().sum(0)
    pop.train(was)
    res = {"loss": loss_sum / max(n, 1)}
    if task != "regression":
        res["acc"] = correct / max(n, 1)
    return res


def _clip_grads(params: list[Tensor], max_norm: float) -> None:
    """Clip each member's global gradient norm (as ``torch.nn.utils.clip_grad_norm_`` does for one model)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    sq = torch.stack([g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads]).sum(0)
    coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))


def _check_data(data: Any) -> None:
    for attr in ("task", "train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        if not hasattr(data, attr):
            raise TypeError(f"data must be a zooscape.data.DataSplits-like object; it lacks {attr!r}")


class _Run:
    """The state of one :func:`train_population` run, in steps: set up, (resume), per epoch ``train_epoch`` (a
    ``step`` per batch) then ``finish_epoch`` (freeze members that stopped or failed, ``evaluate``,
    ``update_status``, report), and ``result``."""

    def __init__(self, models: Sequence[nn.Module], data: Any, config: TrainConfig, members: Sequence[Member],
                 dev: torch.device, callback: Callable[[EpochReport], None] | None) -> None:
        self.config, self.dev, self.callback, self.task = config, dev, callback, data.task
        self.mem = [m.resolved(config) for m in members]
        self.n = n = len(models)
        self.pop = Population([m.to("cpu") for m in models]).to(dev)
        self.x_tr, self.y_tr = data.train_x.to(dev), data.train_y.to(dev)
        self.splits = {"train": (self.x_tr, self.y_tr), "val": (data.val_x.to(dev), data.val_y.to(dev)),
                       "test": (data.test_x.to(dev), data.test_y.to(dev))}
        self.params = list(self.pop.net.named_parameters())
        pdtype = self.params[0][1].dtype if self.params else torch.float32
        self.lr0 = torch.tensor([m.lr for m in self.mem], dtype=pdtype, device=dev)
        self.opt = PopulationOptimizer(
            self.params, config.optimizer,
            weight_decay=torch.tensor([m.weight_decay for m in self.mem], dtype=pdtype, device=dev),
            momentum=torch.tensor([m.momentum for m in self.mem], dtype=pdtype, device=dev),
            nesterov=config.nesterov, betas=config.betas, eps=config.eps,
        )
        self.augment = None
        if config.augment:
            from zooscape.data.augment import build_augment

            self.augment = build_augment(config.augment, padding=config.crop_padding)
        self.extra: list[dict[str, Any]] = [
            {"status": "running", "reason": None, "best_val": math.inf, "bad_epochs": 0} for _ in range(n)
        ]
        self.frozen: dict[int, dict[str, Tensor]] = {}  # stopped/failed members' weights and BN statistics
        self.history: list[list[dict[str, float]]] = [[] for _ in range(n)]
        self.start = 1
        n_train = self.x_tr.shape[0]
        bs = config.batch_size
        self.steps = n_train // bs if config.drop_last else math.ceil(n_train / bs)
        # BatchNorm cannot normalise a batch of one sample in training: a trailing batch of one joins the batch
        # before it (as in connect.bn.batch_slices); models without BatchNorm keep their batches unchanged
        has_bn = any(isinstance(m, PopBatchNorm) for m in self.pop.modules())
        self.merge_last = not config.drop_last and has_bn and n_train % bs == 1 and n_train > bs
        if self.merge_last:
            self.steps -= 1
        if self.steps == 0:
            raise ValueError(f"batch_size {bs} exceeds the {n_train} training samples with drop_last=True")
        self.total_steps = max(1, config.epochs * self.steps)
        self.running_acc = config.train_metrics == "running" and self.task != "regression"
        self.model_major = self.pop.layout == "stacked"
        self.flat: tuple[Tensor, Tensor] | None = None
        self.try_flat = _flags.current().flat_optim
        self.manual = (manual_mlp.plan(self.pop, self.x_tr, self.task, augment=self.augment is not None)
                       if _flags.current().manual_mlp else None)  # ReLU MLPs: steps without autograd

    # ------------------------------------------------------------------------------------------- setup
    def resume_from(self, resume: PopulationState) -> None:
        """Load members, optimiser states and bookkeeping of ``resume``; training continues after its epoch."""
        if len(resume.model_states) != self.n:
            raise ValueError(f"resume state holds {len(resume.model_states)} members, population has {self.n}")
        for i in range(self.n):
            self.pop.load_member_state_dict(i, resume.model_states[i])
            self.opt.load_member_state(i, resume.optimizer_states[i])
        self.extra = json.loads(json.dumps(resume.member_extra))
        for i, e in enumerate(self.extra):
            if e["status"] != "running":
                self.frozen[i] = self.pop.member_state_dict(i)
        self.start = resume.epoch + 1

    def lr_at(self, step: int) -> Tensor:
        """Every member's learning rate at global step ``step``: ``[N]``."""
        c = self.config
        factor = lr_factor(c.schedule, min(step, self.total_steps - 1), self.total_steps, self.steps,
                           warmup_epochs=c.warmup_epochs, step_size=c.step_size, gamma=c.gamma)
        return self.lr0 * factor

    # ------------------------------------------------------------------------------------------- training
    def train_epoch(self, epoch: int) -> tuple[Tensor, Tensor, int, Tensor]:
        """One epoch of optimisation steps. Returns (summed loss ``[N]`` float64, correct predictions ``[N]``,
        samples seen, the learning rates of the last step ``[N]``)."""
        n, dev, bs = self.n, self.dev, self.config.batch_size
        seeds = [m.data_seed for m in self.mem]
        perm = torch.stack([epoch_order(self.x_tr.shape[0], s, epoch) for s in seeds]).to(dev)  # [N, n_train]
        if self.pop.dropouts:
            self.pop.set_dropout_generators([epoch_generator(s, epoch, "dropout", dev) for s in seeds])
        aug_gens = [epoch_generator(s, epoch, "augment", dev) for s in seeds] if self.augment else None
        active = torch.tensor([e["status"] == "running" for e in self.extra], device=dev)
        all_active = all(e["status"] == "running" for e in self.extra)
        run_loss = torch.zeros(n, dtype=torch.float64, device=dev)
        run_correct = torch.zeros(n, dtype=torch.float64, device=dev)
        seen = 0
        lr = self.lr0
        for s in range(self.steps):
            end = None if self.merge_last and s == self.steps - 1 else (s + 1) * bs
            idx = perm[:, s * bs:end]  # [N, b]
            lr = self.lr_at((epoch - 1) * self.steps + s)
            loss, correct = self.step(idx, aug_gens, lr, active, all_active)
            b = idx.shape[1]
            with torch.no_grad():
                run_loss += loss.double() * b  # also how a member diverging mid-epoch is noticed
                if correct is not None:
                    run_correct += correct
            seen += b
        return run_loss, run_correct, seen, lr

    def step(self, idx: Tensor, aug_gens: list[torch.Generator] | None, lr: Tensor, active: Tensor,
             all_active: bool) -> tuple[Tensor, Tensor | None]:
        """One optimisation step on the samples ``idx`` (``[N, b]``, one row per member). Returns the members'
        mean losses ``[N]`` (detached) and, for running accuracy, their correct predictions ``[N]``."""
        pop, n, augment = self.pop, self.n, self.augment
        if self.manual is not None:  # forward, loss and backward by hand; gradients overwritten, not accumulated
            yb = gather_rows(self.y_tr, idx)  # [N, b]
            loss, pred = self.manual(gather_rows(self.x_tr, idx), yb, predict=self.running_acc)
            self.update(lr, active, all_active)
            return loss, (pred == yb).double().sum(1) if pred is not None else None
        yb = gather_rows(self.y_tr, idx).transpose(0, 1)  # [b, N, ...]
        if self.model_major:  # stacked layout: [N, b, ...] is already [N*b, ...]
            xb = gather_rows(self.x_tr, idx)
            if augment is not None:
                xb = torch.stack([augment(xb[i], aug_gens[i]) for i in range(n)], 0)
            out = pop.forward_model_major(xb)  # [b, N, K]
        else:  # channel layout: [b, N, ...] folds into [b, N*C, ...] without a transposing copy
            xb = gather_rows(self.x_tr, idx.t())
            if augment is not None:
                xb = torch.stack([augment(xb[:, i], aug_gens[i]) for i in range(n)], 1)
            out = pop(xb)
        loss = task_loss(out, yb, self.task)
        _ = self.flat[1].zero_() if self.flat is not None else pop.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # flat-buffer gradients are strided views; autograd warns, then works
            warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
            loss.sum().backward()
        self.update(lr, active, all_active)
        with torch.no_grad():
            correct = (predictions(out.detach()) == yb).double().sum(0) if self.running_acc else None
        return loss.detach(), correct

    def update(self, lr: Tensor, active: Tensor, all_active: bool) -> None:
        """After a backward pass: (once) move to the flat buffer, clip, and step the optimiser."""
        if self.try_flat:  # once every parameter has a gradient, update through one flat [N, P] buffer
            self.try_flat = False
            if all(p.grad is not None for _, p in self.params):
                self.flat = self.pop.flatten_parameters()
                if self.flat is not None:
                    self.opt.use_flat(*self.flat)
        if self.config.grad_clip is not None:
            _clip_grads([p for _, p in self.params], self.config.grad_clip)
        self.opt.step(lr, active, all_active)

    # ------------------------------------------------------------------------------------------- bookkeeping
    def finish_epoch(self, epoch: int, run_loss: Tensor, run_correct: Tensor, seen: int, seconds_from: float,
                     lr: Tensor) -> None:
        """After an epoch's steps: mark members that diverged mid-epoch as failed, put back the weights of
        stopped/failed members, evaluate and report."""
        for i in torch.nonzero(~torch.isfinite(run_loss)).flatten().tolist():
            if self.extra[i]["status"] == "running":  # diverged mid-epoch: freeze it where it is, mark it failed
                self.extra[i]["status"] = "failed"
                self.extra[i]["reason"] = f"non-finite training loss in epoch {epoch}"
                self.frozen[i] = self.pop.member_state_dict(i)
        for i, state in self.frozen.items():  # stopped/failed members keep their weights and BN statistics
            self.pop.load_member_state_dict(i, state)
        running = None
        if self.config.train_metrics == "running":
            running = {"loss": run_loss / seen}
            if self.task != "regression":
                running["acc"] = run_correct / seen
        self.report(epoch, running, time.perf_counter() - seconds_from, lr)

    def evaluate(self, running: dict[str, Tensor] | None) -> list[dict[str, float]]:
        """One metric row per member: ``{split}_{loss,acc}`` (train from ``running`` when given)."""
        ev = {}
        for name, (x, y) in self.splits.items():
            if name == "train" and running is not None:
                ev[name] = running
            elif x.shape[0] > 0:
                ev[name] = evaluate_population(self.pop, x, y, self.task, self.config.eval_batch_size)
        rows: list[dict[str, float]] = [{} for _ in range(self.n)]
        for name, res in ev.items():
            for key, vals in res.items():
                for i, v in enumerate(vals.tolist()):
                    rows[i][f"{name}_{key}"] = float(v)
        return rows

    def update_status(self, epoch: int, i: int, row: dict[str, float]) -> None:
        """Fail member ``i`` on a non-finite training loss, stop it early when its validation loss has not improved
        for ``early_stopping_patience`` epochs (epoch 0 only sets the best validation loss)."""
        e, patience = self.extra[i], self.config.early_stopping_patience
        if e["status"] == "running" and epoch > 0:
            tl = row.get("train_loss", math.nan)
            if not math.isfinite(tl):
                e["status"], e["reason"] = "failed", f"non-finite training loss ({tl}) in epoch {epoch}"
                self.frozen[i] = self.pop.member_state_dict(i)
            elif patience is not None and "val_loss" in row:
                v = row["val_loss"]
                if v < e["best_val"]:
                    e["best_val"], e["bad_epochs"] = v, 0
                else:
                    e["bad_epochs"] += 1
                    if e["bad_epochs"] >= patience:
                        e["status"] = "stopped"
                        e["reason"] = f"early stopping: no better val_loss for {patience} epochs"
                        self.frozen[i] = self.pop.member_state_dict(i)
        elif epoch == 0 and "val_loss" in row:
            e["best_val"] = row["val_loss"]

    def report(self, epoch: int, running: dict[str, Tensor] | None, seconds: float, lr: Tensor) -> None:
        """Evaluate, update statuses, append to the history and call the callback."""
        rows = self.evaluate(running)
        lrs = lr.tolist()
        for i in range(self.n):
            rows[i]["lr"] = float(lrs[i])
            rows[i]["epoch_time_s"] = seconds
            self.update_status(epoch, i, rows[i])
            self.history[i].append(rows[i])
        if self.callback is not None:
            self.callback(EpochReport(epoch, rows, [e["status"] for e in self.extra],
                                      [e["reason"] for e in self.extra], self.pop, self.opt, self.extra))

    def result(self) -> PopulationResult:
        self.pop.set_dropout_generators(None)
        status = ["done" if e["status"] == "running" else e["status"] for e in self.extra]
        return PopulationResult(self.history, self.pop.state_dicts(), status, [e["reason"] for e in self.extra],
                                self.pop.template)


def train_population(
    models: Sequence[nn.Module],
    data: Any,
    config: TrainConfig,
    members: Sequence[Member] | None = None,
    *,
    device: str | torch.device = "auto",
    resume: PopulationState | None = None,
    callback: Callable[[EpochReport], None] | None = None,
    progress: bool = False,
) -> PopulationResult:
    """Train N models of one architecture together.

    Args:
        models: N initialised models with identical architecture (their weights are copied; they are not modified).
        data: a :class:`zooscape.data.DataSplits` (train/val/test tensors and ``task``).
        config: hyperparameters shared by the population.
        members: one :class:`Member` per model (seed, own lr/weight decay/momentum, data seed). Default: seeds
            ``0..N-1``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        resume: continue after ``resume.epoch`` (from a state reported by an earlier run's callback).
        callback: called with an :class:`EpochReport` after the epoch-0 evaluation and after every epoch.
        progress: show a tqdm progress bar over epochs.

    Returns:
        :class:`PopulationResult` with per-member histories (one metric dict per epoch, from epoch 0 or from the
        resumed epoch + 1), final state dicts, statuses ("done", "failed", "stopped") and reasons.

    Metrics per epoch and member: ``train_loss, train_acc, val_loss, val_acc, test_loss, test_acc`` (accuracies
    only for classification; regression losses are MSE), ``lr`` (at the epoch's last step), ``epoch_time_s``.
    Threads: this function uses torch's current thread setting (:func:`zooscape.train.threads.thread_policy`
    chooses one for the CLI and ``train_zoo``).
    """
    _check_data(data)
    if len(models) == 0:
        raise ValueError("train_population needs at least one model")
    tune_allocator()
    if members is None:
        members = [Member(seed=i) for i in range(len(models))]
    if len(members) != len(models):
        raise ValueError(f"got {len(models)} models but {len(members)} members")
    config.validate()
    run = _Run(models, data, config, members, resolve_device(device), callback)
    if resume is not None:
        run.resume_from(resume)
    else:
        run.report(0, None, 0.0, run.lr_at(0))
    epochs = range(run.start, config.epochs + 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(epochs), desc=f"population of {run.n}", unit="epoch")
    run.pop.train()
    for epoch in epochs:
        t0 = time.perf_counter()
        run_loss, run_correct, seen, lr = run.train_epoch(epoch)
        run.finish_epoch(epoch, run_loss, run_correct, seen, t0, lr)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return run.result()
