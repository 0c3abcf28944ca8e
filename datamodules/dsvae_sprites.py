"""DSVAE "Sprites" (Li & Mandt 2018; the Sprites benchmark of paper 004 §5).

Built from the Universal LPC layer sheets in ``<assets>/lpc/`` by the recipe of
``lpc/PROVENANCE.md`` (YingzhenLi/Sprites @ 3ce4048):

* character id ``c`` in ``0..1295`` = base-6 digits ``(skin, pants, top, hair)``, skin most
  significant; each digit picks one of six layer sheets (``LAYER_OPTIONS``); top option 5 is
  the formal shirt with the tie alpha-composited on top; golden boots on every character;
* each frame: an opaque black canvas, then ``Image.alpha_composite`` of body, pants, top,
  hair, boots, RGB kept. We reproduce PIL's integer "over" exactly (``alpha_over``), so the
  frames equal the original PIL pipeline pixel for pixel;
* clips: actions walk / spellcast / slash x views left / front / right, 8 frames 64x64 taken
  from the sheet rows and frame columns of ``ROWS`` / ``COLUMNS``;
* labels: ``action`` in ``ACTIONS = (walk, spellcast, slash)``, ``view`` in
  ``VIEWS = (front, left, right)`` (the label order differs from the sheet-row order left,
  front, right), ``label = 3 * action + view``, ``attributes`` = the four digits,
  ``character`` = the id;
* split: the legacy ``np.random.seed(423); np.random.permutation(range(1296))``, computed as
  ``np.random.RandomState(423).permutation(1296)`` (identical, no global state); the first
  1000 ids are train, the other 296 test (9000 / 2664 clips).

Differences from the original, on purpose: pixels are divided by 255 (the original divides by
256); a per-frame character mask (alpha > 0 of the layer stack) is kept, so ``has_masks``.
``image_size`` other than 64 resizes frames on the fly (antialiased bilinear; masks
re-thresholded at 0.5); the cache always holds the native 64x64 frames.

Validation: the published data has no validation split. ``val_characters=k > 0`` holds out the
last ``k`` of the 1000 training ids (train keeps the first ``1000 - k``). With the default
``k = 0`` the training split stays the published 1000 characters and ``val`` is a fixed,
seeded subset of 32 *training* characters (all their clips): it monitors fitting and never
sees a test character.

The whole set (1296 x 9 clips x 8 frames) is composited once, vectorised over characters,
and cached as uint8 (``datamodules.cache.cached_arrays``: ``frames`` of shape
``(1296, 9, 8, 64, 64, 3)`` indexed ``[character, 3 * action + view, t]`` and bit-packed
``masks`` ``(1296, 9, 8, 64, 8)``), memory-mapped on read.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from datamodules.assets import asset_path, load_manifest, resolve_assets_root
from datamodules.base import ClipDataset, ClipSource, MemmapPickle, check_image_size, check_split, to_float_frames
from datamodules.cache import cached_arrays
from utils.checks import check_int
from utils.progress import progress_bar

NUM_OPTIONS = 6
NUM_CHARACTERS = NUM_OPTIONS**4
NUM_TRAIN_CHARACTERS = 1000
SPLIT_SEED = 423
NUM_FRAMES = 8
CELL = 64
FIXED_VAL_CHARACTERS = 32
FIXED_VAL_SEED = 0

ACTIONS: tuple[str, ...] = ("walk", "spellcast", "slash")
VIEWS: tuple[str, ...] = ("front", "left", "right")
ATTRIBUTE_NAMES: tuple[str, ...] = ("skin", "pants", "top", "hair")

_LPC = "lpc/universal-lpc-spritesheet/"
#: Layer sheets per attribute option (``lpc/PROVENANCE.md``); a tuple is composited in order.
LAYER_OPTIONS: dict[str, tuple[tuple[str, ...], ...]] = {
    "skin": tuple((f"body/male/{n}.png",) for n in ("light", "tanned2", "darkelf", "darkelf2", "dark", "dark2")),
    "pants": (
        ("legs/pants/male/white_pants_male.png",),
        ("legs/armor/male/golden_greaves_male.png",),
        ("legs/pants/male/red_pants_male.png",),
        ("legs/armor/male/metal_pants_male.png",),
        ("legs/pants/male/teal_pants_male.png",),
        ("formal_male_no_th-sh/pants.png",),
    ),
    "top": (
        ("torso/shirts/longsleeve/male/maroon_longsleeve.png",),
        ("torso/shirts/longsleeve/male/teal_longsleeve.png",),
        ("torso/shirts/longsleeve/male/white_longsleeve.png",),
        ("torso/plate/chest_male.png",),
        ("torso/leather/chest_male.png",),
        ("formal_male_no_th-sh/shirt.png", "formal_male_no_th-sh/tie.png"),
    ),
    "hair": (
        ("hair/male/messy2/green2.png",),
        ("hair/male/longknot/blue2.png",),
        ("hair/male/messy1/light-blonde.png",),
        ("hair/male/bangs/white.png",),
        ("hair/male/plain/ruby-red.png",),
        ("hair/male/jewfro/purple.png",),
    ),
}
BOOTS = "feet/armor/male/golden_boots_male.png"

#: Sheet row per (action, view) and the 8 frame columns per action (``lpc/PROVENANCE.md``).
ROWS: dict[str, dict[str, int]] = {
    "spellcast": {"left": 1, "front": 2, "right": 3},
    "walk": {"left": 9, "front": 10, "right": 11},
    "slash": {"left": 13, "front": 14, "right": 15},
}
COLUMNS: dict[str, tuple[int, ...]] = {
    "spellcast": (0, 1, 2, 3, 4, 5, 4, 6),
    "walk": (8, 1, 2, 3, 4, 5, 6, 7),
    "slash": (0, 1, 2, 3, 4, 5, 4, 0),
}
CACHE_VERSION = 1


# --------------------------------------------------------------------------- compositing
def alpha_over(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """``PIL.Image.alpha_composite(dst, src)`` on uint8 RGBA arrays ``(..., 4)`` (broadcasts).

    PIL's integer implementation (7 extra bits of precision, rounded divisions), reproduced
    exactly so that the frames equal the original pipeline's.
    """
    d = dst.astype(np.uint32)
    s = src.astype(np.uint32)
    sa, da = s[..., 3:4], d[..., 3:4]
    outa255 = sa * 255 + da * (255 - sa)
    coef1 = (sa * (255 * 255 * 128)) // np.maximum(outa255, 1)
    coef2 = 255 * 128 - coef1
    t = s[..., :3] * coef1 + d[..., :3] * coef2 + (0x80 << 7)
    rgb = ((((t >> 8) + t) >> 8) >> 7).astype(np.uint8)
    a = outa255 + 0x80
    alpha = (((a >> 8) + a) >> 8).astype(np.uint8)
    out = np.concatenate([rgb, alpha], axis=-1)
    return np.where(sa == 0, np.broadcast_to(dst, out.shape), out)


def alpha_over_opaque(dst_rgb: np.ndarray, src: np.ndarray) -> np.ndarray:
    """``alpha_over`` for an opaque destination: uint8 RGB ``(..., 3)`` under RGBA ``src``.

    With ``dst.a = 255`` PIL's formula reduces to ``u = s*a + d*(255-a) + 128`` and
    ``(u + (u >> 8)) >> 8``, which fits in uint16 (checked against ``alpha_over`` for every
    ``(s, d, a)`` in the tests). Returns uint8 RGB (the result stays opaque).
    """
    a = src[..., 3:4].astype(np.uint16)
    u = src[..., :3].astype(np.uint16) * a + dst_rgb.astype(np.uint16) * (255 - a) + 128
    return ((u + (u >> 8)) >> 8).astype(np.uint8)


def character_digits(character: np.ndarray | int) -> np.ndarray:
    """Base-6 digits ``(skin, pants, top, hair)`` of character ids, shape ``(..., 4)``."""
    c = np.asarray(character, dtype=np.int64)
    return np.stack([(c // NUM_OPTIONS ** (3 - i)) % NUM_OPTIONS for i in range(4)], axis=-1)


def split_characters() -> tuple[np.ndarray, np.ndarray]:
    """Published split: ``(train ids (1000,), test ids (296,))`` in permutation order."""
    perm = np.random.RandomState(SPLIT_SEED).permutation(NUM_CHARACTERS)
    return perm[:NUM_TRAIN_CHARACTERS], perm[NUM_TRAIN_CHARACTERS:]


def layer_files() -> list[str]:
    """Asset-relative paths of every sheet the recipe reads."""
    files = {f for options in LAYER_OPTIONS.values() for layers in options for f in layers} | {BOOTS}
    return sorted(_LPC + f for f in files)


def _load_sheet(rel: str, assets_root: str | os.PathLike | None) -> np.ndarray:
    with Image.open(asset_path(_LPC + rel, assets_root)) as im:
        return np.asarray(im.convert("RGBA"))


def _cells_needed() -> list[tuple[int, int]]:
    return sorted({(ROWS[a][v], c) for a in ROWS for v in ROWS[a] for c in COLUMNS[a]})


def composite_dsvae(assets_root: str | os.PathLike | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """Composite every character, clip and frame (uncached; see ``build_dsvae_sprites``).

    Each sheet is read once; the needed 64x64 cells are cut once per layer option; for each
    cell the layer stack is composited for all characters at once, hierarchically
    (6 bodies, 36 body+pants, 216, 1296, 1296 with boots), by broadcasting over the digits.
    Returns ``frames`` uint8 ``(1296, 9, 8, 64, 64, 3)`` and ``masks`` bit-packed along the
    last axis, uint8 ``(1296, 9, 8, 64, 8)`` (``np.unpackbits(masks, axis=-1)``).
    """
    sheets: dict[str, list[np.ndarray]] = {}
    for name, options in LAYER_OPTIONS.items():
        sheets[name] = []
        for layers in options:
            sheet = _load_sheet(layers[0], assets_root)
            for extra in layers[1:]:  # top 5: shirt with the tie composited on top (PIL "over")
                sheet = alpha_over(sheet, _load_sheet(extra, assets_root))
            sheets[name].append(sheet)
    boots = _load_sheet(BOOTS, assets_root)

    frames = np.empty((NUM_CHARACTERS, len(ACTIONS) * len(VIEWS), NUM_FRAMES, CELL, CELL, 3), dtype=np.uint8)
    masks = np.empty((NUM_CHARACTERS, len(ACTIONS) * len(VIEWS), NUM_FRAMES, CELL, CELL // 8), dtype=np.uint8)
    # Which (clip, t) slots each sheet cell fills.
    targets: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for a, action in enumerate(ACTIONS):
        for v, view in enumerate(VIEWS):
            for t, col in enumerate(COLUMNS[action]):
                targets.setdefault((ROWS[action][view], col), []).append((len(VIEWS) * a + v, t))

    cells = _cells_needed()
    for row, col in progress_bar(cells, desc="DSVAE sprites", unit="cell", disable=not progress):
        ys, xs = slice(row * CELL, (row + 1) * CELL), slice(col * CELL, (col + 1) * CELL)
        layers = [np.stack([sheet[ys, xs] for sheet in sheets[name]]) for name in ATTRIBUTE_NAMES]
        boot = boots[ys, xs][None]
        # Outside the bounding box of every layer's alpha the frame is the black canvas.
        visible = np.any([layer[..., 3].any(0) for layer in layers] + [boot[0, ..., 3] > 0], axis=0)
        rgb_cell = np.zeros((NUM_CHARACTERS, CELL, CELL, 3), dtype=np.uint8)
        mask_cell = np.zeros((NUM_CHARACTERS, CELL, CELL), dtype=bool)
        if visible.any():
            yy, xx = np.nonzero(visible.any(1))[0], np.nonzero(visible.any(0))[0]
            box = (slice(yy[0], yy[-1] + 1), slice(xx[0], xx[-1] + 1))
            h, w = yy[-1] + 1 - yy[0], xx[-1] + 1 - xx[0]
            rgb = np.zeros((1, h, w, 3), dtype=np.uint8)
            alpha = np.zeros((1, h, w), dtype=bool)
            for layer in layers:  # body, pants, top, hair: (n,) x (6 options,) -> (6n,)
                layer = layer[(slice(None), *box)]
                rgb = alpha_over_opaque(rgb[:, None], layer[None]).reshape(-1, h, w, 3)
                alpha = (alpha[:, None] | (layer[None, ..., 3] > 0)).reshape(-1, h, w)
            boot = boot[(slice(None), *box)]
            rgb_cell[(slice(None), *box)] = alpha_over_opaque(rgb, boot)
            mask_cell[(slice(None), *box)] = alpha | (boot[..., 3] > 0)
        packed = np.packbits(mask_cell, axis=-1)
        for clip, t in targets[(row, col)]:
            frames[:, clip, t] = rgb_cell
            masks[:, clip, t] = packed
    return {"frames": frames, "masks": masks}


def dsvae_cache_params() -> dict:
    manifest = load_manifest()
    return {
        "version": CACHE_VERSION,
        "recipe": "YingzhenLi/Sprites@3ce4048",
        "files": {rel: manifest[rel]["sha256"] for rel in layer_files()},
    }


def build_dsvae_sprites(
    assets_root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> dict[str, np.ndarray]:
    """Build (once) and return the cached DSVAE arrays ``frames`` and ``masks`` (memory-mapped).

    Verifies the layer sheets' checksums only when it has to build. Benchmarks time this.
    """
    return cached_arrays(
        "dsvae_sprites", dsvae_cache_params(), lambda: composite_dsvae(assets_root, progress), cache_dir
    )


# --------------------------------------------------------------------------- datasets
def check_actions(actions: Sequence[str] | None, known: Sequence[str]) -> tuple[str, ...]:
    """Validate an action subset; keeps the canonical order of ``known``."""
    if actions is None:
        return tuple(known)
    if isinstance(actions, str):
        actions = [actions]
    for a in actions:
        if a not in known:
            raise ValueError(f"unknown action {a!r}; choose from {', '.join(known)}.")
    if not actions:
        raise ValueError(f"actions must name at least one action; choose from {', '.join(known)}.")
    return tuple(a for a in known if a in set(actions))


class DSVAESpritesDataset(MemmapPickle, ClipDataset):
    """One split of DSVAE Sprites; clips ordered character-major, then action, then view.

    ``clip_character``, ``clip_action``, ``clip_view`` (int arrays, one entry per clip) let
    evaluations pick clips by label without loading frames.
    """

    views = VIEWS
    attribute_names = ATTRIBUTE_NAMES
    attribute_cardinalities = (NUM_OPTIONS,) * 4
    has_masks = True

    def __init__(self, arrays: Mapping[str, np.ndarray], characters: np.ndarray, actions: tuple[str, ...], image_size: int):
        self._frames = arrays["frames"]
        self._masks = arrays["masks"]
        self.actions = actions
        self.image_size = image_size
        self.characters = np.asarray(characters, dtype=np.int64)
        full_action = np.array([ACTIONS.index(a) for a in actions], dtype=np.int64)
        per_char_action = np.repeat(np.arange(len(actions)), len(VIEWS))
        per_char_view = np.tile(np.arange(len(VIEWS)), len(actions))
        n = len(self.characters)
        self.clip_character = np.repeat(self.characters, len(per_char_action))
        self.clip_action = np.tile(per_char_action, n)
        self.clip_view = np.tile(per_char_view, n)
        #: column of the cached array (``3 * canonical action + view``) for each clip
        self._column = len(VIEWS) * full_action[self.clip_action] + self.clip_view

    def __len__(self) -> int:
        return len(self.clip_character)

    def clip_length(self, index: int) -> int:
        return NUM_FRAMES

    def get(self, index: int, frames: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        sel = self.frame_selection(index, frames)
        char, col = self.clip_character[index], self._column[index]
        rgb = to_float_frames(self._frames[char, col][sel])
        mask = torch.from_numpy(np.unpackbits(self._masks[char, col][sel], axis=-1)).float()[:, None]
        return self.labelled_item(index, rgb, mask, char, character_digits(char), int(self.clip_action[index]), int(self.clip_view[index]))


class DSVAESprites(ClipSource):
    """DSVAE Sprites (module docstring): 1296 LPC characters, 3 actions x 3 views, 8 frames.

    Args:
        val_characters: training characters held out for validation, taken from the end of
            the 1000 published training ids; 0 keeps all 1000 in train and validates on a
            fixed seeded subset of 32 training characters (never on test characters).
        image_size: frame side in pixels; 64 is native, other sizes are antialiased resizes.
        actions: optional subset of ``walk``, ``spellcast``, ``slash`` (canonical order kept;
            ``action`` labels index the subset).
    """

    def __init__(self, val_characters: int = 0, image_size: int = 64, actions: list[str] | None = None):
        self.val_characters = check_int(val_characters, "val_characters", 0, NUM_TRAIN_CHARACTERS - 1,
                                        message="{name} must be an integer in [{low}, {high}], got {value!r}.")
        self.image_size = check_image_size(image_size)
        self.actions = check_actions(actions, ACTIONS)

    def split_characters(self, split: str) -> np.ndarray:
        """Character ids of one split, in the order their clips appear."""
        check_split(split)
        train, test = split_characters()
        if split == "test":
            return test
        k = self.val_characters
        if k > 0:
            return train[: NUM_TRAIN_CHARACTERS - k] if split == "train" else train[NUM_TRAIN_CHARACTERS - k :]
        if split == "train":
            return train
        rng = np.random.default_rng(FIXED_VAL_SEED)
        return np.sort(rng.choice(train, size=FIXED_VAL_CHARACTERS, replace=False))

    def prepare(self, assets_root=None, cache_dir=None) -> None:
        resolve_assets_root(assets_root)
        build_dsvae_sprites(assets_root, cache_dir)

    def dataset(self, split: str, assets_root=None, cache_dir=None) -> DSVAESpritesDataset:
        characters = self.split_characters(split)
        arrays = build_dsvae_sprites(assets_root, cache_dir)
        return DSVAESpritesDataset(arrays, characters, self.actions, self.image_size)
