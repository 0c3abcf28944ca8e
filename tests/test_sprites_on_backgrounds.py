"""Sprites on diamond backgrounds: compositing with masks, per-split backgrounds, options."""

import numpy as np
import pytest
import torch

from datamodules.dsvae_sprites import DSVAESprites
from datamodules.reed_sprites import ReedSprites
from datamodules.sprites_on_backgrounds import SpritesOnBackgrounds, composite


@pytest.fixture(scope="module")
def source():
    return SpritesOnBackgrounds(num_train_backgrounds=64, num_val_backgrounds=20, num_test_backgrounds=30, seed=3)


@pytest.fixture(scope="module")
def splits(source, cache_dir):
    return {s: source.dataset(s, cache_dir=cache_dir) for s in ("train", "val", "test")}


def test_default_sprites_are_reed():
    assert isinstance(SpritesOnBackgrounds().sprites, ReedSprites)


def test_background_where_mask_is_zero_sprite_where_one(splits):
    ds = splits["test"]
    assert ds.has_masks and ds.has_backgrounds
    for i in (0, 17, 1999):
        item = ds.get(i)
        raw = ds.sprite_clip(i)
        bg = ds.background_of(i)
        assert torch.equal(item["background"], bg) and bg.shape == (3, 64, 64)
        assert torch.equal(item["masks"], raw["masks"])
        mask = item["masks"].bool().expand_as(item["frames"])
        assert torch.equal(item["frames"][mask], raw["frames"][mask])
        assert torch.equal(item["frames"][~mask], bg.expand_as(item["frames"])[~mask])
        assert 0 < mask.float().mean() < 0.5
        for key in ("action", "view", "label", "attributes", "character", "index"):
            assert torch.equal(item[key], raw[key])


def test_background_counts_and_disjoint_splits(source, splits, cache_dir):
    counts = {s: len(ds.backgrounds) for s, ds in splits.items()}
    assert counts == {"train": 64, "val": 20, "test": 30}
    for s, ds in splits.items():
        used = {ds.background_index(i) for i in range(len(ds))}
        assert used <= set(range(counts[s])) and len(used) == counts[s]  # thousands of clips use them all
    flat = {s: {bg.tobytes() for bg in ds.backgrounds} for s, ds in splits.items()}
    assert not flat["train"] & flat["val"] and not flat["train"] & flat["test"] and not flat["val"] & flat["test"]
    again = source.dataset("test", cache_dir=cache_dir)  # deterministic from (seed, split)
    assert np.array_equal(again.assignment, splits["test"].assignment)
    other = SpritesOnBackgrounds(num_test_backgrounds=30, seed=4).backgrounds("test")
    assert not np.array_equal(other, splits["test"].backgrounds)


def test_train_backgrounds_redraw_per_epoch(cache_dir):
    fixed = SpritesOnBackgrounds(num_train_backgrounds=64).dataset("train", cache_dir=cache_dir)
    first = fixed.assignment.copy()
    fixed.set_epoch(1)
    assert np.array_equal(fixed.assignment, first)
    redraw = SpritesOnBackgrounds(num_train_backgrounds=64, redraw_train_backgrounds=True)
    ds = redraw.dataset("train", cache_dir=cache_dir)
    ds.set_epoch(1)
    epoch1 = ds.assignment.copy()
    ds.set_epoch(2)
    assert not np.array_equal(ds.assignment, epoch1)
    ds.set_epoch(1)
    assert np.array_equal(ds.assignment, epoch1)
    test = redraw.dataset("test", cache_dir=cache_dir)
    before = test.assignment.copy()
    test.set_epoch(5)
    assert np.array_equal(test.assignment, before)


def test_dsvae_sprites_on_backgrounds(cache_dir):
    ds = SpritesOnBackgrounds(DSVAESprites(), num_test_backgrounds=100).dataset("test", cache_dir=cache_dir)
    assert len(ds) == 2664 and ds.actions == ("walk", "spellcast", "slash")
    item = ds.get(5)
    assert item["frames"].shape == (8, 3, 64, 64) and item["background"].shape == (3, 64, 64)
    outside = ~item["masks"].bool().expand_as(item["frames"])
    assert torch.equal(item["frames"][outside], item["background"].expand_as(item["frames"])[outside])


def test_composite_function_numpy_and_torch():
    sprite = np.random.default_rng(0).random((2, 3, 4, 4))
    bg = np.random.default_rng(1).random((3, 4, 4))
    mask = np.zeros((2, 1, 4, 4))
    mask[:, :, 1:3, 1:3] = 1
    out = composite(sprite, mask, bg)
    assert np.array_equal(out[:, :, 1:3, 1:3], sprite[:, :, 1:3, 1:3])
    assert np.array_equal(out[:, :, 0], np.broadcast_to(bg[:, 0], (2, 3, 4)))
    t = composite(torch.from_numpy(sprite), torch.from_numpy(mask), torch.from_numpy(bg))
    assert torch.equal(t, torch.from_numpy(out))


@pytest.mark.parametrize("kwargs, message", [
    ({"num_train_backgrounds": 0}, "num_train_backgrounds must be a positive integer"),
    ({"num_val_backgrounds": -5}, "num_val_backgrounds must be a positive integer"),
    ({"num_test_backgrounds": 2.5}, "num_test_backgrounds must be a positive integer"),
])
def test_bad_background_counts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpritesOnBackgrounds(**kwargs)


def test_bad_sprites_argument():
    with pytest.raises(TypeError, match="sprites must be a ClipSource"):
        SpritesOnBackgrounds(sprites="reed")


def test_other_image_size_resizes_backgrounds_with_sprites(cache_dir):
    ds = SpritesOnBackgrounds(ReedSprites(image_size=32), num_test_backgrounds=10).dataset("test", cache_dir=cache_dir)
    item = ds.get(0)
    assert item["frames"].shape[-2:] == (32, 32) and item["background"].shape == (3, 32, 32)
    full = torch.from_numpy(ds.backgrounds[ds.background_index(0)]).permute(2, 0, 1).float() / 255
    assert (item["background"] - torch.nn.functional.avg_pool2d(full[None], 2)[0]).abs().mean() < 0.05
