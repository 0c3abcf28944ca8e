"""Helpers shared by the LightningModules: checkpoint reading and type guard, atomic outputs, result tables."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import sys
import tempfile
import zipfile
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
        check_checkpoint_model(checkpoint, type(self).__name__)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what it is."""


def checkpoint_model(checkpoint: Mapping[str, Any]) -> str:
    """The model class that wrote ``checkpoint``: the project's tag, else Lightning's saved class path."""
    saved = checkpoint.get(MODEL_TAG_KEY)
    if saved is None:
        hparams = checkpoint.get("hyper_parameters")
        saved = hparams.get("_class_path") if isinstance(hparams, Mapping) else None
    return str(saved).rpartition(".")[2] if saved else "an unknown model"


def check_checkpoint_model(checkpoint: Mapping[str, Any], expected: str, path: str | os.PathLike | None = None,
                           needs: str | None = None, advice: str | None = None) -> None:
    """Raise ``CheckpointError`` unless ``checkpoint`` was saved by the model class named ``expected``.

    ``needs`` / ``advice`` word the message for the caller (default: a config and its ``--ckpt_path``)."""
    saved = checkpoint_model(checkpoint)
    if saved != expected:
        name = f"Checkpoint {path}" if path is not None else "This checkpoint"
        needs = needs or f"the config builds {expected}"
        advice = advice or "Use a config of the model that wrote the checkpoint (model.class_path) or another checkpoint."
        raise CheckpointError(f"{name} was saved by {saved}, but {needs}. {advice}")


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False, expected: str | None = None,
                    needs: str | None = None, advice: str | None = None) -> dict[str, Any]:
    """Load a checkpoint weights-only (nothing in the file can run code), with one clear error.

    The error (``CheckpointError``, or ``FileNotFoundError``) names the file and says what it is:
    missing, empty or truncated (an interrupted write), not a PyTorch checkpoint, a file holding
    Python objects that a weights-only load refuses, or (with ``expected``, a model class name)
    a checkpoint of another model (``check_checkpoint_model``'s ``needs`` / ``advice``). ``mmap=True``
    maps the tensors lazily (a cheap check).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} is a directory, not a checkpoint file.")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes; an interrupted write?). Use another checkpoint.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (not the zip archive torch.save writes). Use a .ckpt that Lightning wrote.")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        raise CheckpointError(
            f"Checkpoint {path} is truncated or damaged ({size} bytes; its zip directory is missing: an interrupted "
            f"write?). Use another checkpoint, e.g. an epoch=*-step=*.ckpt beside it."
        ) from None
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl). Use a .ckpt that Lightning wrote.")
    try:
        checkpoint = torch_load_weights_only(path, map_location, mmap)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        refused = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path} holds Python objects{refused} beyond tensors and plain data, so it was not loaded (loading it "
            f"could run code). It is not a checkpoint this project wrote; use one that Lightning saved from a run."
        ) from None
    except (RuntimeError, EOFError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"Checkpoint {path} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}). Use another checkpoint."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is a PyTorch file but not a Lightning checkpoint (no state_dict). Use a .ckpt that Lightning wrote.")
    if expected is not None:
        check_checkpoint_model(checkpoint, expected, path, needs, advice)
    return checkpoint


def torch_load_weights_only(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``: the one place the project unpickles a file."""
    import torch

    return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def load_module_checkpoint(cls: type, path: str | os.PathLike, map_location: Any = "cpu", needs: str | None = None,
                           advice: str | None = None, **kwargs: Any):
    """``cls.load_from_checkpoint(path)`` weights-only, after ``read_checkpoint``'s checks (one clear error)."""
    read_checkpoint(path, mmap=True, expected=cls.__name__, needs=needs or f"this needs a {cls.__name__} checkpoint",
                    advice=advice or "Pass a checkpoint of that model.")
    return cls.load_from_checkpoint(str(path), map_location=map_location, weights_only=True, **kwargs)


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
        with open(tmp, "rb+") as f:  # on disk before the rename (a crash then leaves old or new, never half)
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it is not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


_REPO_ROOT = Path(__file__).resolve().parents[1]
_PROJECT_PARTS = ("backbone", "lightning_modules", "datamodules", "callbacks", "cli.py", "sweep.py", "studio.py")
_BUG_TYPES = (AssertionError, AttributeError, NameError, IndexError, KeyError, ZeroDivisionError, ImportError,
              NotImplementedError, RecursionError)


def _raised_in_project(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by the project's own code (not a library, not a test)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    file = Path(tb.tb_frame.f_code.co_filename).resolve()
    if _REPO_ROOT not in file.parents:
        return False
    parts = file.relative_to(_REPO_ROOT).parts
    return parts[0] in _PROJECT_PARTS


def user_error_message(exc: BaseException) -> str | None:
    """The message of a bad-input error in ``exc``'s chain (innermost first), else ``None`` (a bug).

    A bad-input error is one the project raised on purpose (``ValueError``, ``FileNotFoundError``,
    ``AssetError``, ...) or Lightning's ``MisconfigurationException``; the wrappers around it
    (jsonargparse's union errors, which end in a dump of the parsed config) are dropped.
    """
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not c for c in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    for error in reversed(chain):
        if isinstance(error, MisconfigurationException):
            return str(error)
        if isinstance(error, Exception) and not isinstance(error, _BUG_TYPES) and _raised_in_project(error):
            return str(error)
    return None


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
