"""What a ``pl.Trainer`` knows about the run: its folder and its time budget."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pytorch_lightning.callbacks import Timer

if TYPE_CHECKING:
    import pytorch_lightning as pl


def time_budget(trainer: pl.Trainer) -> Timer | None:
    """The ``Timer`` of ``trainer.max_time`` (or a user's ``Timer`` with a duration), else ``None``."""
    timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
    return timer if timer is not None and timer.time_remaining() is not None else None


def run_progress(step: int, total_steps: int, timer: Timer | None = None) -> float:
    """Share of a run done, in [0, 1], for step-driven schedules: ``step / total_steps``, or the
    elapsed share of a ``Timer``'s duration (``trainer.max_time``) when that is further along, so
    a run that a slow machine stops by time still ends its schedule there."""
    progress = step / max(total_steps, 1)
    remaining = timer.time_remaining() if timer is not None else None
    if remaining is not None:
        elapsed = timer.time_elapsed()
        progress = max(progress, elapsed / max(elapsed + remaining, 1e-9))
    return min(max(progress, 0.0), 1.0)


def run_dir(trainer: "pl.Trainer") -> Path:
    """The run's folder without a collective call (``trainer.log_dir`` broadcasts under DDP, so
    it must not be called from rank zero alone): the first TensorBoard / CSV logger's versioned
    folder, else ``trainer.default_root_dir``."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, (TensorBoardLogger, CSVLogger)):
            return Path(logger.log_dir)
    return Path(trainer.default_root_dir)
