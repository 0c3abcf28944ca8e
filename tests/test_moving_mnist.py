"""Moving MNIST on backgrounds (paper 000 §4.2–4.3, §4.6) on the real MNIST files."""

import gzip
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules import moving_mnist as mm
from datamodules import mnist_motion as mm_motion
from datamodules import mnist_generation as mm_generation
from datamodules.backgrounds import split_backgrounds
from datamodules.base import relative_affine
from datamodules.mnist import IDXFormatError, load_mnist, read_idx

ROT = {-15, -12, -9, -6, -3, 3, 6, 9, 12, 15}
TRANS = {-10, -8, -6, -4, -2, 2, 4, 6, 8, 10}


def small_source(**kw) -> mm.MovingMNIST:
    args = dict(num_digits=1, num_frames=5, num_backgrounds=8, train_clips_per_epoch=20, val_clips=24, test_clips=30, seed=3)
    args.update(kw)
    return mm.MovingMNIST(**args)


@pytest.fixture(scope="module")
def batches():
    """Generated clips of MNIST test digits: N = 1 (160 clips) and N = 2 (48 clips)."""
    images, _, _ = mm.digit_pool("test")
    backgrounds, _ = split_backgrounds("test", 8, 64, 0)
    rng = np.random.default_rng(11)
    out = {}
    for n, b in ((1, 160), (2, 48)):
        digits = images[mm_generation._distinct_digits(rng, len(images), b, n)]
        bgs = backgrounds[rng.integers(0, 8, b)]
        out[n] = dict(mm.generate_clips(digits, bgs, rng, 5), digits=digits, backgrounds=bgs)
    return out


# ----------------------------------------------------------------------------- MNIST files
def test_mnist_real_files():
    train_x, train_y = load_mnist("train")
    test_x, test_y = load_mnist("test")
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28) and train_x.dtype == np.uint8
    assert train_y.shape == (60000,) and set(np.unique(test_y)) == set(range(10))
    assert train_x.max() == 255 and np.array_equal(train_y[:8], [5, 0, 4, 1, 9, 2, 1, 3])  # the well-known first labels
    with pytest.raises(ValueError, match="Unknown MNIST split"):
        load_mnist("val")


def test_idx_errors_name_the_file(tmp_path):
    good = np.arange(2 * 3 * 3, dtype=np.uint8)
    header = bytes([0, 0, 8, 3]) + np.array([2, 3, 3], dtype=">u4").tobytes()
    ok = tmp_path / "ok-idx3-ubyte.gz"
    ok.write_bytes(gzip.compress(header + good.tobytes()))
    assert np.array_equal(read_idx(ok, ndim=3), good.reshape(2, 3, 3))
    bad_magic = tmp_path / "magic-idx3-ubyte.gz"
    bad_magic.write_bytes(gzip.compress(b"\x12\x34" + header[2:] + good.tobytes()))
    with pytest.raises(IDXFormatError, match="magic-idx3-ubyte.gz.*magic"):
        read_idx(bad_magic)
    truncated = tmp_path / "short-idx3-ubyte.gz"
    truncated.write_bytes(gzip.compress(header + good.tobytes()[:-5]))
    with pytest.raises(IDXFormatError, match="short-idx3-ubyte.gz.*size mismatch"):
        read_idx(truncated)
    with pytest.raises(IDXFormatError, match="ok-idx3-ubyte.gz.*3 dimensions, expected 1"):
        read_idx(ok, ndim=1)
    not_gzip = tmp_path / "plain-idx3-ubyte.gz"
    not_gzip.write_bytes(header + good.tobytes())
    with pytest.raises(IDXFormatError, match="plain-idx3-ubyte.gz"):
        read_idx(not_gzip)


