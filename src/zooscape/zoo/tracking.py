"""Experiment tracking: mirror a zoo's per-model metrics to TensorBoard, Weights & Biases or MLflow.

The catalog stays the source of truth; a tracker only copies rows to an outside tool, and **a tracker failure
never fails training or an analysis**: the first exception is reported once on stderr and the tracker switches
itself off.

One command = **one grouped run** (a zoo's training, or one zoo-wide analysis), named after the zoo and the
command. Inside the run every model has its own series, keyed ``"<model_id>/<metric>"`` (pair results:
``"<model_id>-<other_id>/<metric>"``), with the epoch as step:

- ``tensorboard``: ``torch.utils.tensorboard.SummaryWriter`` event files in ``<log_dir>/<run>/``; scalar tag
  ``<model_id>/<metric>``, ``global_step`` = epoch (``pip install "zooscape[tensorboard]"``).
- ``wandb``: one run (``mode`` ``offline`` by default: no network, files under ``<log_dir>/wandb/``;
  ``online`` syncs, ``disabled`` logs nothing). Each ``log`` call holds one epoch of several models, with
  ``epoch`` declared as the step metric of every series (``pip install "zooscape[wandb]"``).
- ``mlflow``: an MLflow file store at ``<log_dir>`` (``file:`` URI, no server; ``MLFLOW_ALLOW_FILE_STORE=true``
  is set for MLflow 3, which keeps that store behind an opt-in), experiment = the zoo's name, one run per command,
  metric ``<model_id>/<metric>`` with ``step`` = epoch (``pip install "zooscape[mlflow]"``).

References:
    The Rethink seed's ``wandb`` modes (online, offline, disabled).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["BACKENDS", "NullTracker", "Tracker", "make_tracker"]

BACKENDS = ("none", "tensorboard", "wandb", "mlflow")
WANDB_MODES = ("online", "offline", "disabled")


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, int | float) and math.isfinite(float(v))


class Tracker:
    """Base class: turns catalog rows into ``(key, value, step)`` points; subclasses write them.

    Every public method swallows exceptions of the backend (reported once on stderr, then the tracker is off).

    Args:
        name: backend name (for messages).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.enabled = True

    # the backend's writer: points of one step
    def _write(self, step: int, values: Mapping[str, float]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close(self) -> None:  # pragma: no cover - abstract
        pass

    def _guard(self, fn: Any, *args: Any) -> None:
        if not self.enabled:
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a logger must never fail the run
            self.enabled = False
            print(f"warning: --log {self.name} failed and is switched off ({type(exc).__name__}: {exc}); "
                  "the catalog still holds every result", file=sys.stderr)

    def _by_step(self, points: Iterable[tuple[str, int, float]]) -> None:
        steps: dict[int, dict[str, float]] = {}
        for key, step, value in points:
            if _finite(value):
                steps.setdefault(int(step), {})[key] = float(value)
        for step in sorted(steps):
            self._write(step, steps[step])

    def log_rows(self, rows: Iterable[tuple[str, int, str, float | None]]) -> None:
        """Log training metrics rows ``(model_id, epoch, name, value)`` (as the catalog stores them).

        Args:
            rows: metric rows; NaN/None values are skipped.
        """
        rows = list(rows)
        self._guard(self._by_step, [(f"{m}/{n}", e, v) for m, e, n, v in rows])

    def log_results(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Log analysis rows (dicts with ``model_id``, optional ``other_id``, ``epoch``, ``metric``, ``value``).

        Args:
            rows: analysis rows; rows without an epoch get step 0.
        """
        points = []
        for r in rows:
            who = r["model_id"] if r.get("other_id") is None else f"{r['model_id']}-{r['other_id']}"
            points.append((f"{who}/{r['metric']}", 0 if r.get("epoch") is None else r["epoch"], r.get("value")))
        self._guard(self._by_step, points)

    def close(self) -> None:
        """Flush and close the run."""
        self._guard(self._close)
        self.enabled = False

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullTracker(Tracker):
    """``--log none``: logs nothing."""

    def __init__(self) -> None:
        super().__init__("none")
        self.enabled = False

    def _write(self, step: int, values: Mapping[str, float]) -> None:
        pass

    def _close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    """Scalars through ``torch.utils.tensorboard.SummaryWriter`` (event files in ``log_dir/run``)."""

    def __init__(self, log_dir: Path, run: str, config: Mapping[str, Any]) -> None:
        super().__init__("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(log_dir) / run
        self.writer = SummaryWriter(log_dir=str(self.path))
        self.writer.add_text("config", "```\n" + repr(dict(config)) + "\n```")

    def _write(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)

    def _close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """One Weights & Biases run; ``epoch`` is the step metric of every series."""

    def __init__(self, log_dir: Path, run: str, config: Mapping[str, Any], mode: str, project: str) -> None:
        super().__init__("wandb")
        if mode not in WANDB_MODES:
            raise ValueError(f"wandb mode must be one of {WANDB_MODES}, got {mode!r}")
        import wandb

        Path(log_dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, name=run, dir=str(log_dir), mode=mode, config=dict(config),
                              settings=wandb.Settings(console="off", silent=True, x_disable_stats=True,
                                                      init_timeout=300, x_service_wait=300))  # busy machines
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")

    def _write(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log({"epoch": step, **values})

    def _close(self) -> None:
        self.run.finish()


class MlflowTracker(Tracker):
    """One MLflow run in a local file store (no server)."""

    def __init__(self, log_dir: Path, run: str, config: Mapping[str, Any], experiment: str) -> None:
        super().__init__("mlflow")
        import os

        # MLflow 3 keeps the file store (the "local file store": no server, no database driver) behind
        # this opt-in; a user who set it otherwise keeps their choice
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        Path(log_dir).mkdir(parents=True, exist_ok=True)
        self.uri = Path(log_dir).resolve().as_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run).info.run_id
        params = [(k, str(v)[:500]) for k, v in dict(config).items()][:100]
        if params:
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params])

    def _write(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def _close(self) -> None:
        self.client.set_terminated(self.run_id)


class _LazyTracker(Tracker):
    """Starts the real tracker at its first point (so that a command that logs nothing creates no run)."""

    def __init__(self, name: str, start: Any) -> None:
        super().__init__(name)
        self._start, self._real = start, None

    def _write(self, step: int, values: Mapping[str, float]) -> None:
        if self._real is None:
            self._real = self._start()
        if self._real.enabled:
            self._real._write(step, values)

    def _close(self) -> None:
        if self._real is not None and self._real.enabled:
            self._real._close()


def make_tracker(backend: str, log_dir: str | Path, run: str, config: Mapping[str, Any] | None = None,
                 wandb_mode: str = "offline", project: str = "zooscape", lazy: bool = False) -> Tracker:
    """Start a tracker (never raises for a backend problem: a tracker that cannot start is reported and off).

    Args:
        backend: one of :data:`BACKENDS`.
        log_dir: where the backend writes (TensorBoard event files, the wandb folder, the MLflow file store).
        run: run name (e.g. ``"<zoo>-train"``).
        config: flat settings recorded with the run.
        wandb_mode: ``online``, ``offline`` (default: no network) or ``disabled``.
        project: wandb project / MLflow experiment name.
        lazy: start the backend at the first logged point (``log_dir`` is created then, not now).

    Returns:
        Tracker (a :class:`NullTracker` for ``"none"`` or when the backend could not start).

    Raises:
        ValueError: unknown backend or wandb mode.
    """
    if backend not in BACKENDS:
        raise ValueError(f"--log must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if wandb_mode not in WANDB_MODES:
        raise ValueError(f"wandb mode must be one of {', '.join(WANDB_MODES)}, got {wandb_mode!r}")
    config = dict(config or {})
    if backend == "none":
        return NullTracker()
    if lazy:
        return _LazyTracker(backend, lambda: make_tracker(backend, log_dir, run, config, wandb_mode, project))
    try:
        if backend == "tensorboard":
            return TensorBoardTracker(Path(log_dir), run, config)
        if backend == "wandb":
            return WandbTracker(Path(log_dir), run, config, wandb_mode, project)
        if backend == "mlflow":
            return MlflowTracker(Path(log_dir), run, config, project)
    except Exception as exc:  # noqa: BLE001 - missing package, unwritable folder, ...
        extra = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}[backend]
        hint = f' (pip install "zooscape[{extra}]")' if isinstance(exc, ImportError) else ""
        print(f"warning: --log {backend} could not start{hint}: {type(exc).__name__}: {exc}; training goes on "
              "without it", file=sys.stderr)
    return NullTracker()
