"""``SceneMotionModule``: what the three LightningModules share, so that each holds its own training logic only.

* checkpoints tagged with the model class, another model's checkpoint refused with one message
  (``on_save_checkpoint`` / ``on_load_checkpoint``; ``utils.checkpoints``);
* the data checks of ``setup`` (``check_image_size``) and the once-per-run warning that a
  paper-scale (GPU) configuration is training on a CPU (``warn_gpu_scale``);
* channels-last convolutions (``use_channels_last``);
* the optimiser: ``configure_optimizers`` builds ``optimizer()`` and, when ``lr_lambda`` gives a
  multiplier per step, a per-step ``LambdaLR`` schedule; ``cosine_lr_lambda`` decays the rate to 5% over the
  run, by steps or by ``trainer.max_time``, whichever is further along (the Hamiltonian module's
  ``lr_schedule: cosine``).

``configure_models`` / ``configure_metrics`` style: subclasses build their ``backbone`` model and
metrics in ``__init__``, and override ``optimizer`` and ``lr_lambda``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from utils.checkpoints import MODEL_TAG_KEY, check_checkpoint_model
from utils.trainer import run_progress, time_budget

LR_SCHEDULES = ("constant", "cosine")


def check_lr_schedule(value: str) -> None:
    """One clear message for an unknown ``lr_schedule`` (see ``SceneMotionModule.lr_lambda``)."""
    if value not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {value!r}.")


class SceneMotionModule(pl.LightningModule):
    """The shared base of ``EquivariantSceneModule``, ``HamiltonianMotionModule`` and ``SequenceJudgeModule``."""

    _warned_scale = False

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[MODEL_TAG_KEY] = type(self).__name__

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse another model's checkpoint before its state dict is loaded (one clear message
        instead of a list of missing keys)."""
        check_checkpoint_model(checkpoint, type(self).__name__)

    # ------------------------------------------------------------------ setup checks
    @property
    def datamodule(self):
        """The trainer's DataModule, or ``None`` (no trainer, or plain dataloaders)."""
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def check_image_size(self, image_size: int, message: str) -> None:
        """Raise ``ValueError(message.format(size=..., image_size=...))`` when the DataModule's frames are not ``image_size``."""
        dm = self.datamodule
        if dm is not None and getattr(dm, "image_size", None) is not None and int(dm.image_size) != image_size:
            raise ValueError(message.format(size=int(dm.image_size), image_size=image_size))

    def warn_gpu_scale(self, is_gpu_scale: bool, message: str) -> None:
        """Warn once per module that a paper-scale (GPU) configuration runs on a CPU."""
        if is_gpu_scale and not self._warned_scale:
            self._warned_scale = True
            rank_zero_warn(message)

    def on_cpu(self) -> bool:
        return self._trainer is not None and isinstance(self.trainer.accelerator, pl.accelerators.CPUAccelerator)

    # ------------------------------------------------------------------ memory format
    @staticmethod
    def use_channels_last(net: torch.nn.Module, enabled: bool) -> torch.nn.Module:
        """``net`` with channels-last convolutions when ``enabled`` (faster on CPU: 1.15-1.6x)."""
        return net.to(memory_format=torch.channels_last) if enabled else net

    # ------------------------------------------------------------------ optimiser
    def optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def lr_lambda(self) -> Callable[[int], float] | None:
        """A learning-rate multiplier per optimiser step, or ``None`` for a constant rate."""
        return None

    def cosine_lr_lambda(self) -> Callable[[int], float]:
        """Decay to 5% over the run's steps (or the clock: ``_schedule_progress``), per optimiser step."""
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        return lambda step: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * self._schedule_progress(step, total)))

    def _schedule_progress(self, step: int, total: int) -> float:
        """``run_progress`` of the cosine decay: by steps, or by ``trainer.max_time`` when the clock is
        further along. Rank 0's share is broadcast, so every rank uses the same learning rate."""
        timer = time_budget(self.trainer)
        if timer is None or step == 0:  # step 0: the scheduler's own first call
            return run_progress(step, total)
        return float(self.trainer.strategy.broadcast(run_progress(step, total, timer)))

    def configure_optimizers(self):
        opt = self.optimizer()
        schedule = self.lr_lambda() if self._trainer is not None else None
        if schedule is None:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
