"""DSVAE Sprites from the real LPC layer sheets: recipe, labels, split, compositing."""

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.assets import asset_path
from datamodules.dsvae_sprites import (
    ACTIONS,
    VIEWS,
    DSVAESprites,
    alpha_over,
    alpha_over_opaque,
    build_dsvae_sprites,
    character_digits,
    split_characters,
)

LPC = "lpc/universal-lpc-spritesheet/"
# The recipe as written in lpc/PROVENANCE.md (independent of the module's tables).
SKIN = ["light", "tanned2", "darkelf", "darkelf2", "dark", "dark2"]
PANTS = [
    "legs/pants/male/white_pants_male", "legs/armor/male/golden_greaves_male", "legs/pants/male/red_pants_male",
    "legs/armor/male/metal_pants_male", "legs/pants/male/teal_pants_male", "formal_male_no_th-sh/pants",
]
TOPS = [
    "torso/shirts/longsleeve/male/maroon_longsleeve", "torso/shirts/longsleeve/male/teal_longsleeve",
    "torso/shirts/longsleeve/male/white_longsleeve", "torso/plate/chest_male", "torso/leather/chest_male",
]
HAIR = [
    "hair/male/messy2/green2", "hair/male/longknot/blue2", "hair/male/messy1/light-blonde",
    "hair/male/bangs/white", "hair/male/plain/ruby-red", "hair/male/jewfro/purple",
]
RECIPE_ROWS = {"spellcast": (1, 2, 3), "walk": (9, 10, 11), "slash": (13, 14, 15)}  # left, front, right
RECIPE_COLS = {
    "spellcast": (0, 1, 2, 3, 4, 5, 4, 6),
    "walk": (8, 1, 2, 3, 4, 5, 6, 7),
    "slash": (0, 1, 2, 3, 4, 5, 4, 0),
}


def _sheet(name: str) -> Image.Image:
    return Image.open(asset_path(f"{LPC}{name}.png")).convert("RGBA")


