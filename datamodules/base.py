"""The contract between dataset sources and the DataModules.

A *source* (``ClipSource`` subclass) is a small config object chosen in YAML by
``class_path`` (e.g. ``datamodules.MovingMNIST``). It knows how to build/cache its data
(``prepare``, called once on rank zero) and returns one ``ClipDataset`` per split.

A ``ClipDataset`` item is a dict (``get(index, frames)``), tensors only:

============  ==========================  ==============================================
key           shape / dtype               meaning
============  ==========================  ==============================================
frames        (t, 3, h, w) float32 [0,1]  the selected frames, in the order asked for
masks         (t, 1, h, w) float32 {0,1}  character masks (when ``has_masks``)
background    (3, h, w) float32 [0,1]     the clip's background (when ``has_backgrounds``)
poses         (t, n, 2, 3) float32        per-frame, per-character affine (Moving MNIST):
                                          ``affine_grid`` theta (normalised coords,
                                          ``align_corners=False``) mapping frame coords to
                                          the character's reference (frame-0) coords
action        () int64                    index into ``dataset.actions`` (when labelled)
view          () int64                    index into ``dataset.views`` (when known)
label         () int64                    action-view class ``len(views) * action + view``
attributes    (a,) int64                  appearance attributes (``dataset.attribute_names``,
                                          ``dataset.attribute_cardinalities`` values each)
character     () int64                    character identity (sprites), when known
index         () int64                    clip index in the split
============  ==========================  ==============================================

Frames are float in [0, 1], channels first, clips ``t c h w`` (batches add ``b``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from utils.checks import check_int

SPLITS = ("train", "val", "test")


class ClipDataset(Dataset, ABC):
    """One split of clips; see the module docstring for the item contract."""

    actions: tuple[str, ...] = ()
    views: tuple[str, ...] = ()
    attribute_names: tuple[str, ...] = ()
    attribute_cardinalities: tuple[int, ...] = ()
    has_masks: bool = False
    has_backgrounds: bool = False
    has_poses: bool = False
    #: True when clips are generated on the fly from ``(seed, key)`` (fresh clips per epoch).
    procedural: bool = False
    image_size: int = 64

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def clip_length(self, index: int) -> int:
        """Number of frames of clip ``index``."""

    @abstractmethod
    def get(self, index: int, frames: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """Clip ``index`` restricted to ``frames`` (all frames when ``None``)."""

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.get(index)

    def clip_name(self, index: int) -> str:
        """How errors name clip ``index``."""
        return f"clip {index}"

    def frame_selection(self, index: int, frames: Sequence[int] | None) -> np.ndarray:
        """Checked frame indices of clip ``index`` in ``[0, n)`` (negative ones count from the end):
        ``frames`` or all ``n`` frames when ``None``; clear ``IndexError`` when out of range."""
        if not 0 <= index < len(self):
            raise IndexError(f"clip index {index} out of range for {len(self)} clips")
        return self.select_frames(frames, self.clip_length(index), self.clip_name(index))

    @staticmethod
    def select_frames(frames: Sequence[int] | None, n: int, name: str) -> np.ndarray:
        """Checked indices ``frames`` (all ``n`` when ``None``) into ``name``'s ``n`` frames, negative ones from the end."""
        sel = np.arange(n) if frames is None else np.asarray(frames, dtype=np.int64).reshape(-1)
        if sel.size and (sel.min() < -n or sel.max() >= n):
            raise IndexError(f"frames {sel.tolist()} out of range for {name} of {n} frames")
        return sel % n

    def labelled_item(self, index: int, frames: torch.Tensor, masks: torch.Tensor, character: int,
                      attributes: np.ndarray, action: int, view: int) -> dict[str, torch.Tensor]:
        """The item of a labelled sprite clip (frames/masks resized to ``image_size``):
        ``label`` is the action-view class ``len(views) * action + view``."""
        return {
            "frames": resize_clip(frames, self.image_size),
            "masks": resize_clip(masks, self.image_size, binary=True),
            "action": torch.tensor(action),
            "view": torch.tensor(view),
            "label": torch.tensor(len(self.views) * action + view),
            "attributes": torch.from_numpy(np.array(attributes)),
            "character": torch.tensor(int(character)),
            "index": torch.tensor(index),
        }


class ClipSource(ABC):
    """A dataset choice in config; builds caches and hands out ``ClipDataset`` splits."""

    @abstractmethod
    def prepare(self, assets_root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> None:
        """Verify assets and build every cache (rank zero only; idempotent, cheap when cached)."""

    @abstractmethod
    def dataset(
        self, split: str, assets_root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
    ) -> ClipDataset:
        """The ``ClipDataset`` of one split (``train``, ``val`` or ``test``)."""


class AssetError(RuntimeError):
    """A missing or corrupt asset; the message names the file and what to do."""


class MemmapPickle:
    """Pickle memory-mapped ``.npy`` attributes by file name (reopened on unpickle), so that
    spawned DataLoader workers / DDP processes never copy a whole cached dataset (a dict
    attribute, e.g. ``arrays``, is walked one level deep)."""

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for key, value in state.items():
            if isinstance(value, dict):
                state[key] = {k: _memmap_ref(v) for k, v in value.items()}
            else:
                state[key] = _memmap_ref(value)
        return state

    def __setstate__(self, state: dict) -> None:
        for key, value in state.items():
            if isinstance(value, dict):
                state[key] = {k: _memmap_open(v) for k, v in value.items()}
            else:
                state[key] = _memmap_open(value)
        self.__dict__.update(state)


def _memmap_ref(value):
    """``("__memmap__", file)`` for a memory map of a whole ``.npy`` file, else ``value``."""
    if isinstance(value, np.memmap) and value.filename is not None and value.base is not None:
        whole = np.load(value.filename, mmap_mode="r")
        if whole.shape == value.shape:
            return ("__memmap__", value.filename)
    return value


def _memmap_open(value):
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__memmap__":
        return np.load(value[1], mmap_mode="r")
    return value


def check_image_size(image_size: int, name: str = "image_size") -> int:
    """A frame side in pixels, 8..1024."""
    return check_int(image_size, name, 8, 1024, message="{name} must be an integer between 8 and 1024 pixels, got {value!r}.")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    return split


def resize_clip(x: torch.Tensor, size: int, binary: bool = False) -> torch.Tensor:
    """Antialiased resize of ``t c h w`` frames to ``size x size`` (masks re-binarised at 0.5)."""
    if x.shape[-2:] == (size, size):
        return x
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (y > 0.5).float() if binary else y.clamp_(0.0, 1.0)


def to_float_frames(frames_uint8: np.ndarray) -> torch.Tensor:
    """uint8 ``t h w c`` -> float32 ``t c h w`` in [0, 1]."""
    return torch.from_numpy(frames_uint8.copy()).permute(0, 3, 1, 2).float().div_(255.0)


def relative_affine(pose_from: torch.Tensor, pose_to: torch.Tensor) -> torch.Tensor:
    """T_X taking frame ``from`` to frame ``to``: ``grid_sample(layer_from, affine_grid(T))≈layer_to``.

    With ``layer_t(p) = layer_0(P_t p)`` it is ``T = P_from^{-1} P_to`` in homogeneous form;
    inputs and output are ``(..., 2, 3)``.
    """
    bottom = pose_from.new_tensor([0.0, 0.0, 1.0]).expand(*pose_from.shape[:-2], 1, 3)
    p_from = torch.cat([pose_from, bottom], dim=-2)
    p_to = torch.cat([pose_to, bottom], dim=-2)
    return torch.linalg.solve(p_from, p_to)[..., :2, :]
