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

Checkpoint safety (``harden_checkpointing``, applied by ``cli.py``): checkpoints are written to a
temporary file beside their target and renamed (``AtomicCheckpointIO``), never through $TMPDIR;
``fast_dev_run`` writes none; ``last.ckpt`` is overwritten rather than versioned (``last-v1.ckpt``);
and ``resolve_last_checkpoint`` turns ``--ckpt_path last`` into an intact checkpoint of the
configured model, skipping damaged files and other models' checkpoints with a message.
"""

from __future__ import annotations

import os
import random
import sys

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_only

from utils.checkpoints import CheckpointError, read_checkpoint
from utils.io import atomic_output

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
    of ``n``), and ``test --ckpt_path .../last.ckpt`` would score that older model. The write is
    atomic (``AtomicCheckpointIO``, installed here when the trainer still has Lightning's writer).
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        use_atomic_checkpoint_io(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run:
            return
        for callback in trainer.checkpoint_callbacks:
            if not callback.save_last or callback.dirpath is None:
                continue
            path = os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
            trainer.save_checkpoint(path)
            callback.last_model_path = path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, made safe for local files.

    Saving writes a temporary file beside the target and renames it (``atomic_output``): Lightning's
    writer stages through fsspec's temporary file in $TMPDIR and moves it, which across filesystems
    (common on clusters) is a copy, so a kill mid-write left a truncated file. Loading is always
    weights-only through ``read_checkpoint``, whose errors name the file and what it is.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_output(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return read_checkpoint(path, map_location)


def use_atomic_checkpoint_io(trainer: pl.Trainer) -> None:
    """Install ``AtomicCheckpointIO`` unless the strategy has a checkpoint IO of its own (e.g. async or XLA)."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


def harden_checkpointing(trainer: pl.Trainer) -> None:
    """Atomic checkpoint writes, no checkpoint from ``fast_dev_run``, and one ``last.ckpt`` per folder.

    Lightning's ``ModelCheckpoint`` still writes ``last.ckpt`` at the end of a ``fast_dev_run``
    (so a smoke test's one-step model became the resume point) and, when the file exists from an
    earlier run, writes ``last-v1.ckpt``, ``last-v2.ckpt``, ... beside it. Checkpoint names carry the
    step, so overwriting a same-named file is the right thing for every checkpoint.
    """
    use_atomic_checkpoint_io(trainer)
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if trainer.fast_dev_run:
            callback.save_last = False
            callback.save_top_k = 0
        callback._enable_version_counter = False  # Lightning's option ``enable_version_counter``


@rank_zero_only
def _say(message: str) -> None:
    """Resume decisions go to stderr on rank zero (not as warnings, which filters can hide)."""
    print(message, file=sys.stderr, flush=True)


def _checkpoint_dirs(trainer: pl.Trainer) -> list[Path]:
    dirs: list[Path] = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath and "://" not in str(callback.dirpath):
            path = Path(callback.dirpath)
            if path not in dirs:
                dirs.append(path)
    return dirs


def resolve_last_checkpoint(trainer: pl.Trainer, model_name: str) -> str | None:
    """The checkpoint ``--ckpt_path last`` resumes from, or ``None`` when the folders hold none.

    Only intact checkpoints of ``model_name`` count (``read_checkpoint``, with the tensors mapped
    lazily). The ``last*.ckpt`` files come first, the furthest trained (``global_step``, then
    modification time), so an old smoke test's ``last-v1.ckpt`` at step 1 never wins. When one of
    them is damaged (a write that was killed), the furthest-trained intact checkpoint in the folder
    is used instead, and the message says so. Raises ``CheckpointError`` when checkpoints exist but
    none is usable.
    """
    dirs = _checkpoint_dirs(trainer)
    files = sorted(p for d in dirs if d.is_dir() for p in d.glob("*.ckpt") if not p.name.startswith(".") and p.is_file())
    where = ", ".join(str(d) for d in dirs) or "(no checkpoint folder)"
    if not files:
        _say(f"--ckpt_path last: no checkpoint in {where}; starting from scratch.")
        return None
    usable: list[tuple[int, bool, float, Path]] = []
    skipped: list[str] = []
    damaged_last = False
    for path in files:
        is_last = path.stem == ModelCheckpoint.CHECKPOINT_NAME_LAST or path.stem.startswith(ModelCheckpoint.CHECKPOINT_NAME_LAST + "-v")
        try:
            checkpoint = read_checkpoint(path, mmap=True, expected=model_name)
        except (CheckpointError, FileNotFoundError) as exc:
            skipped.append(str(exc))
            damaged_last |= is_last and "saved by" not in str(exc)
            continue
        usable.append((int(checkpoint.get("global_step", -1)), is_last, path.stat().st_mtime, path))
    if not usable:
        raise CheckpointError(f"--ckpt_path last found no intact {model_name} checkpoint in {where}: " + " ".join(skipped))
    lasts = [u for u in usable if u[1]]
    pool = lasts if lasts and not damaged_last else usable
    step, _, _, chosen = max(pool, key=lambda u: (u[0], u[1], u[2]))
    if skipped:
        _say("--ckpt_path last skipped: " + " ".join(skipped)
             + f" Resuming from {chosen} (step {step}), the furthest-trained intact {model_name} checkpoint.")
    else:
        _say(f"--ckpt_path last: resuming from {chosen} (step {step}).")
    return str(chosen)
