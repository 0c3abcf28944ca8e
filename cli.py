"""Command line: ``python cli.py {fit,validate,test,predict} --config configs/<model>_<data>.yaml``.

LightningCLI in subclass mode: the model and the DataModule are chosen by ``class_path`` in
the YAML, so every model x dataset pair is one config file. Any value can be overridden on the
command line, e.g. ``--trainer.max_steps 100 --data.batch_size 16``.
"""

from __future__ import annotations

import importlib
import os

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LightningCLI


class SceneMotionCLI(LightningCLI):
    """LightningCLI with the project's defaults (configs overwrite their saved copy).

    The config file and the command line are authoritative: ``--ckpt_path`` restores weights
    and training state but does not replace the config's model arguments with the ones stored
    in the checkpoint (Lightning's default), so test-time switches such as
    ``--model.init_args.judge_checkpoint`` take effect, and a checkpoint of the other model is
    refused with one clear message (``CheckpointGuardMixin``) instead of silently switching
    the model class.
    """

    def _parse_ckpt_path(self) -> None:
        return

    def before_instantiate_classes(self) -> None:
        """``--trainer.enable_progress_bar false`` drops the configs' progress-bar callback.

        Lightning refuses a progress-bar callback when the progress bar is disabled; a user
        turning it off on the command line means "no progress bar", not "error".
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.get("trainer")
        if trainer is None or trainer.get("enable_progress_bar") is not False or not trainer.get("callbacks"):
            return
        trainer.callbacks = [cb for cb in trainer.callbacks if not _is_progress_bar(cb)]

    def after_instantiate_classes(self) -> None:
        """Checkpoints without a ``dirpath`` go to ``<default_root_dir>/checkpoints``.

        Lightning's default puts them under the logger's ``version_N``, which changes with every
        run, so ``--ckpt_path last`` would find nothing to resume from.
        """
        super().after_instantiate_classes()
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return
        for callback in trainer.checkpoint_callbacks:
            if callback.dirpath is None:
                callback.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        if self.subcommand == "predict":  # predictions go to files (<default_root_dir>/predictions), issue 15
            from pytorch_lightning.callbacks import BasePredictionWriter

            from callbacks.prediction_writer import PredictionWriter

            if not any(isinstance(cb, BasePredictionWriter) for cb in trainer.callbacks):
                trainer.callbacks.append(PredictionWriter())


def _is_progress_bar(callback_config) -> bool:
    """Whether a ``trainer.callbacks`` entry (``class_path`` namespace or object) is a progress bar."""
    from jsonargparse import Namespace
    from pytorch_lightning.callbacks import ProgressBar

    if isinstance(callback_config, Namespace):
        module, _, name = callback_config.class_path.rpartition(".")
        callback_config = getattr(importlib.import_module(module), name)
    cls = callback_config if isinstance(callback_config, type) else type(callback_config)
    return issubclass(cls, ProgressBar)


def main(args: list[str] | None = None, run: bool = True) -> SceneMotionCLI:
    torch.set_float32_matmul_precision("high")
    return SceneMotionCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
