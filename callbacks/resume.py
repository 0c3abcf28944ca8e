"""Exact resumption: per-step seeding of the global random generators.

Lightning checkpoints hold the weights, optimizer and loop counters but not the random
generators' states, and a resumed run also creates its data-loader iterators afresh (each
creation draws from the global torch generator). A model that draws noise from the global
generators (the Hamiltonian VAE's reference frame and reparameterisation noise) therefore
continues differently after ``--ckpt_path last`` than the uninterrupted run would have.

``StepSeed`` removes the dependence on history: before every training batch it seeds torch
(every device), numpy and ``random`` from ``(seed, global_step, batch index, rank)``, and before
every validation / test batch from ``(seed, stage, batch index, rank)``. So the random draws of a step
depend only on that step, a resumed run is bit-for-bit the uninterrupted one (given the same
data order), and validation uses the same draws at every epoch (comparable curves).
``LastCheckpointAtEnd`` makes ``last.ckpt`` the state at the end of ``fit``, wherever it stopped.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytorch_lightning as pl
import torch

STAGES = {"train": 0, "val": 1, "test": 2, "predict": 3}


def derived_seed(*key: int) -> int:
    """A 32-bit seed determined by ``key`` alone (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(1)[0])


class StepSeed(pl.Callback):
    """Seed torch / numpy / random before every batch from ``(seed, stage, step, batch index, rank)``.

    Args:
        seed: base seed; default: the one ``seed_everything`` set (``PL_GLOBAL_SEED``), else 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def _base(self) -> int:
        if self.seed is not None:
            return int(self.seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _reseed(self, trainer: pl.Trainer, stage: str, *counters: int) -> None:
        seed = derived_seed(self._base(), STAGES[stage], *counters, trainer.global_rank)
        torch.manual_seed(seed)  # also seeds every CUDA device
        np.random.seed(seed)
        random.seed(seed)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._reseed(trainer, "train", trainer.global_step, batch_idx)  # batch_idx: distinct accumulation micro-batches

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._reseed(trainer, "val", batch_idx, dataloader_idx)

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._reseed(trainer, "test", batch_idx, dataloader_idx)


class LastCheckpointAtEnd(pl.Callback):
    """Write ``last.ckpt`` of every ``ModelCheckpoint(save_last=True)`` when ``fit`` ends.

    Step-interval saves (``every_n_train_steps``) leave ``last.ckpt`` up to ``n - 1`` steps behind a
    run that stops between two saves (``trainer.max_time``, or a step count that is not a multiple
    of ``n``), and ``test --ckpt_path .../last.ckpt`` would score that older model. The file is
    written to a temporary name and then renamed, so it is never left half-written.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run:
            return
        for callback in trainer.checkpoint_callbacks:
            if not callback.save_last or callback.dirpath is None:
                continue
            path = os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
            trainer.save_checkpoint(path + ".tmp")
            if trainer.is_global_zero:
                os.replace(path + ".tmp", path)
            trainer.strategy.barrier("LastCheckpointAtEnd")
            callback.last_model_path = path
