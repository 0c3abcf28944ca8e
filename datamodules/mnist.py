"""The real MNIST digits, read from the original IDX ``.gz`` files (``<assets>/mnist/``).

Files are located and checksum-verified through ``datamodules.assets.asset_path``; the IDX
format (big-endian header: two zero bytes, a type code ``0x08`` = unsigned byte, the number of
dimensions, then one uint32 per dimension, then the data) is parsed and checked strictly, so a
truncated or foreign file gives an error that names it instead of garbage digits.

Splits: ``"train"`` = ``train-*-ubyte.gz`` (60,000 digits), ``"test"`` = ``t10k-*-ubyte.gz``
(10,000 digits). The Moving MNIST source (``moving_mnist.py``) holds the last 10,000 training
digits out for validation (see ``MNIST_VAL_SLICE`` there).
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from datamodules.assets import AssetError, asset_path, resolve_assets_root

MNIST_FILES = {
    "train": ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"),
    "test": ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"),
}
MNIST_SIZES = {"train": 60_000, "test": 10_000}
DIGIT_SIZE = 28


class IDXFormatError(AssetError):
    """A file that is not a valid IDX file of the expected kind (the message names it)."""


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Parse one IDX file (gzip-compressed when its name ends in ``.gz``) into a uint8 array.

    ``ndim`` (e.g. 3 for images, 1 for labels) is checked when given. Raises
    ``IDXFormatError`` naming the file on a wrong magic number, a non-uint8 type code, an
    unexpected number of dimensions, or a payload whose size does not match the header.
    """
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise IDXFormatError(f"{path} is not a readable IDX{' .gz' if opener is gzip.open else ''} file ({exc}); "
                             f"replace it with the original MNIST file (see mnist/PROVENANCE.md).") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IDXFormatError(
            f"{path} is not an IDX file: wrong magic number {raw[:4].hex() or '(empty file)'} "
            f"(expected 0000 08 0N). Replace it with the original MNIST file (see mnist/PROVENANCE.md)."
        )
    if raw[2] != 0x08:
        raise IDXFormatError(f"{path}: IDX type code 0x{raw[2]:02x} is not unsigned byte (0x08); this is not an MNIST file.")
    dims = raw[3]
    if ndim is not None and dims != ndim:
        raise IDXFormatError(f"{path}: IDX file has {dims} dimensions, expected {ndim} (wrong file for this slot?).")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise IDXFormatError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header}).")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=dims, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise IDXFormatError(
            f"{path}: IDX size mismatch: header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw)} bytes (truncated or corrupt). Replace it with the original MNIST file."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


@lru_cache(maxsize=4)
def _load(split: str, root: str) -> tuple[np.ndarray, np.ndarray]:
    images_rel, labels_rel = MNIST_FILES[split]
    images = read_idx(asset_path(images_rel, root), ndim=3)
    labels = read_idx(asset_path(labels_rel, root), ndim=1)
    n = MNIST_SIZES[split]
    if images.shape != (n, DIGIT_SIZE, DIGIT_SIZE) or labels.shape != (n,):
        raise IDXFormatError(
            f"{root}/{images_rel} / {labels_rel}: unexpected shapes {images.shape} / {labels.shape}, "
            f"expected ({n}, 28, 28) / ({n},)."
        )
    if labels.max() > 9:
        raise IDXFormatError(f"{root}/{labels_rel}: labels outside 0..9; not an MNIST label file.")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_mnist(split: str, assets_root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of MNIST ``split`` (``"train"`` or ``"test"``).

    ``images`` uint8 ``(n, 28, 28)`` (0 = background, 255 = ink), ``labels`` uint8 ``(n,)``;
    read-only arrays, cached per process. Files are checksum-verified on first load.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"Unknown MNIST split {split!r}; expected 'train' or 'test'.")
    return _load(split, str(resolve_assets_root(assets_root)))
