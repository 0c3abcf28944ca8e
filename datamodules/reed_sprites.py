"""Reed et al. 2015 sprites (paper 000 §4.4): 672 LPC characters, 60x60, RGB + mask.

Data: ``<assets>/reed_sprites/`` (see its PROVENANCE.md): per character ``sprites_<k>.npy.xz``,
uint8 ``(178, 60, 60, 4)`` = RGB and mask * 255; along axis 0 the 21 animation rows of the
original ``sprites`` / ``masks`` cell arrays, concatenated, with ``ROW_LENGTHS`` frames.
Rows 1-4 spellcast, 5-8 thrust, 9-12 walk, 13-16 slash, 17-20 shoot (each block back, left,
front, right), row 21 hurt (a single direction, facing the viewer: we label it ``front``).
Labels: line ``k + 1`` of ``sprite_large_labels.txt`` (7 attributes, ``ATTRIBUTE_NAMES``;
cardinalities are read from the file: 2, 4, 3, 6, 2, 2, 2). Splits: ``sprites_splits.mat``
(MATLAB v5, read with ``scipy.io``), 1-based ``trainidx`` 500 / ``validx`` 72 / ``testidx``
100, characters kept in the file's order.

Choices:

* a clip is one (character, animation row); ``action`` indexes ``actions`` (the 5 animations,
  plus ``hurt`` with ``include_hurt=True``), ``view`` indexes ``VIEWS``,
  ``label = 4 * action + view``; clips have 6..13 frames (``clip_length``);
* the mask is ``value > 0``: the stored mask is 0 / 1 except 6 pixels per character of value
  230/255 (a semi-transparent palette entry of the body sheets, in the thrust rows) which
  belong to the character. The RGB outside the mask is black except for a 300-pixel white
  patch in the hurt frames, which the mask excludes (it disappears on backgrounds);
* frames are centred on a black ``image_size`` canvas (mask on zeros): 60x60 -> 64x64 adds
  2 px per side. Below 60 px, the 64x64 padded frame is resized (antialiased).

The decoded arrays are cached once (``cached_arrays``: ``rgb`` ``(672, 178, 60, 60, 3)``
uint8 and bit-packed ``masks`` ``(672, 178, 60, 8)``), memory-mapped on read.
``read_reed_mat`` reads the original MATLAB 7.3 (HDF5) files into the same layout.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.assets import asset_path, load_manifest, resolve_assets_root
from datamodules.base import ClipDataset, ClipSource, MemmapPickle, check_image_size, check_split, to_float_frames
from datamodules.cache import cached_arrays
from datamodules.reed_files import NUM_FRAMES_TOTAL, ROW_LENGTHS, ROW_OFFSETS, SIZE, read_reed_mat, read_reed_npy_xz  # noqa: F401 (public here too)
from utils.progress import progress_bar

NUM_CHARACTERS = 672
ANIMATIONS: tuple[str, ...] = ("spellcast", "thrust", "walk", "slash", "shoot")
VIEWS: tuple[str, ...] = ("back", "left", "front", "right")
HURT_VIEW = "front"
ATTRIBUTE_NAMES: tuple[str, ...] = ("sex", "body_type", "arm", "hair", "armor", "greaves", "weapon")
SPLIT_KEYS = {"train": "trainidx", "val": "validx", "test": "testidx"}
CACHE_VERSION = 1
_DIR = "reed_sprites/"


def row_labels(row: int) -> tuple[int, int]:
    """``(action, view)`` of animation row ``row`` (0-based; row 20 is hurt, action 5)."""
    if row == len(ROW_LENGTHS) - 1:
        return len(ANIMATIONS), VIEWS.index(HURT_VIEW)
    return row // len(VIEWS), row % len(VIEWS)


# --------------------------------------------------------------------------- raw files
def read_reed_labels(assets_root: str | os.PathLike | None = None) -> np.ndarray:
    """``(672, 7)`` int64 attribute labels (``sprite_large_labels.txt``)."""
    path = asset_path(_DIR + "sprite_large_labels.txt", assets_root)
    return np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)


def read_reed_splits(assets_root: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """0-based character indices per split (``sprites_splits.mat``, file order kept)."""
    import scipy.io

    mat = scipy.io.loadmat(asset_path(_DIR + "sprites_splits.mat", assets_root))
    return {split: mat[key].reshape(-1).astype(np.int64) - 1 for split, key in SPLIT_KEYS.items()}


def reed_cache_params() -> dict:
    manifest = load_manifest()
    files = [f"{_DIR}sprites_{k}.npy.xz" for k in range(NUM_CHARACTERS)]
    return {"version": CACHE_VERSION, "files": {rel: manifest[rel]["sha256"] for rel in files}}


def decode_reed_sprites(assets_root: str | os.PathLike | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """Decode every ``.npy.xz`` (checksums verified): ``rgb`` and bit-packed ``masks``."""
    rgb = np.empty((NUM_CHARACTERS, NUM_FRAMES_TOTAL, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.empty((NUM_CHARACTERS, NUM_FRAMES_TOTAL, SIZE, (SIZE + 7) // 8), dtype=np.uint8)
    for k in progress_bar(range(NUM_CHARACTERS), desc="Reed sprites", unit="char", disable=not progress):
        rgba = read_reed_npy_xz(asset_path(f"{_DIR}sprites_{k}.npy.xz", assets_root))
        rgb[k] = rgba[..., :3]
        masks[k] = np.packbits(rgba[..., 3] > 0, axis=-1)
    return {"rgb": rgb, "masks": masks}


def build_reed_sprites(
    assets_root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> dict[str, np.ndarray]:
    """Decode (once) and return the cached arrays ``rgb`` and ``masks`` (memory-mapped)."""
    return cached_arrays("reed_sprites", reed_cache_params(), lambda: decode_reed_sprites(assets_root, progress), cache_dir)


# --------------------------------------------------------------------------- datasets
def pad_center(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre ``t c h w`` frames on a zero (black) ``size x size`` canvas (``size >= h, w``)."""
    h, w = x.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(x, (left, size - w - left, top, size - h - top))


