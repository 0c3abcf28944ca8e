"""Diamond backgrounds follow paper 000 §4.2 (checked on the images, not on the generator's code)."""

import numpy as np
import pytest

from datamodules.backgrounds import NUM_DIAMONDS, RADIUS_RANGE, USABLE_RGB, make_backgrounds, split_backgrounds

SIZE = 64


def _region_extents(region: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(region)
    s, d = xs + ys, xs - ys
    return s.min(), s.max(), d.min(), d.max()


@pytest.fixture(scope="module")
def backgrounds():
    return make_backgrounds(300, SIZE, seed=123)


def _distinct_palettes(images, colors):
    """Backgrounds whose six colours differ by RGB (geometry is only decidable for those;
    ``test_diamond_colours_distinct_rgb`` checks that this is all of them)."""
    for img, col in zip(images, colors):
        if len({tuple(c) for c in USABLE_RGB[col]}) == len(col):
            yield img, col


def test_shapes_and_palette(backgrounds):
    images, colors = backgrounds
    assert images.shape == (300, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert colors.shape == (300, 1 + NUM_DIAMONDS)
    def pack(rgb):
        rgb = rgb.astype(np.int64)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]

    for img, col in zip(images, colors):
        palette = pack(USABLE_RGB[col])
        pixels = np.unique(pack(img))
        assert np.isin(pixels, palette).all()  # only the canvas and diamond colours
        assert palette[0] in pixels and palette[-1] in pixels  # the canvas and the top diamond show


def test_no_black_anywhere(backgrounds):
    images, _ = backgrounds
    assert not (images.reshape(-1, 3) == 0).all(axis=1).any()
    assert not (USABLE_RGB == 0).all(axis=1).any()


def test_diamond_colours_distinct_rgb():
    """Five diamonds "each with a different random color", different from the canvas: by RGB,
    not just by CSS4 name (aqua/cyan, gray/grey, ... are the same colour)."""
    for split in ("train", "val", "test"):
        for seed in (0, 1, 2):
            _, colors = split_backgrounds(split, 64, SIZE, seed)
            rgb = USABLE_RGB[colors]
            for b in range(len(colors)):
                assert len({tuple(c) for c in rgb[b]}) == 1 + NUM_DIAMONDS, (split, seed, b, colors[b])


def test_radius_from_uncut_top_diamonds(backgrounds):
    """The last-drawn diamond is fully visible; when it does not touch the border its pixel set
    is exactly ``|x - cx| + |y - cy| <= r`` with r in 7..10."""
    images, colors = backgrounds
    radii = []
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    for img, col in _distinct_palettes(images, colors):
        region = (img == USABLE_RGB[col[-1]]).all(axis=-1)
        if region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any():
            continue
        s0, s1, d0, d1 = _region_extents(region)
        assert s1 - s0 == d1 - d0 and (s1 - s0) % 2 == 0
        r = (s1 - s0) // 2
        cx, cy = (s0 + s1 + d0 + d1) // 4, (s0 + s1 - d0 - d1) // 4
        assert np.array_equal(region, np.abs(xs - cx) + np.abs(ys - cy) <= r)
        radii.append(r)
    assert len(radii) > 100
    assert set(radii) == set(range(RADIUS_RANGE[0], RADIUS_RANGE[1] + 1)) == {7, 8, 9, 10}


def test_every_diamond_within_max_radius(backgrounds):
    images, colors = backgrounds
    for img, col in _distinct_palettes(images, colors):
        for c in col[1:]:
            region = (img == USABLE_RGB[c]).all(axis=-1)
            if region.any():
                s0, s1, d0, d1 = _region_extents(region)
                assert s1 - s0 <= 2 * RADIUS_RANGE[1] and d1 - d0 <= 2 * RADIUS_RANGE[1]


def test_splits_disjoint_and_deterministic():
    splits = {s: split_backgrounds(s, 64, SIZE, seed=0)[0] for s in ("train", "val", "test")}
    keys = {s: {img.tobytes() for img in imgs} for s, imgs in splits.items()}
    assert all(len(k) == 64 for k in keys.values())
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    again = split_backgrounds("train", 64, SIZE, seed=0)[0]
    assert np.array_equal(again, splits["train"])
    assert not np.array_equal(split_backgrounds("train", 64, SIZE, seed=1)[0], splits["train"])
    with pytest.raises(ValueError, match="Unknown split"):
        split_backgrounds("validation", 4)