def test_digit_pools_use_the_right_mnist_split():
    train_x, train_y = load_mnist("train")
    test_x, _ = load_mnist("test")
    tr, _, tr_idx = mm.digit_pool("train")
    va, va_y, va_idx = mm.digit_pool("val")
    te, _, te_idx = mm.digit_pool("test")
    assert np.array_equal(te, test_x) and np.array_equal(te_idx, np.arange(10000))
    assert np.array_equal(va, train_x[50000:]) and np.array_equal(va_y, train_y[50000:])
    assert len(tr) == 50000 and not set(tr_idx) & set(va_idx)
    assert load_mnist("train")[0] is train_x  # cached per process


# ----------------------------------------------------------------------------- motion protocol
def test_transform_sets_and_ground_truth(batches):
    kinds, angles, shifts = [], [], []
    for n, clips in batches.items():
        kinds.append(clips["step_kind"].ravel())
        angles.append(clips["step_angle"].ravel())
        shifts.append(clips["step_translation"].reshape(-1, 2))
    kind, angle, shift = np.concatenate(kinds), np.concatenate(angles), np.concatenate(shifts)
    rot, tra = kind == mm.ROTATION, kind == mm.TRANSLATION
    assert (rot | tra).all() and rot.sum() > 200 and tra.sum() > 200
    assert set(angle[rot].tolist()) == ROT and (shift[rot] == 0).all()
    assert set(shift[tra][:, 0].tolist()) == TRANS and set(shift[tra][:, 1].tolist()) == TRANS
    assert (angle[tra] == 0).all()

    # The per-step ground truth agrees with the poses: T_X of consecutive frames.
    clips = batches[1]
    poses = torch.from_numpy(clips["poses"][:, :, 0]).double()
    theta = relative_affine(poses[:, :-1], poses[:, 1:]).numpy()  # (b, t-1, 2, 3)
    ang = np.rad2deg(np.arctan2(theta[..., 1, 0], theta[..., 0, 0]))
    np.testing.assert_allclose(ang, clips["step_angle"][..., 0], atol=1e-3)
    centre = clips["centre"][:, :, 0]
    disp = centre[:, 1:] - centre[:, :-1]
    np.testing.assert_allclose(disp, clips["step_translation"][:, :, 0], atol=1e-3)
    np.testing.assert_allclose(clips["angle"][:, 1:, 0], np.cumsum(clips["step_angle"][..., 0], axis=1), atol=1e-4)
    np.testing.assert_allclose(clips["poses"][:, 0], np.broadcast_to(np.eye(2, 3), clips["poses"][:, 0].shape), atol=1e-6)


def test_digits_stay_inside_the_frame(batches):
    for n, clips in batches.items():
        inside = mm.poses_inside(clips["digits"], clips["offsets"], clips["poses"])
        assert inside.shape == (len(clips["digits"]), 5, n) and inside.all()
        layers = mm.render_layers(clips["digits"], clips["offsets"], clips["poses"])
        mass = layers.sum(dim=(-1, -2))
        assert torch.allclose(mass, mass[:, :1], rtol=0.02)  # no ink cut off at the border
    # Negative control: digits pushed 40 px right: any lost ink is flagged as outside.
    clips = batches[1]
    mass = mm.render_layers(clips["digits"], clips["offsets"], clips["poses"]).sum(dim=(-1, -2))
    pushed = clips["poses"].astype(np.float64).copy()
    pushed[..., 0, 2] -= 2 * 40 / 64  # sample 40 px to the left = content moves right
    inside = mm.poses_inside(clips["digits"], clips["offsets"], pushed)
    lost = mm.render_layers(clips["digits"], clips["offsets"], pushed).sum(dim=(-1, -2)) < 0.98 * mass
    assert lost.any() and not (inside & lost.numpy()).any()


