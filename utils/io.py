"""Atomic file outputs: every file the project writes goes through ``atomic_output``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

if TYPE_CHECKING:
    import numpy as np
    import PIL.Image


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


def write_npz(path: str | os.PathLike, arrays: Mapping[str, "np.ndarray"]) -> Path:
    """Write ``arrays`` to ``path`` (.npz) atomically (keys with '/' are kept as given)."""
    import numpy as np

    with atomic_output(path) as tmp:
        np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
    return Path(path)


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks (asset manifests and cache checksums)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
