"""Command line: ``python cli.py {fit,validate,test,predict} --config configs/<model>_<data>.yaml``.

LightningCLI in subclass mode: the model and the DataModule are chosen by ``class_path`` in
the YAML, so every model x dataset pair is one config file. Any value can be overridden on the
command line, e.g. ``--trainer.max_steps 100 --data.batch_size 16``.

A bad value (a project check, or Lightning's) prints one line, ``error: <message>``, and exits
with status 2; set ``SCENEMOTION_TRACEBACK=1`` for the full traceback. Checkpoints are written
atomically, never by ``fast_dev_run``, and ``--ckpt_path last`` resumes from an intact checkpoint
of the configured model (``callbacks.resume``).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LightningCLI

TRACEBACK_ENV = "SCENEMOTION_TRACEBACK"


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

    def parse_arguments(self, parser, args) -> None:
        """Check that every ``--config`` file is valid YAML first (the parser's own message names no
        file), and hand a config with a ``base`` to the parser as its chain of files (``utils.config``)."""
        argv = sys.argv[1:] if args is None else (list(args) if isinstance(args, (list, tuple)) else [])
        for path in _config_paths(argv):
            check_yaml_file(path)
        expanded = expand_config_bases(argv)
        if expanded == argv:
            super().parse_arguments(parser, args)
        else:
            self.config = parser.parse_args(expanded)

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """``ckpt_path``: ``last`` becomes an intact checkpoint of this model (``resolve_last_checkpoint``);
        a file is checked before any data is built (one message if it is damaged or another model's)."""
        from callbacks.resume import resolve_last_checkpoint
        from utils.checkpoints import read_checkpoint

        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        ckpt_path = kwargs.get("ckpt_path")
        model_name = type(self.model).__name__
        if ckpt_path == "last":
            kwargs["ckpt_path"] = resolve_last_checkpoint(self.trainer, model_name)
        elif ckpt_path and ckpt_path not in ("best", "hpc") and "://" not in str(ckpt_path):
            read_checkpoint(ckpt_path, mmap=True, expected=model_name)
        return kwargs

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
        from callbacks.resume import harden_checkpointing

        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return
        for callback in trainer.checkpoint_callbacks:
            if callback.dirpath is None:
                callback.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        harden_checkpointing(trainer)
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


def _config_paths(argv: list[str]) -> list[str]:
    """The values of ``--config`` / ``-c`` in a command line."""
    paths = []
    for i, token in enumerate(argv):
        if token in ("--config", "-c") and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif token.startswith("--config="):
            paths.append(token.split("=", 1)[1])
    return paths


def expand_config_bases(argv: list[str]) -> list[str]:
    """``--config variant.yaml`` whose file names a ``base`` becomes ``--config`` of its options merged
    over its base's (``utils.config.load_config``, given as YAML text): one config, exactly the merge
    that ``load_config`` defines (a changed ``class_path`` starts its ``init_args`` anew)."""
    import yaml

    from utils.config import has_base, load_config

    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        value, step = (argv[i + 1], 2) if token in ("--config", "-c") and i + 1 < len(argv) else (None, 1)
        if token.startswith("--config="):
            value = token.split("=", 1)[1]
        if value is not None and has_base(value):
            out += ["--config", yaml.safe_dump(load_config(value), sort_keys=False)]
        else:
            out += argv[i : i + step]
        i += step
    return out


def check_yaml_file(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming ``path`` when it exists but is not valid YAML."""
    import yaml

    path = Path(path)
    if not path.is_file():
        return  # the parser says that the file is missing
    try:
        with open(path) as f:
            yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValueError(f"{path} is not valid YAML{where}: {problem}.") from None


def run(args: list[str] | None = None) -> int:
    """The command-line entry: ``main``, with a bad value reported as one line and exit status 2.

    ``$SCENEMOTION_TRACEBACK`` (any non-empty value but ``0``) shows the full traceback instead;
    errors that are not bad input (bugs) always show it.
    """
    from utils.errors import user_error_message

    try:
        main(args)
    except Exception as exc:
        message = user_error_message(exc)
        if message is None or os.environ.get(TRACEBACK_ENV, "0") not in ("", "0"):
            raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
