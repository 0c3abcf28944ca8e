"""Reed et al. sprites: the original-format reader, splits, clips and labels (real files)."""

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from datamodules.assets import AssetError, asset_path, resolve_assets_root
from datamodules.reed_sprites import (
    ROW_LENGTHS,
    ReedSprites,
    read_reed_labels,
    read_reed_mat,
    read_reed_npy_xz,
    read_reed_splits,
)

SAMPLE = "reed_sprites_mat_sample/"


@pytest.fixture(scope="module")
def source():
    return ReedSprites()


@pytest.fixture(scope="module")
def splits(source, cache_dir):
    return {s: source.dataset(s, cache_dir=cache_dir) for s in ("train", "val", "test")}


@pytest.mark.parametrize("k", [0, 1])
def test_mat_reader_agrees_with_npy_xz(k):
    mat = read_reed_mat(asset_path(f"{SAMPLE}sprites_{k}.mat"))
    rgba = read_reed_npy_xz(asset_path(f"reed_sprites/sprites_{k}.npy.xz"))
    assert mat["rgba"].dtype == np.uint8 and mat["rgba"].shape == (178, 60, 60, 4)
    assert np.array_equal(mat["rgba"], rgba)
    assert np.array_equal(mat["labels"], read_reed_labels()[k])


def test_row_lengths_match_the_original_cell_arrays():
    with h5py.File(asset_path(f"{SAMPLE}sprites_0.mat"), "r") as f:
        lengths = tuple(f[f["sprites"][r, 0]].shape[0] for r in range(f["sprites"].shape[0]))
    assert lengths == ROW_LENGTHS and sum(lengths) == 178


def test_reader_rejects_a_non_hdf5_file():
    with pytest.raises(AssetError, match="not a MATLAB 7.3"):
        read_reed_mat(asset_path(f"{SAMPLE}sprites_splits.mat"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_reed_mat(resolve_assets_root() / SAMPLE / "sprites_9999.mat")


def test_splits_are_disjoint_and_cover_all_characters():
    splits = read_reed_splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 500, "val": 72, "test": 100}
    everything = np.concatenate(list(splits.values()))
    assert len(set(everything.tolist())) == 672 and everything.min() == 0 and everything.max() == 671
    sample = scipy.io.loadmat(asset_path(f"{SAMPLE}sprites_splits.mat"))  # the sample copy agrees
    assert np.array_equal(sample["testidx"].ravel() - 1, splits["test"])


def test_clip_counts_lengths_and_labels(splits, source, cache_dir):
    assert {k: len(v) for k, v in splits.items()} == {"train": 10000, "val": 1440, "test": 2000}
    ds = splits["test"]
    assert ds.actions == ("spellcast", "thrust", "walk", "slash", "shoot")
    assert ds.views == ("back", "left", "front", "right")
    labels = read_reed_labels()
    assert ds.attribute_cardinalities == tuple(int(m) + 1 for m in labels.max(0))
    assert sorted(ds.clip_length(i) for i in range(20)) == sorted(ROW_LENGTHS[:20])
    for i in range(20):
        item = ds.get(i)
        assert int(item["action"]) == i // 4 and int(item["view"]) == i % 4
        assert int(item["label"]) == 4 * int(item["action"]) + int(item["view"])
        assert item["frames"].shape == (ds.clip_length(i), 3, 64, 64)
        assert item["attributes"].tolist() == labels[int(item["character"])].tolist()
    hurt = ReedSprites(include_hurt=True).dataset("test", cache_dir=cache_dir)
    assert len(hurt) == 2100 and hurt.actions[-1] == "hurt"
    last = hurt.get(20)
    assert hurt.actions[int(last["action"])] == "hurt" and hurt.views[int(last["view"])] == "front"
    assert last["frames"].shape[0] == 6


def test_frames_are_the_sprites_centred_with_masks(splits):
    ds = splits["val"]
    index = 5 * 20 + 9  # sixth val character, walk / left
    item = ds.get(index)
    k = int(item["character"])
    rgba = read_reed_npy_xz(asset_path(f"reed_sprites/sprites_{k}.npy.xz"))
    raw = rgba[sum(ROW_LENGTHS[:9]) : sum(ROW_LENGTHS[:10])]
    frames, masks = item["frames"], item["masks"]
    assert frames.shape == (9, 3, 64, 64) and masks.shape == (9, 1, 64, 64)
    assert torch.equal(frames[:, :, 2:62, 2:62], torch.from_numpy(raw[..., :3]).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(masks[:, 0, 2:62, 2:62], torch.from_numpy(raw[..., 3] > 0).float())
    border = torch.ones(64, 64, dtype=torch.bool)
    border[2:62, 2:62] = False
    assert frames[..., border].abs().max() == 0 and masks[..., border].max() == 0
    assert torch.equal(ds.get(index, [8, 0])["frames"], frames[[8, 0]])


def test_image_size_options(cache_dir):
    raw = ReedSprites(image_size=60).dataset("test", cache_dir=cache_dir).get(0)
    assert raw["frames"].shape[-2:] == (60, 60)
    small = ReedSprites(image_size=32).dataset("test", cache_dir=cache_dir).get(0)
    assert small["frames"].shape[-2:] == (32, 32) and small["masks"].shape[-2:] == (32, 32)
    with pytest.raises(ValueError, match="image_size"):
        ReedSprites(image_size=4)
    with pytest.raises(IndexError, match="out of range"):
        ReedSprites().dataset("test", cache_dir=cache_dir).get(0, [7])  # spellcast has 7 frames