def test_warping_by_T_X_reproduces_the_next_frame(batches):
    clips = batches[1]
    layers = mm.render_layers(clips["digits"], clips["offsets"], clips["poses"])[:, :, 0]
    poses = torch.from_numpy(clips["poses"][:, :, 0]).double()
    theta = relative_affine(poses[:, :-1], poses[:, 1:]).float().reshape(-1, 2, 3)
    src, tgt = layers[:, :-1].reshape(-1, 1, 64, 64), layers[:, 1:].reshape(-1, 1, 64, 64)

    def warp(th):
        return F.grid_sample(src, F.affine_grid(th, src.shape, align_corners=False), align_corners=False)

    def rel_err(x):
        return ((x - tgt).abs().sum((1, 2, 3)) / tgt.sum((1, 2, 3))).numpy()

    err = rel_err(warp(theta))
    kind = clips["step_kind"][:, :, 0].ravel()
    assert err[kind == mm.TRANSLATION].max() < 1e-4  # integer shifts are exact
    assert err[kind == mm.ROTATION].max() < 0.3 and err.mean() < 0.06  # bilinear re-interpolation only
    iou = (((warp(theta) > 0.5) & (tgt > 0.5)).sum((1, 2, 3)) / ((warp(theta) > 0.5) | (tgt > 0.5)).sum((1, 2, 3)))
    assert iou.min() > 0.75
    # Negative control: the inverse transform (wrong direction) is far off.
    inv = relative_affine(poses[:, 1:], poses[:, :-1]).float().reshape(-1, 2, 3)
    assert rel_err(warp(inv)).mean() > 10 * err.mean()


def test_composition_masks_and_exact_rerender(batches):
    for n, clips in batches.items():
        layers = mm.render_layers(clips["digits"], clips["offsets"], clips["poses"]).numpy()
        keep = np.prod(1.0 - layers, axis=2)
        expected = clips["backgrounds"][:, None].astype(np.float64) * keep[..., None]
        assert np.abs(clips["frames"] - expected).max() <= 0.5 + 1e-3  # frame = round(bg * prod(1 - d))
        assert np.array_equal(clips["masks"], (layers > 0.5).any(axis=2).astype(np.uint8))
        assert np.array_equal(clips["frames"][keep == 1], np.broadcast_to(clips["backgrounds"][:, None], clips["frames"].shape)[keep == 1])
        frames, masks = mm.render(clips["digits"], clips["offsets"], clips["poses"], clips["backgrounds"])
        assert frames.shape == (len(clips["digits"]), 5, 3, 64, 64) and masks.shape == (len(clips["digits"]), 5, 1, 64, 64)
        assert torch.equal(frames, torch.from_numpy(clips["frames"]).permute(0, 1, 4, 2, 3).float() / 255.0)
        assert torch.equal(masks[:, :, 0], torch.from_numpy(clips["masks"]).float())
    two = batches[2]
    assert (two["digits"][:, 0] != two["digits"][:, 1]).any(axis=(1, 2)).all()  # distinct instances


def test_rotation_direction_is_counter_clockwise():
    """A bar pointing right from the box centre points up after a +90 degree step."""
    digit = np.zeros((1, 1, 28, 28), dtype=np.uint8)
    digit[0, 0, 13:15, 14:26] = 255
    offsets = np.array([[[18, 18]]])
    g0 = mm_motion._translation(offsets.astype(np.float64))
    step = mm_motion._step_matrices(np.array([[mm.ROTATION]]), np.array([[90.0]]), np.zeros((1, 1, 2)), g0[..., :2, 2] + 13.5)
    poses = mm_motion._poses_from_forward(np.stack([g0, step @ g0], axis=1), 64)
    ys, xs = np.nonzero(mm.render_layers(digit, offsets, poses)[0, 1, 0].numpy() > 0.5)
    assert ys.max() <= 32 and ys.min() < 24 and xs.min() >= 30 and xs.max() <= 33
    theta = relative_affine(torch.from_numpy(poses[0, 0, 0]), torch.from_numpy(poses[0, 1, 0]))
    assert np.rad2deg(np.arctan2(theta[1, 0], theta[0, 0])) == pytest.approx(90.0)


