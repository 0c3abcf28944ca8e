"""The raw files of Reed et al.'s sprites: the original MATLAB 7.3 ``sprites_<k>.mat`` and the
lossless ``sprites_<k>.npy.xz`` repack the assets hold (``datamodules.assets fetch`` rebuilds the
repack from the ``.mat``; ``datamodules.reed_sprites`` reads it)."""

from __future__ import annotations

import lzma
import os
from pathlib import Path

import numpy as np

from datamodules.base import AssetError

SIZE = 60
#: Frames per animation row (21 rows), and each row's first frame along axis 0.
ROW_LENGTHS: tuple[int, ...] = (7,) * 4 + (8,) * 4 + (9,) * 4 + (6,) * 4 + (13,) * 4 + (6,)
ROW_OFFSETS: tuple[int, ...] = tuple(int(x) for x in np.concatenate([[0], np.cumsum(ROW_LENGTHS)[:-1]]))
NUM_FRAMES_TOTAL = sum(ROW_LENGTHS)  # 178


def read_reed_mat(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read one original ``sprites_<k>.mat`` (MATLAB 7.3 / HDF5) of Reed et al.

    The file holds cell arrays ``sprites`` and ``masks`` of 21 animation rows and ``labels``
    (7 values). In HDF5 (MATLAB's column-major order, transposed) a row is ``(n, 10800)``
    for the sprites, each frame a 60x60x3 image flattened with the row (y) index fastest,
    and ``(n, 3600)`` for the masks. Values are floats in [0, 1], exact multiples of 1/255.

    Returns ``rgba`` uint8 ``(178, 60, 60, 4)`` (RGB, mask * 255; the layout of the
    ``.npy.xz`` repack) and ``labels`` int64 ``(7,)``.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Reed sprites file {path} does not exist.")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise AssetError(
            f"{path} is not a MATLAB 7.3 (HDF5) file ({exc}); expected an original Reed et al. sprites_<k>.mat."
        ) from None
    with f:
        for key in ("sprites", "masks", "labels"):
            if key not in f:
                raise AssetError(f"{path} has no '{key}' entry; expected an original Reed et al. sprites_<k>.mat.")
        rows = []
        for r in range(f["sprites"].shape[0]):
            rgb = f[f["sprites"][r, 0]][()]
            mask = f[f["masks"][r, 0]][()]
            n = rgb.shape[0]
            rgb = rgb.reshape(n, 3, SIZE, SIZE).transpose(0, 3, 2, 1)  # (n, c, x, y) -> (n, y, x, c)
            mask = mask.reshape(n, SIZE, SIZE).transpose(0, 2, 1)[..., None]
            rows.append(np.rint(np.concatenate([rgb, mask], axis=-1) * 255).astype(np.uint8))
        labels = np.asarray(f["labels"][()]).reshape(-1).astype(np.int64)
    rgba = np.concatenate(rows)
    if rgba.shape != (NUM_FRAMES_TOTAL, SIZE, SIZE, 4):
        raise AssetError(f"{path}: unexpected sprite layout {rgba.shape}; expected {(NUM_FRAMES_TOTAL, SIZE, SIZE, 4)}.")
    return {"rgba": rgba, "labels": labels}


def read_reed_npy_xz(path: str | os.PathLike) -> np.ndarray:
    """One ``sprites_<k>.npy.xz`` repack: uint8 ``(178, 60, 60, 4)``."""
    with lzma.open(path) as f:
        rgba = np.load(f, allow_pickle=False)
    if rgba.shape != (NUM_FRAMES_TOTAL, SIZE, SIZE, 4) or rgba.dtype != np.uint8:
        raise AssetError(f"{path}: unexpected array {rgba.dtype}{rgba.shape}; expected uint8 (178, 60, 60, 4).")
    return rgba