def pil_character_sheet(character: int) -> np.ndarray:
    """The original pipeline: PIL alpha_composite of the layer sheets on opaque black, RGB."""
    skin, pants, top, hair = (character // 6**3) % 6, (character // 36) % 6, (character // 6) % 6, character % 6
    if top == 5:
        top_img = Image.alpha_composite(_sheet("formal_male_no_th-sh/shirt"), _sheet("formal_male_no_th-sh/tie"))
    else:
        top_img = _sheet(TOPS[top])
    layers = [_sheet(f"body/male/{SKIN[skin]}"), _sheet(PANTS[pants]), top_img, _sheet(HAIR[hair]),
              _sheet("feet/armor/male/golden_boots_male")]
    canvas = Image.new("RGBA", layers[0].size, "black")
    for layer in layers:
        canvas = Image.alpha_composite(canvas, layer)
    return np.asarray(canvas)[..., :3]


@pytest.fixture(scope="module")
def arrays(cache_dir):
    return build_dsvae_sprites(cache_dir=cache_dir, progress=False)


@pytest.fixture(scope="module")
def splits(cache_dir, arrays):
    source = DSVAESprites()
    return {s: source.dataset(s, cache_dir=cache_dir) for s in ("train", "val", "test")}


def test_split_matches_legacy_global_rng():
    state = np.random.get_state()
    try:
        np.random.seed(423)
        legacy = np.random.permutation(range(1296))
    finally:
        np.random.set_state(state)
    train, test = split_characters()
    assert np.array_equal(np.concatenate([train, test]), legacy)
    assert len(train) == 1000 and len(test) == 296


def test_counts_and_disjoint_splits(splits):
    train, val, test = splits["train"], splits["val"], splits["test"]
    assert (len(train), len(test)) == (9000, 2664)
    assert len(val) > 0 and len(val) % 9 == 0
    train_chars, test_chars = set(train.clip_character), set(test.clip_character)
    assert len(train_chars) == 1000 and len(test_chars) == 296
    assert not train_chars & test_chars
    assert not set(val.clip_character) & test_chars
    assert set(val.clip_character) <= train_chars  # default: a seeded subset of training characters
    assert train_chars | test_chars == set(range(1296))


def test_val_characters_held_out_from_end_of_train(cache_dir, arrays):
    source = DSVAESprites(val_characters=100)
    train, val = source.dataset("train", cache_dir=cache_dir), source.dataset("val", cache_dir=cache_dir)
    published_train, _ = split_characters()
    assert (len(train), len(val)) == (900 * 9, 100 * 9)
    assert np.array_equal(val.characters, published_train[900:])
    assert not set(train.clip_character) & set(val.clip_character)


def test_item_shapes_labels_and_attributes(splits):
    ds = splits["test"]
    assert ds.actions == ("walk", "spellcast", "slash") and ds.views == ("front", "left", "right")
    assert ds.has_masks and ds.attribute_cardinalities == (6, 6, 6, 6)
    first = [ds.get(i) for i in range(9)]  # the nine clips of one character
    assert sorted(int(it["label"]) for it in first) == list(range(9))
    for i in (0, 4, 8, 1234, len(ds) - 1):
        item = ds.get(i)
        assert item["frames"].shape == (8, 3, 64, 64) and item["frames"].dtype == torch.float32
        assert 0 <= item["frames"].min() and item["frames"].max() <= 1
        assert item["masks"].shape == (8, 1, 64, 64)
        assert set(item["masks"].unique().tolist()) <= {0.0, 1.0}
        assert int(item["label"]) == 3 * int(item["action"]) + int(item["view"])
        c = int(item["character"])
        digits = [c // 216, (c // 36) % 6, (c // 6) % 6, c % 6]
        assert item["attributes"].tolist() == digits
        assert int(item["index"]) == i
    assert character_digits(1295).tolist() == [5, 5, 5, 5]


@pytest.mark.parametrize("character", [0, 1295, 6 * 36 * 2 + 36 * 5 + 6 * 5 + 3])  # incl. formal pants + shirt/tie
def test_frames_equal_pil_layer_compositing(arrays, character):
    sheet = pil_character_sheet(character)
    for a, action in enumerate(ACTIONS):
        for v, view in enumerate(VIEWS):
            row = RECIPE_ROWS[action][("left", "front", "right").index(view)]
            for t, col in enumerate(RECIPE_COLS[action]):
                expected = sheet[row * 64 : (row + 1) * 64, col * 64 : (col + 1) * 64]
                assert np.array_equal(arrays["frames"][character, 3 * a + v, t], expected), (action, view, t)


def test_repeated_frame_columns(splits):
    ds = splits["train"]
    by_action = {ds.actions[int(ds.clip_action[i])]: ds.get(i)["frames"] for i in range(3 * 3) if ds.clip_view[i] == 0}
    spell, slash, walk = by_action["spellcast"], by_action["slash"], by_action["walk"]
    assert torch.equal(spell[4], spell[6]) and not torch.equal(spell[5], spell[7])
    assert torch.equal(slash[4], slash[6]) and torch.equal(slash[0], slash[7])
    assert all(not torch.equal(walk[i], walk[j]) for i in range(8) for j in range(i + 1, 8))


def test_mask_is_where_layers_are_visible(arrays):
    frames = np.asarray(arrays["frames"][:50])
    mask = np.unpackbits(np.asarray(arrays["masks"][:50]), axis=-1).astype(bool)
    assert not frames[~mask].any()  # outside the layers the canvas is black
    assert 0.05 < mask.mean() < 0.5
    assert frames[mask].any(axis=-1).mean() > 0.95


def test_alpha_over_matches_pil():
    shirt = np.asarray(_sheet("formal_male_no_th-sh/shirt"))[128:320, :256]
    tie = np.asarray(_sheet("formal_male_no_th-sh/tie"))[128:320, :256]
    body = np.asarray(_sheet("body/male/darkelf"))[128:320, :256]
    for dst, src in ((shirt, tie), (body, shirt), (tie, body)):
        expected = np.asarray(Image.alpha_composite(Image.fromarray(dst), Image.fromarray(src)))
        assert np.array_equal(alpha_over(dst, src), expected)


def test_opaque_fast_path_equals_general_formula():
    s, d = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")  # every (src, dst) value ...
    for alpha in range(256):  # ... under every source alpha
        src = np.stack([s, 255 - s, d, np.full_like(s, alpha)], -1).astype(np.uint8)
        dst = np.stack([d, s, 255 - d, np.full_like(d, 255)], -1).astype(np.uint8)
        assert np.array_equal(alpha_over_opaque(dst[..., :3], src), alpha_over(dst, src)[..., :3]), alpha


def test_get_selected_frames_and_resize(cache_dir, splits):
    ds = splits["test"]
    full = ds.get(10)
    part = ds.get(10, [7, 0, 3])
    assert torch.equal(part["frames"], full["frames"][[7, 0, 3]])
    small = DSVAESprites(image_size=32).dataset("test", cache_dir=cache_dir).get(10)
    assert small["frames"].shape == (8, 3, 32, 32) and small["masks"].shape == (8, 1, 32, 32)
    pooled = torch.nn.functional.avg_pool2d(full["frames"], 2)
    assert (small["frames"] - pooled).abs().mean() < 0.03
    assert torch.equal(ds.get(10, [-1])["frames"], full["frames"][[7]])  # negative frames count from the end
    with pytest.raises(IndexError, match=r"frames \[8\] out of range for clip 10 of 8 frames"):
        ds.get(10, [8])
    with pytest.raises(IndexError, match="clip index"):
        ds.get(len(ds))


def test_action_subset(cache_dir, splits):
    ds = DSVAESprites(actions=["slash", "walk"]).dataset("test", cache_dir=cache_dir)
    assert ds.actions == ("walk", "slash") and len(ds) == 296 * 6
    item = ds.get(3)  # second action of the first character, view 0
    assert ds.actions[int(item["action"])] == "slash" and int(item["label"]) == 3 * 1 + 0
    reference = splits["test"].get(6)  # the full set's slash/front clip of the same character
    assert torch.equal(item["frames"], reference["frames"])


def test_bad_arguments_have_clear_errors():
    with pytest.raises(ValueError, match="unknown action 'jump'; choose from walk, spellcast, slash"):
        DSVAESprites(actions=["jump"])
    with pytest.raises(ValueError, match="image_size"):
        DSVAESprites(image_size=0)
    with pytest.raises(ValueError, match="val_characters"):
        DSVAESprites(val_characters=1000)
    with pytest.raises(ValueError, match="Unknown split"):
        DSVAESprites().split_characters("dev")


def test_dataset_pickles_without_copying_the_cache(splits):
    import pickle

    ds = splits["test"]
    blob = pickle.dumps(ds)
    assert len(blob) < 1_000_000  # the 1.2 GB memory-mapped cache travels by file name
    again = pickle.loads(blob)
    assert torch.equal(again.get(100)["frames"], ds.get(100)["frames"])