# ----------------------------------------------------------------------------- datasets
def test_train_is_procedural_and_deterministic_per_key():
    source = small_source(num_digits=2)
    ds = source.dataset("train")
    assert ds.procedural and len(ds) == 20 and ds.clip_length(0) == 5
    assert ds.has_masks and ds.has_backgrounds and ds.has_poses
    a, b = ds.get(7), small_source(num_digits=2).dataset("train").get(7)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    epoch1 = ds.get(len(ds) + 7)  # the DataModule's key for clip 7 of epoch 1
    assert not torch.equal(a["frames"], epoch1["frames"]) and int(epoch1["index"]) == 27
    assert not torch.equal(a["frames"], small_source(num_digits=2, seed=4).dataset("train").get(7)["frames"])
    sub = ds.get(7, frames=[3, 1])
    assert torch.equal(sub["frames"], a["frames"][[3, 1]]) and torch.equal(sub["poses"], a["poses"][[3, 1]])
    assert a["poses"].shape == (5, 2, 2, 3) and a["digit_labels"].shape == (2,)
    with pytest.raises(IndexError, match="out of range"):
        ds.get(0, frames=[5])


def test_choice_shortcut_is_generator_choice():
    """``_choice`` (the step draws) must match ``Generator.choice`` value for value and leave the
    generator in the same state: the train clips of a seed depend on it."""
    for seed in range(50):
        r1, r2 = np.random.default_rng(seed), np.random.default_rng(seed)
        for size in (1, 3, (2, 2)):
            assert np.array_equal(r1.choice(mm.ROTATIONS_DEG, size), mm_motion._choice(r2, mm.ROTATIONS_DEG, size))
        assert r1.integers(1 << 62) == r2.integers(1 << 62)


def test_batched_train_pairs_are_the_per_clip_pairs(cache_dir):
    """Speed (issue 17): the pair loader generates a batch of train clips at once (per-key
    generators, geometry vectorised over the batch) and renders only frames i, j; the items
    are bit-identical to the one-clip path (``record``: all frames of one clip)."""
    from torch.utils.data import DataLoader

    from datamodules.pair_frames import FramePairs

    for n in (1, 2):
        ds = small_source(num_digits=n).dataset("train")
        digits = [ds.record(k)["digits"][None] for k in (40, 41, 42)]
        rngs = [np.random.default_rng(k) for k in (1, 2, 3)]
        batched = mm.sample_motion(np.concatenate(digits), rngs, 5)
        for c, d in enumerate(digits):
            alone = mm.sample_motion(d, np.random.default_rng(c + 1), 5)
            for key in alone:
                assert np.array_equal(batched[key][c], alone[key][0]), key
        for key in (0, 5, 123):
            rec, got = ds.record(key), ds.get(key, [3, 0])
            assert torch.equal(got["frames"], torch.from_numpy(rec["frames"][[3, 0]]).permute(0, 3, 1, 2).float() / 255)
            assert torch.equal(got["masks"][:, 0], torch.from_numpy(rec["masks"][[3, 0]]).float())
            assert torch.equal(got["poses"], torch.from_numpy(rec["poses"][[3, 0]]))
        for split in ("train", "val"):
            view = FramePairs(small_source(num_digits=n).dataset(split, cache_dir=cache_dir), split, 3, None)
            keys = list(range(70, 90)) if split == "train" else list(range(24))
            batch = view.__getitems__(keys)
            assert len(batch) == len(keys)
            for k, item in zip(keys, batch):
                single = view[k]
                assert item.keys() == single.keys() and {"x1", "x2", "T_X", "mask1", "background"} <= set(item)
                for name in item:
                    assert torch.equal(item[name], single[name]), (split, name)
            loaded = next(iter(DataLoader(view, batch_size=4)))  # the DataLoader uses __getitems__
            assert torch.equal(loaded["x2"], torch.stack([view[k]["x2"] for k in range(4)]))
    with pytest.raises(ValueError, match="same number of frames"):
        ds.get_batch([0, 1], [[0, 1], [2]])


