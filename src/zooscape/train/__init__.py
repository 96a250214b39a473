"""Population-first training (one model is a population of one).

Public API:
    :class:`TrainConfig`, :class:`Member`, :func:`train_population`, :class:`PopulationState`,
    :class:`EpochReport`, :class:`PopulationResult`, :class:`Population`, :func:`evaluate_population`,
    :func:`train_sequential` (plain PyTorch reference loop), :func:`lr_factor`, :func:`resolve_device`.
"""

from .config import Member, TrainConfig
from .optim import OPTIMIZERS, PopulationOptimizer
from .population import Population
from .schedule import SCHEDULES, lr_factor
from .sequential import train_sequential
from .trainer import (
    EpochReport,
    PopulationResult,
    PopulationState,
    derive_seed,
    epoch_generator,
    epoch_order,
    evaluate_population,
    resolve_device,
    train_population,
)

__all__ = [
    "OPTIMIZERS", "SCHEDULES", "EpochReport", "Member", "Population", "PopulationOptimizer", "PopulationResult",
    "PopulationState", "TrainConfig", "derive_seed", "epoch_generator", "epoch_order", "evaluate_population",
    "lr_factor", "resolve_device", "train_population", "train_sequential",
]
