"""VideoFolder on small folders of real sprite frames (PNG frame folders and GIFs)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.assets import asset_path
from datamodules.reed_sprites import ROW_OFFSETS, ROW_LENGTHS, read_reed_npy_xz
from datamodules.video_folder import VideoFolder, VideoFolderError


def reed_row(k: int, row: int) -> np.ndarray:
    """Real frames: uint8 ``t 60 60 3`` of Reed character ``k``, animation row ``row``."""
    rgba = read_reed_npy_xz(asset_path(f"reed_sprites/sprites_{k}.npy.xz"))
    return rgba[ROW_OFFSETS[row] : ROW_OFFSETS[row] + ROW_LENGTHS[row], ..., :3]


def write_frames(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{t:03d}.png")


def write_gif(path: Path, frames: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)


@pytest.fixture(scope="module")
def flat_root(tmp_path_factory):
    """Ten clips: eight PNG folders and two GIFs (Reed characters 0..9, various rows)."""
    root = tmp_path_factory.mktemp("videos_flat")
    clips = {}
    for k in range(10):
        frames = reed_row(k, 8 + k % 8)  # walk, slash rows: 9 or 6 frames
        clips[f"clip_{k}"] = frames
        if k in (3, 7):
            write_gif(root / f"clip_{k}.gif", frames)
        else:
            write_frames(root / f"clip_{k}", frames)
    (root / "notes.txt").write_text("not a clip")
    return root, clips


@pytest.fixture(scope="module")
def labelled_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos_labelled")
    for k in range(4):
        write_frames(root / "walk" / f"w{k}", reed_row(k, 10))
        write_gif(root / "spellcast" / f"s{k}.gif", reed_row(k, 2))
    return root


def test_flat_folder_frames_equal_the_source(flat_root, tmp_path):
    root, clips = flat_root
    source = VideoFolder(str(root), image_size=60, val_fraction=0.1, test_fraction=0.1)
    splits = {s: source.dataset(s, cache_dir=str(tmp_path)) for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in splits.items()} == {"train": 8, "val": 1, "test": 1}
    names = sorted(n for d in splits.values() for n in d.clip_names)
    assert names == sorted(["clip_3.gif", "clip_7.gif"] + [f"clip_{k}" for k in range(10) if k not in (3, 7)])
    for ds in splits.values():
        assert ds.actions == () and not ds.has_masks
        for i in range(len(ds)):
            item = ds.get(i)
            expected = clips[ds.clip_names[i].removesuffix(".gif")]
            assert ds.clip_length(i) == len(expected)
            assert set(item) == {"frames", "index"}
            assert torch.equal(item["frames"], torch.from_numpy(expected).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(splits["train"].get(0, [2, 0])["frames"], splits["train"].get(0)["frames"][[2, 0]])


def test_resize_and_centre_crop(tmp_path):
    frames = reed_row(5, 10)[:, :, 10:50]  # 60 x 40 (tall): the crop keeps rows 10..49
    write_frames(tmp_path / "videos" / "tall", frames)
    write_frames(tmp_path / "videos" / "other", reed_row(6, 10))
    source = VideoFolder(str(tmp_path / "videos"), image_size=40, val_fraction=0, test_fraction=0)
    ds = source.dataset("train", cache_dir=str(tmp_path / "cache"))
    tall = ds.clip_names.index("tall")
    assert torch.equal(ds.get(tall)["frames"], torch.from_numpy(frames[:, 10:50]).permute(0, 3, 1, 2).float() / 255)
    small = VideoFolder(str(tmp_path / "videos"), image_size=20, val_fraction=0, test_fraction=0)
    item = small.dataset("train", cache_dir=str(tmp_path / "cache")).get(tall)
    assert item["frames"].shape == (9, 3, 20, 20)
    pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(frames[:, 10:50]).permute(0, 3, 1, 2).float() / 255, 2)
    assert (item["frames"] - pooled).abs().mean() < 0.05


def test_action_labels_from_folders(labelled_root, tmp_path):
    source = VideoFolder(str(labelled_root), val_fraction=0.25, test_fraction=0.25, seed=1)
    splits = {s: source.dataset(s, cache_dir=str(tmp_path)) for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in splits.items()} == {"train": 4, "val": 2, "test": 2}
    for ds in splits.values():
        assert ds.actions == ("spellcast", "walk")
        for i in range(len(ds)):
            item = ds.get(i)
            folder = ds.clip_names[i].split("/")[0]
            assert ds.actions[int(item["action"])] == folder and int(item["label"]) == int(item["action"])
            assert item["frames"].shape == (ROW_LENGTHS[2] if folder == "spellcast" else ROW_LENGTHS[10], 3, 64, 64)


def test_splits_are_deterministic_disjoint_and_seeded(flat_root, tmp_path):
    root, _ = flat_root

    def split_names(seed):
        source = VideoFolder(str(root), val_fraction=0.2, test_fraction=0.2, seed=seed)
        return {s: tuple(source.dataset(s, cache_dir=str(tmp_path)).clip_names) for s in ("train", "val", "test")}

    a, b = split_names(0), split_names(0)
    assert a == b
    assert sum(len(v) for v in a.values()) == 10 and len(set(sum(a.values(), ()))) == 10
    assert any(split_names(seed) != a for seed in (1, 2, 3))


def test_num_frames_truncates_and_rejects_short_clips(flat_root, tmp_path):
    root, clips = flat_root
    ds = VideoFolder(str(root), num_frames=6, val_fraction=0, test_fraction=0).dataset("train", cache_dir=str(tmp_path))
    assert all(ds.clip_length(i) == 6 for i in range(len(ds)))
    with pytest.raises(VideoFolderError, match=r"Clip .*clip_\d+.* has 6 frame\(s\).*num_frames=8"):
        VideoFolder(str(root), num_frames=8).dataset("train", cache_dir=str(tmp_path))
    strided = VideoFolder(str(root), image_size=60, frame_stride=2, val_fraction=0, test_fraction=0)
    strided = strided.dataset("train", cache_dir=str(tmp_path))
    i = strided.clip_names.index("clip_0")
    assert torch.equal(strided.get(i)["frames"], torch.from_numpy(clips["clip_0"][::2]).permute(0, 3, 1, 2).float() / 255)


def test_cache_follows_folder_changes(tmp_path):
    root = tmp_path / "videos"
    write_frames(root / "a", reed_row(0, 8))
    write_frames(root / "b", reed_row(1, 8))
    source = VideoFolder(str(root), val_fraction=0, test_fraction=0)
    assert len(source.dataset("train", cache_dir=str(tmp_path / "c"))) == 2
    write_gif(root / "c.gif", reed_row(2, 12))
    ds = source.dataset("train", cache_dir=str(tmp_path / "c"))
    assert len(ds) == 3 and ds.clip_length(ds.clip_names.index("c.gif")) == 6


def test_errors_name_the_problem(tmp_path, monkeypatch):
    with pytest.raises(VideoFolderError, match="does not exist"):
        VideoFolder(str(tmp_path / "missing")).dataset("train", cache_dir=str(tmp_path))
    (tmp_path / "empty" / "nothing_here").mkdir(parents=True)
    with pytest.raises(VideoFolderError, match="No clips found"):
        VideoFolder(str(tmp_path / "empty")).dataset("train", cache_dir=str(tmp_path))
    bad = tmp_path / "bad"
    write_frames(bad / "clip", reed_row(0, 8))
    (bad / "clip" / "frame_004.png").write_bytes(b"this is not a png")
    with pytest.raises(VideoFolderError, match=r"Unreadable frame .*frame_004\.png"):
        VideoFolder(str(bad), val_fraction=0, test_fraction=0).dataset("train", cache_dir=str(tmp_path))
    mp4 = tmp_path / "mp4"
    write_frames(mp4 / "clip", reed_row(0, 8))
    (mp4 / "movie.mp4").write_bytes(b"\x00" * 64)
    for module in ("torchcodec", "torchcodec.decoders", "av", "imageio", "imageio.v3"):
        monkeypatch.setitem(sys.modules, module, None)  # as if no video backend were installed
    with pytest.raises(VideoFolderError, match=r"Cannot decode .*movie\.mp4.*pip install av"):
        VideoFolder(str(mp4), val_fraction=0, test_fraction=0).dataset("train", cache_dir=str(tmp_path))
    write_frames(tmp_path / "one" / "clip", reed_row(0, 8))
    with pytest.raises(VideoFolderError, match="Only 1 clip.*leave no training clip"):
        VideoFolder(str(tmp_path / "one"), val_fraction=0.5, test_fraction=0.4).dataset("train", cache_dir=str(tmp_path))


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 0}, "image_size"),
    ({"num_frames": 0}, "num_frames"),
    ({"val_fraction": 0.6, "test_fraction": 0.5}, "val_fraction \\+ test_fraction"),
    ({"test_fraction": -0.1}, "test_fraction"),
    ({"extensions": [".xyz"]}, "Unsupported extensions"),
    ({"frame_stride": 0}, "frame_stride"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VideoFolder("somewhere", **kwargs)