def _check_item(item, n):
    assert item["frames"].shape == (5, 3, 64, 64) and item["frames"].dtype == torch.float32
    assert 0.0 <= item["frames"].min() and item["frames"].max() <= 1.0
    assert item["masks"].shape == (5, 1, 64, 64) and set(item["masks"].unique().tolist()) <= {0.0, 1.0}
    assert item["masks"].sum() > 0
    assert item["background"].shape == (3, 64, 64) and item["background"].max() <= 1.0
    assert item["poses"].shape == (5, n, 2, 3) and item["poses"].dtype == torch.float32
    assert torch.allclose(item["poses"][0], torch.eye(2, 3).expand(n, 2, 3), atol=1e-6)
    assert item["index"].dtype == torch.int64 and item["index"].shape == ()
    assert item["digit_labels"].dtype == torch.int64 and item["digit_labels"].shape == (n,)
    # Character pixels are blackened (darker than half the background), the rest is background.
    dark = item["frames"].sum(1) <= 0.5 * item["background"].sum(0) + 3 / 255
    assert dark[item["masks"][:, 0] > 0].all()


def test_val_test_are_fixed_cached_and_not_rebuilt(cache_dir, monkeypatch):
    source = small_source()
    source.prepare(cache_dir=cache_dir)
    val, test = source.dataset("val", cache_dir=cache_dir), source.dataset("test", cache_dir=cache_dir)
    assert len(val) == 24 and len(test) == 30 and not val.procedural
    assert isinstance(val.arrays["frames"], np.memmap)
    _check_item(val[3], 1)
    _check_item(test[29], 1)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("cache rebuilt")

    monkeypatch.setattr(mm, "build_split_arrays", no_rebuild)
    again = small_source().dataset("test", cache_dir=cache_dir)
    for key, value in test[5].items():
        assert torch.equal(value, again[5][key]), key
    source.prepare(cache_dir=cache_dir)  # cheap, no rebuild
    blob = pickle.dumps(test)  # DataLoader workers under spawn: memory maps travel by file name
    assert len(blob) < 20_000 and torch.equal(pickle.loads(blob)[7]["frames"], test[7]["frames"])
    # A different parameter is a different cache (and would need a build).
    with pytest.raises(AssertionError, match="cache rebuilt"):
        small_source(test_clips=31).dataset("test", cache_dir=cache_dir)

    # Digits come from the right MNIST split; backgrounds from the right background split.
    train_x, _ = load_mnist("train")
    test_x, test_y = load_mnist("test")
    rec = test.record(4)
    assert np.array_equal(rec["digits"], test_x[rec["digit_indices"]]) and rec["digit_labels"][0] == test_y[rec["digit_indices"][0]]
    vrec = val.record(4)
    assert np.array_equal(vrec["digits"], train_x[50000 + vrec["digit_indices"]])
    assert np.array_equal(rec["background"], split_backgrounds("test", 8, 64, 3)[0][rec["background_index"]])
    assert np.array_equal(val.backgrounds, split_backgrounds("val", 8, 64, 3)[0])
    frames, _ = mm.render(rec["digits"][None], rec["offsets"][None], rec["poses"][None], rec["background"][None])
    assert torch.equal(frames[0], test[4]["frames"])


def test_procedural_and_cached_items_agree_in_format(cache_dir):
    source = small_source(num_digits=2)
    _check_item(source.dataset("train").get(3), 2)
    _check_item(source.dataset("val", cache_dir=cache_dir)[0], 2)


