"""Training configuration shared by a population, and the per-model members."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .optim import OPTIMIZERS
from .schedule import SCHEDULES


@dataclass
class TrainConfig:
    """Hyperparameters shared by every model of a population.

    ``lr``, ``momentum`` and ``weight_decay`` are defaults that each :class:`Member` may override.

    Attributes:
        epochs: training epochs (epoch 0 is the evaluation before training).
        batch_size: samples per step and model.
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr, momentum, weight_decay: default per-model hyperparameters (momentum is ignored by Adam/AdamW).
        nesterov: Nesterov momentum (SGD).
        betas, eps: Adam/AdamW moment decay rates and epsilon.
        schedule: ``"constant"``, ``"step"``, ``"cosine"`` or ``"onecycle"``; ``warmup_epochs`` adds a linear warm-up.
        step_size, gamma: the ``"step"`` schedule (multiply by gamma every step_size epochs).
        grad_clip: clip each model's global gradient norm to this value (``None``: off).
        early_stopping_patience: stop a model after this many epochs without a better validation loss.
        augment: image augmentations (``"crop"``, ``"flip"``) applied per model with its own generator.
        crop_padding: padding of the random crop.
        train_metrics: ``"eval"`` evaluates the training split in eval mode after every epoch; ``"running"``
            reports the mean training loss/accuracy seen during the epoch (cheaper).
        eval_batch_size: batch size of evaluation passes.
        drop_last: drop the last incomplete training batch of every epoch.
    """

    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    step_size: int = 30
    gamma: float = 0.1
    grad_clip: float | None = None
    early_stopping_patience: int | None = None
    augment: tuple[str, ...] = field(default_factory=tuple)
    crop_padding: int = 4
    train_metrics: str = "eval"
    eval_batch_size: int = 1024
    drop_last: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"TrainConfig.epochs must be an integer >= 0, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"TrainConfig.batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer {self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule {self.schedule!r} is not one of {SCHEDULES}")
        if self.train_metrics not in ("eval", "running"):
            raise ValueError(f"TrainConfig.train_metrics must be 'eval' or 'running', got {self.train_metrics!r}")
        for name in ("lr", "weight_decay", "momentum", "warmup_epochs"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be a number >= 0, got {v!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"TrainConfig.grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError("TrainConfig.early_stopping_patience must be >= 1 or None")
        self.augment = tuple(self.augment)
        self.betas = tuple(self.betas)  # type: ignore[assignment]

    def to_dict(self) -> dict:
        """JSON-ready dict of the fields."""
        d = asdict(self)
        d["augment"] = list(self.augment)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of the configurable fields (used to validate zoo specs)."""
        return [f.name for f in fields(cls)]


@dataclass
class Member:
    """One model of a population: its seed and its own hyperparameters.

    Attributes:
        seed: the model's seed (initialisation is done by whoever builds the model; see ``create_model(seed=)``).
        lr, weight_decay, momentum: overrides of the :class:`TrainConfig` defaults (``None``: use the default).
        data_seed: seed of the data order, dropout masks and augmentation (``None``: ``seed``).
    """

    seed: int = 0
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    data_seed: int | None = None

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Names of the per-model settings (the ``[training]`` keys that may differ within one population).

        This is the one source of the per-model keys: the zoo's grouping (``zoo/grid.py``) and builders
        (``zoo/build.py``) derive theirs from it, so a new per-model knob is one new field here.
        """
        return tuple(f.name for f in fields(cls))

    def resolved(self, cfg: TrainConfig) -> Member:
        """A copy with every ``None`` replaced by the config default."""
        return Member(
            seed=self.seed,
            lr=cfg.lr if self.lr is None else float(self.lr),
            weight_decay=cfg.weight_decay if self.weight_decay is None else float(self.weight_decay),
            momentum=cfg.momentum if self.momentum is None else float(self.momentum),
            data_seed=self.seed if self.data_seed is None else int(self.data_seed),
        )
