"""Sprites on diamond backgrounds (paper 000 §4.2 and §4.4).

Each clip of a sprite source (``ReedSprites`` by default, or ``DSVAESprites``) is placed on
one diamond background of its split (``datamodules.backgrounds.split_backgrounds``: disjoint
per split) using the character masks: ``frame = mask * sprite + (1 - mask) * background``
(``composite``). The sprites are already centred in their frame (Reed: 60x60 centred on the
64x64 canvas), so the sprite sits in the middle of the background.

Background choice: clip ``i`` of a split gets background ``assignment[i]``, drawn once from
``(seed, split)``, so the same clip always has the same background. With
``redraw_train_backgrounds=True`` the training split draws a new assignment each epoch from
``(seed, split, epoch)`` (``dataset.set_epoch(epoch)``; the DataModule or a callback calls it,
and DataLoader workers see it when they are re-created each epoch, i.e. without
``persistent_workers``).

Raw parts of a clip: ``dataset.sprite_clip(i, frames)`` is the underlying sprite item
(frames on black), ``dataset.background_of(i)`` the ``(3, h, w)`` background and
``dataset.background_index(i)`` its index in ``dataset.backgrounds`` (uint8 ``(B, 64, 64, 3)``).
Backgrounds are always generated at 64x64 (the paper's size) and resized (antialiased) with
the sprites when the sprite source's ``image_size`` differs.
Items carry ``masks``, ``background`` and the sprite labels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from datamodules.backgrounds import SPLIT_SEED_OFFSET, split_backgrounds
from datamodules.base import ClipDataset, ClipSource, check_split, resize_clip
from utils.checks import check_int

PAPER_TRAIN_BACKGROUNDS = (64, 128, 256, 784, 1000)
BACKGROUND_SIZE = 64


def composite(sprite_rgb, mask, background):
    """``mask * sprite + (1 - mask) * background`` (paper 000 §4.4), broadcasting.

    Works on torch tensors or numpy arrays in [0, 1], e.g. sprite ``(t, 3, h, w)``, mask
    ``(t, 1, h, w)`` and background ``(3, h, w)``; a soft mask blends linearly.
    """
    return mask * sprite_rgb + (1 - mask) * background


def _check_count(name: str, value) -> int:
    return check_int(value, name, message="{name} must be a positive integer number of backgrounds, got {value!r} "
                     f"(the paper trains with one of {', '.join(map(str, PAPER_TRAIN_BACKGROUNDS))} and tests on 100).")


class SpritesOnBackgroundsDataset(ClipDataset):
    """A sprite split composited on the split's backgrounds (module docstring)."""

    has_masks = True
    has_backgrounds = True

    def __init__(self, sprites: ClipDataset, backgrounds: np.ndarray, split: str, seed: int, redraw: bool):
        if not sprites.has_masks:
            raise ValueError(f"{type(sprites).__name__} has no character masks; sprites on backgrounds need them.")
        self.sprites = sprites
        self.backgrounds = backgrounds
        self.split, self.seed, self.redraw = split, seed, redraw
        for attr in ("actions", "views", "attribute_names", "attribute_cardinalities", "image_size"):
            setattr(self, attr, getattr(sprites, attr))
        for attr in ("clip_character", "clip_action", "clip_view", "characters"):
            if hasattr(sprites, attr):
                setattr(self, attr, getattr(sprites, attr))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Choose the clip -> background assignment (changes only with ``redraw``)."""
        key = [self.seed, SPLIT_SEED_OFFSET[self.split], 104_729] + ([int(epoch)] if self.redraw else [])
        rng = np.random.default_rng(np.random.SeedSequence(key))
        self.assignment = rng.integers(len(self.backgrounds), size=len(self.sprites))

    def __len__(self) -> int:
        return len(self.sprites)

    def clip_length(self, index: int) -> int:
        return self.sprites.clip_length(index)

    def background_index(self, index: int) -> int:
        return int(self.assignment[index])

    def background_of(self, index: int) -> torch.Tensor:
        """The ``(3, h, w)`` float background of clip ``index`` (resized to ``image_size``)."""
        bg = self.backgrounds[self.background_index(index)]
        bg = torch.from_numpy(np.ascontiguousarray(bg)).permute(2, 0, 1).float().div_(255.0)
        return resize_clip(bg[None], self.image_size)[0]

    def sprite_clip(self, index: int, frames: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """The raw sprite item (frames on black) of clip ``index``."""
        return self.sprites.get(index, frames)

    def get(self, index: int, frames: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        item = dict(self.sprite_clip(index, frames))
        background = self.background_of(index)
        item["frames"] = composite(item["frames"], item["masks"], background)
        item["background"] = background
        return item


class SpritesOnBackgrounds(ClipSource):
    """Sprite clips centred on diamond backgrounds (paper 000 §4.4, Fig. 5, 9).

    Args:
        sprites: the sprite source (``ReedSprites`` or ``DSVAESprites``; ``None`` means
            ``ReedSprites()``); in YAML a nested ``class_path``.
        num_train_backgrounds: B for training (paper: 64, 128, 256, 784 or 1000).
        num_val_backgrounds / num_test_backgrounds: B for validation / test (paper: 100).
        seed: seeds the backgrounds and the clip -> background assignment.
        redraw_train_backgrounds: draw new training assignments each epoch (``set_epoch``).
    """

    def __init__(
        self,
        sprites: ClipSource | None = None,
        num_train_backgrounds: int = 1000,
        num_val_backgrounds: int = 100,
        num_test_backgrounds: int = 100,
        seed: int = 0,
        redraw_train_backgrounds: bool = False,
    ):
        if sprites is None:
            from datamodules.reed_sprites import ReedSprites

            sprites = ReedSprites()
        if not isinstance(sprites, ClipSource):
            raise TypeError(f"sprites must be a ClipSource (e.g. ReedSprites()), got {type(sprites).__name__}.")
        self.sprites = sprites
        self.num_backgrounds = {
            "train": _check_count("num_train_backgrounds", num_train_backgrounds),
            "val": _check_count("num_val_backgrounds", num_val_backgrounds),
            "test": _check_count("num_test_backgrounds", num_test_backgrounds),
        }
        self.seed = int(seed)
        self.redraw_train_backgrounds = bool(redraw_train_backgrounds)

    def backgrounds(self, split: str) -> np.ndarray:
        """uint8 ``(B, 64, 64, 3)`` backgrounds of one split."""
        check_split(split)
        return split_backgrounds(split, self.num_backgrounds[split], size=BACKGROUND_SIZE, seed=self.seed)[0]

    def prepare(self, assets_root=None, cache_dir=None) -> None:
        self.sprites.prepare(assets_root, cache_dir)

    def dataset(self, split: str, assets_root=None, cache_dir=None) -> SpritesOnBackgroundsDataset:
        check_split(split)
        sprites = self.sprites.dataset(split, assets_root, cache_dir)
        redraw = self.redraw_train_backgrounds and split == "train"
        return SpritesOnBackgroundsDataset(
            sprites, self.backgrounds(split), split, self.seed, redraw
        )