def test_bad_arguments_get_clear_errors():
    for bad in (0, -1, 1.5, True, 5):
        with pytest.raises(ValueError, match="num_digits"):
            mm.MovingMNIST(num_digits=bad)
    with pytest.raises(ValueError, match="image_size=32 is not supported"):
        mm.MovingMNIST(image_size=32)
    with pytest.raises(ValueError, match="num_frames"):
        mm.MovingMNIST(num_frames=1)
    with pytest.raises(ValueError, match="Unknown split"):
        small_source().dataset("validation")
    with pytest.raises(ValueError, match="digits must be"):
        mm.generate_clips(np.zeros((2, 1, 32, 32), np.uint8), np.zeros((2, 64, 64, 3), np.uint8), np.random.default_rng(0), 5)


def test_jsonargparse_builds_the_source():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--data", type=mm.MovingMNIST)
    cfg = parser.parse_args(["--data", '{"class_path": "datamodules.moving_mnist.MovingMNIST", "init_args": {"num_digits": 2}}'])
    source = parser.instantiate_classes(cfg).data
    assert isinstance(source, mm.MovingMNIST) and source.num_digits == 2 and source.num_frames == 5


# ----------------------------------------------------------------------------- evaluation support
@pytest.mark.parametrize("anchor", ["frame", "character"])
def test_transfer_onto_the_same_clip_gives_frame_j(batches, anchor):
    clips = batches[2]
    poses, off = clips["poses"], clips["offsets"]
    b = len(poses)
    rng = np.random.default_rng(0)
    i = rng.integers(0, 5, b)
    j = (i + rng.integers(1, 5, b)) % 5
    ar = np.arange(b)
    target = mm.transfer_poses(poses[ar, i], poses[ar, j], poses[ar, i], off, off, anchor=anchor)
    np.testing.assert_allclose(target, poses[ar, j], atol=1e-5)
    frames, _ = mm.render(clips["digits"], off, target[:, None].astype(np.float32), clips["backgrounds"])
    truth = torch.from_numpy(clips["frames"][ar, j]).permute(0, 3, 1, 2).float() / 255
    diff = (frames[:, 0] - truth).abs()
    assert diff.max() <= 1.5 / 255 and (diff > 0).float().mean() < 1e-3


def test_transfer_between_clips(batches):
    clips = batches[1]
    poses, off = clips["poses"].astype(np.float64), clips["offsets"]
    p1i, p1j, p2i = poses[:40, 1], poses[:40, 3], poses[40:80, 0]
    o1, o2 = off[:40], off[40:80]
    # "frame": clip 2 undergoes the same image-space T_X as clip 1.
    tgt = torch.from_numpy(mm.transfer_poses(p1i, p1j, p2i))
    t1 = relative_affine(torch.from_numpy(p1i), torch.from_numpy(p1j))
    torch.testing.assert_close(relative_affine(torch.from_numpy(p2i), tgt), t1)
    # "character": same rotation angle and same centre displacement as clip 1's digit.
    tgt_c = mm.transfer_poses(p1i, p1j, p2i, o1, o2, anchor="character")
    t2 = relative_affine(torch.from_numpy(p2i), torch.from_numpy(tgt_c)).numpy()
    np.testing.assert_allclose(np.arctan2(t2[..., 1, 0], t2[..., 0, 0]), np.arctan2(t1[..., 1, 0], t1[..., 0, 0]), atol=1e-9)
    c = lambda p, o: mm.digit_centres(p[:, None], o)[:, 0]  # noqa: E731
    np.testing.assert_allclose(c(tgt_c, o2) - c(p2i, o2), c(p1j, o1) - c(p1i, o1), atol=1e-6)
    with pytest.raises(ValueError, match="anchor"):
        mm.transfer_poses(p1i, p1j, p2i, anchor="global")


