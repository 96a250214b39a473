"""The ``DataSplits`` container: one data set held in memory as train/val/test tensors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["DataSplits", "SPLIT_NAMES", "TASKS"]

SPLIT_NAMES = ("train", "val", "test")
TASKS = ("classification", "regression")


@dataclass(frozen=True, eq=False)  # eq on tensors is ambiguous: compare fields explicitly
class DataSplits:
    """A data set split into train/val/test tensors, all in memory.

    ``x`` tensors are float32 ``[n, *input_shape]``. ``y`` tensors are int64 ``[n]`` with values in
    ``[0, num_outputs)`` for classification, float32 ``[n, 1]`` for regression.

    Attributes:
        name: canonical data set name (e.g. ``"digits"``).
        task: ``"classification"`` or ``"regression"``.
        num_outputs: number of classes, or 1 for regression.
        input_shape: per-sample shape, e.g. ``(64,)``, ``(1, 28, 28)``, ``(1, 40)``.
        train_x, train_y, val_x, val_y, test_x, test_y: the split tensors.
        meta: provenance (JSON-friendly scalars/lists): ``seed``, ``train_fraction``, ``label_noise``,
            ``n_noisy``, ``source``, ``options``, ...
        train_y_clean: training labels before label noise (same shape/dtype as ``train_y``); equal to
            ``train_y`` when ``label_noise == 0``.
    """

    name: str
    task: str
    num_outputs: int
    input_shape: tuple[int, ...]
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    train_y_clean: Tensor | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        if self.train_y_clean is None:
            object.__setattr__(self, "train_y_clean", self.train_y)
        for split in SPLIT_NAMES:
            x, y = self.split(split)
            self._check_pair(split, x, y)
        if self.train_y_clean.shape != self.train_y.shape or self.train_y_clean.dtype != self.train_y.dtype:
            raise ValueError(
                f"train_y_clean must match train_y: got {tuple(self.train_y_clean.shape)} "
                f"{self.train_y_clean.dtype} vs {tuple(self.train_y.shape)} {self.train_y.dtype}"
            )

    def _check_pair(self, split: str, x: Tensor, y: Tensor) -> None:
        if x.dtype != torch.float32:
            raise ValueError(f"{split}_x must be float32, got {x.dtype}")
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{split}_x has per-sample shape {tuple(x.shape[1:])}, expected {self.input_shape}"
            )
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{split}_y has {y.shape[0]} rows but {split}_x has {x.shape[0]}")
        if self.task == "classification":
            if y.dtype != torch.int64 or y.dim() != 1:
                raise ValueError(f"{split}_y must be int64 of shape [n], got {y.dtype} {tuple(y.shape)}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_outputs):
                raise ValueError(f"{split}_y has labels outside [0, {self.num_outputs})")
        elif y.dtype != torch.float32 or tuple(y.shape[1:]) != (self.num_outputs,):
            raise ValueError(
                f"{split}_y must be float32 of shape [n, {self.num_outputs}], got {y.dtype} {tuple(y.shape)}"
            )

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """Return the ``(x, y)`` tensors of one split.

        Args:
            name: ``"train"``, ``"val"`` or ``"test"``.

        Returns:
            ``(x [n, *input_shape], y [n] or [n, 1])``.
        """
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; valid splits: {list(SPLIT_NAMES)}")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return int(self.train_x.shape[0])

    @property
    def n_val(self) -> int:
        """Number of validation samples."""
        return int(self.val_x.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test samples."""
        return int(self.test_x.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes (classification only)."""
        if self.task != "classification":
            raise ValueError(f"data set {self.name!r} is a {self.task} task and has no classes")
        return self.num_outputs

    def to(self, device: torch.device | str) -> DataSplits:
        """Return a copy with every tensor moved to ``device``.

        Args:
            device: target device, e.g. ``"cuda"``.

        Returns:
            A new ``DataSplits`` (``meta`` is shared, tensors are moved).
        """
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **moved)

    def __repr__(self) -> str:
        return (
            f"DataSplits(name={self.name!r}, task={self.task!r}, num_outputs={self.num_outputs}, "
            f"input_shape={self.input_shape}, n_train={self.n_train}, n_val={self.n_val}, "
            f"n_test={self.n_test})"
        )
