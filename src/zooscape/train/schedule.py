"""Learning-rate schedules as pure functions of the step.

Each schedule maps ``(step, total_steps, steps_per_epoch)`` to a multiplier of the base learning rate, so a run
resumed at any step continues exactly. A linear warm-up can precede any schedule.

References:
    Loshchilov & Hutter, 2017 (SGDR, cosine annealing); Smith & Topin, 2019 (super-convergence, one-cycle);
    Goyal et al., 2017 (linear warm-up).
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "step", "cosine", "onecycle")


def lr_factor(
    schedule: str,
    step: int,
    total_steps: int,
    steps_per_epoch: int,
    *,
    warmup_epochs: float = 0.0,
    step_size: int = 30,
    gamma: float = 0.1,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> float:
    """Multiplier of the base learning rate used for optimiser step ``step`` (0-based).

    Args:
        schedule: ``"constant"``, ``"step"`` (x ``gamma`` every ``step_size`` epochs), ``"cosine"`` (to 0 at the
            end), or ``"onecycle"`` (``torch.optim.lr_scheduler.OneCycleLR`` with cosine annealing: from
            ``1/div_factor`` up to 1 over ``pct_start`` of training, then down to ``1/(div_factor*final_div_factor)``).
        step: optimiser step index, ``0 <= step < total_steps``.
        total_steps: steps in the whole run.
        steps_per_epoch: steps per epoch (used by ``step`` and the warm-up).
        warmup_epochs: linear warm-up from 0 over this many epochs, multiplied onto the schedule.

    Returns:
        The multiplier (a float).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if schedule == "constant":
        f = 1.0
    elif schedule == "step":
        f = gamma ** (step // max(1, steps_per_epoch * step_size))
    elif schedule == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
    else:
        up = float(pct_start * total_steps) - 1
        down = float(total_steps) - 1
        lo, hi, end = 1.0 / div_factor, 1.0, 1.0 / (div_factor * final_div_factor)
        if step <= up:
            pct = step / up if up > 0 else 1.0
            f = hi + (lo - hi) / 2.0 * (math.cos(math.pi * pct) + 1)
        else:
            pct = (step - up) / (down - up) if down > up else 1.0
            f = end + (hi - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    if warmup_epochs > 0:
        f *= min(1.0, (step + 1) / (warmup_epochs * steps_per_epoch))
    return f