def test_fig3_examples():
    source = small_source()
    ex = source.fig3_examples(12, seed=1)
    again = source.fig3_examples(12, seed=1)
    assert all(torch.equal(ex[k], again[k]) for k in ex)
    assert not torch.equal(ex["x1_i"], source.fig3_examples(12, seed=1, start=12)["x1_i"])
    for key in ("x1_i", "x1_j", "x2_i", "x2_j", "transformation_target", "background_target", "other_frame", "background1"):
        assert ex[key].shape == (12, 3, 64, 64) and 0 <= ex[key].min() and ex[key].max() <= 1, key
    assert ex["transformation_target_mask"].shape == (12, 1, 64, 64)
    assert (ex["frame_i"] != ex["frame_j"]).all() and (ex["frame_k"] != ex["frame_j"]).all()
    assert ex["transformation_target_inside"].dtype == torch.bool
    # Frames come from the clips' poses; the frame-i poses of each clip match their frames.
    torch.testing.assert_close(ex["transfer_theta"], relative_affine(ex["poses1"][torch.arange(12), ex["frame_i"]].double(),
                                                                     ex["poses1"][torch.arange(12), ex["frame_j"]].double()).float())
    # Background target = the character of x1_j (same blackening factor) on clip 2's background.
    both = (ex["background1"] > 0.2) & (ex["background2"] > 0.2)
    ratio_bt = ex["background_target"] / ex["background2"].clamp_min(1e-3)
    ratio_x1 = ex["x1_j"] / ex["background1"].clamp_min(1e-3)
    assert (ratio_bt - ratio_x1).abs()[both].max() < 0.03
    assert ex["background_target_mask"].sum() > 0
    # Transformation target: where its mask is empty it shows clip 2's background.
    off = ex["transformation_target"].sum(1, keepdim=True) >= ex["background2"].sum(1, keepdim=True) - 1e-6
    assert off.float().mean() > 0.5 and ex["transformation_target_mask"][off].sum() == 0
    # Test split: MNIST test digits (labels recorded) and test backgrounds.
    test_bgs = torch.from_numpy(split_backgrounds("test", 8, 64, 3)[0]).permute(0, 3, 1, 2).float() / 255
    assert all(any(torch.equal(b, t) for t in test_bgs) for b in ex["background2"])


def test_tz_analysis_pairs():
    source = small_source()
    digit = mm.find_digit(5, "test")
    assert load_mnist("test")[1][digit] == 5
    out = source.tz_analysis_pairs(24, digit, 2, seed=0)
    assert out["x_i"].shape == (24, 3, 64, 64) and out["theta"].shape == (24, 2, 3) and int(out["digit_label"]) == 5
    assert (out["frame_i"] != out["frame_j"]).all()
    bg = torch.from_numpy(split_backgrounds("test", 8, 64, 3)[0][2]).permute(2, 0, 1).float() / 255
    assert torch.equal(out["x_i"][out["masks_i"].expand(-1, 3, -1, -1) == 0].max(), bg.max())  # one fixed background
    ar = torch.arange(24)
    theta = relative_affine(out["poses"][ar, out["frame_i"]].double(), out["poses"][ar, out["frame_j"]].double())
    torch.testing.assert_close(out["theta"], theta.float())
    # Angle/translation = the generating steps between i and j (signed by direction).
    lo, hi = torch.minimum(out["frame_i"], out["frame_j"]), torch.maximum(out["frame_i"], out["frame_j"])
    sign = torch.where(out["frame_j"] > out["frame_i"], 1.0, -1.0)
    steps = torch.arange(4)[None]
    between = ((steps >= lo[:, None]) & (steps < hi[:, None])).float()
    torch.testing.assert_close(out["angle_deg"], sign * (out["step_angle"] * between).sum(1))
    torch.testing.assert_close(out["translation_px"], sign[:, None] * (out["step_translation"] * between[..., None]).sum(1), atol=1e-4, rtol=0)
    ang = torch.rad2deg(torch.atan2(out["theta"][:, 1, 0], out["theta"][:, 0, 0]))
    torch.testing.assert_close(ang, out["angle_deg"], atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="digit_index"):
        source.tz_analysis_pairs(2, 10000, 0)


def test_benchmark_runs():
    assert mm.benchmark_generation(seconds=0.2, batch_size=32) > 0
