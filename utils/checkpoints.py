"""Checkpoint files: weights-only reading with one clear error, and the model tag that names their model."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

MODEL_TAG_KEY = "scenemotion_model"


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
