"""Helpers shared by the LightningModules: checkpoint-type guard and result tables."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from pytorch_lightning.callbacks import Timer
from pytorch_lightning.utilities import rank_zero_only

if TYPE_CHECKING:
    import PIL.Image
    import pytorch_lightning as pl

MODEL_TAG_KEY = "scenemotion_model"


class CheckpointGuardMixin:
    """Tags checkpoints with the model class and refuses to load another model's checkpoint.

    ``on_load_checkpoint`` runs before the state dict is loaded, so a checkpoint of the other
    model gets one clear message instead of a list of missing keys.
    """

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[MODEL_TAG_KEY] = type(self).__name__

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(MODEL_TAG_KEY)
        if saved is None:
            saved = checkpoint.get("hyper_parameters", {}).get("_class_path", "an unknown model")
        if saved != type(self).__name__:
            raise ValueError(
                f"This checkpoint was saved by {saved}, but the config builds {type(self).__name__}. "
                f"Use a config of the model that wrote the checkpoint (model.class_path) or another checkpoint."
            )


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


def format_table(title: str, rows: Mapping[str, Mapping[str, Any]], columns: list[str]) -> str:
    """A plain-text table: one row per key of ``rows``, one column per name in ``columns``."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "-"
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
        return "-" if value is None else str(value)

    header = [""] + columns
    body = [[name] + [fmt(row.get(col)) for col in columns] for name, row in rows.items()]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    sep = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([title, sep, line(header), sep] + [line(r) for r in body] + [sep])


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on failure
    delete it, so ``path`` is never left half-written. The temporary name keeps the suffix
    (PIL picks the format from it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and rename (never half-written)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_image_atomic(image: "PIL.Image.Image", path: str | os.PathLike, **save_kwargs: Any) -> Path:
    """``image.save(path, **save_kwargs)`` (format from the suffix) via a temporary file and rename."""
    with atomic_output(path) as tmp:
        image.save(tmp, **save_kwargs)
    return Path(path)


PROGRESS_ENV = "SCENEMOTION_PROGRESS"


def progress_mode() -> str:
    """``'tqdm'`` in a terminal, ``'plain'`` lines in logs and pipes; ``$SCENEMOTION_PROGRESS``
    (``tqdm`` or ``plain``) overrides. The one place training and evaluation progress decide."""
    mode = os.environ.get(PROGRESS_ENV) or ("tqdm" if sys.stdout.isatty() else "plain")
    if mode not in ("tqdm", "plain"):
        raise ValueError(f"{PROGRESS_ENV} must be 'tqdm' or 'plain', got {mode!r}.")
    return mode


def run_dir(trainer: "pl.Trainer") -> Path:
    """The run's folder without a collective call (``trainer.log_dir`` broadcasts under DDP, so
    it must not be called from rank zero alone): the first TensorBoard / CSV logger's versioned
    folder, else ``trainer.default_root_dir``."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, (TensorBoardLogger, CSVLogger)):
            return Path(logger.log_dir)
    return Path(trainer.default_root_dir)


@rank_zero_only
def write_results(directory: str | os.PathLike, name: str, results: Mapping[str, Any], table: str | None = None) -> Path:
    """Print ``table`` (if given) and write ``results`` as ``<directory>/<name>.json``."""
    if table:
        print("\n" + table + "\n", flush=True)
    return atomic_write_text(Path(directory) / f"{name}.json", json.dumps(results, indent=2, default=float) + "\n")