class ReedSpritesDataset(MemmapPickle, ClipDataset):
    """One split; clips ordered character-major (split-file order), then animation row.

    ``clip_character``, ``clip_action``, ``clip_view``, ``clip_row`` (one entry per clip)
    let evaluations pick clips by label without loading frames.
    """

    views = VIEWS
    attribute_names = ATTRIBUTE_NAMES
    has_masks = True

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        characters: np.ndarray,
        labels: np.ndarray,
        include_hurt: bool,
        image_size: int,
    ):
        self._rgb, self._masks = arrays["rgb"], arrays["masks"]
        self._labels = labels
        self.attribute_cardinalities = tuple(int(c) for c in labels.max(0) + 1)
        self.actions = ANIMATIONS + (("hurt",) if include_hurt else ())
        self.image_size = image_size
        self.characters = np.asarray(characters, dtype=np.int64)
        rows = np.arange(len(ROW_LENGTHS) if include_hurt else len(ROW_LENGTHS) - 1)
        self.clip_character = np.repeat(self.characters, len(rows))
        self.clip_row = np.tile(rows, len(self.characters))
        av = np.array([row_labels(int(r)) for r in rows], dtype=np.int64).reshape(-1, 2)
        self.clip_action = np.tile(av[:, 0], len(self.characters))
        self.clip_view = np.tile(av[:, 1], len(self.characters))

    def __len__(self) -> int:
        return len(self.clip_character)

    def clip_length(self, index: int) -> int:
        return ROW_LENGTHS[self.clip_row[index]]

    def get(self, index: int, frames: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        sel = self.frame_selection(index, frames)
        char, row = self.clip_character[index], self.clip_row[index]
        idx = ROW_OFFSETS[row] + sel
        rgb = to_float_frames(self._rgb[char][idx])
        mask = torch.from_numpy(np.unpackbits(self._masks[char][idx], axis=-1, count=SIZE)).float()[:, None]
        canvas = max(self.image_size, 64)
        rgb, mask = pad_center(rgb, canvas), pad_center(mask, canvas)
        return self.labelled_item(index, rgb, mask, char, self._labels[char], int(self.clip_action[index]), int(self.clip_view[index]))


class ReedSprites(ClipSource):
    """Reed et al. sprites (module docstring): 672 characters, 5 animations x 4 views.

    Args:
        include_hurt: also yield the single-direction ``hurt`` row (action 5, view front).
        image_size: canvas side; >= 60 centres the 60x60 sprite with black padding
            (64 adds 2 px per side), smaller sizes resize the 64x64 padded frame.
    """

    def __init__(self, include_hurt: bool = False, image_size: int = 64):
        self.include_hurt = bool(include_hurt)
        self.image_size = check_image_size(image_size)

    def prepare(self, assets_root=None, cache_dir=None) -> None:
        resolve_assets_root(assets_root)
        build_reed_sprites(assets_root, cache_dir)
        read_reed_labels(assets_root)
        read_reed_splits(assets_root)

    def dataset(self, split: str, assets_root=None, cache_dir=None) -> ReedSpritesDataset:
        check_split(split)
        characters = read_reed_splits(assets_root)[split]
        arrays = build_reed_sprites(assets_root, cache_dir)
        return ReedSpritesDataset(arrays, characters, read_reed_labels(assets_root), self.include_hurt, self.image_size)
