"""The two DataModules on real data: shapes, dtypes, ranges, labels, epoch freshness, DDP checks."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from datamodules import ActionSequenceDataModule, DSVAESprites, MovingMNIST, PairFramesDataModule
from datamodules.clip_datamodule import EpochKeySampler


class FakeTrainer:
    """The two trainer facts a DataModule reads: world size and whether fit is resuming."""

    def __init__(self, world_size):
        self.world_size = world_size
        self.fit_loop = SimpleNamespace(restarting=False)


@pytest.fixture(scope="module")
def mnist_pairs(cache_dir):
    dm = PairFramesDataModule(
        MovingMNIST(num_digits=1, train_clips_per_epoch=64, val_clips=32, test_clips=32),
        batch_size=8, num_workers=0, cache_dir=cache_dir,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def sprite_sequences(cache_dir):
    dm = ActionSequenceDataModule(DSVAESprites(), num_frames=8, batch_size=6, num_workers=0, cache_dir=cache_dir)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_pair_batches_have_the_documented_keys_shapes_and_ranges(mnist_pairs):
    batch = next(iter(mnist_pairs.train_dataloader()))
    assert batch["x1"].shape == batch["x2"].shape == (8, 3, 64, 64)
    assert batch["x1"].dtype == torch.float32
    assert 0.0 <= batch["x1"].min() and batch["x1"].max() <= 1.0
    assert batch["mask1"].shape == (8, 1, 64, 64)
    assert set(batch["mask1"].unique().tolist()) <= {0.0, 1.0}
    assert batch["background"].shape == (8, 3, 64, 64)
    assert batch["T_X"].shape == (8, 1, 2, 3)
    assert (batch["i"] != batch["j"]).all()


def test_pair_T_X_maps_frame_i_character_onto_frame_j(mnist_pairs):
    """grid_sample(mask_i, affine_grid(T_X)) ~ mask_j: the affine convention of base.py."""
    batch = next(iter(mnist_pairs.val_dataloader()))
    grid = F.affine_grid(batch["T_X"][:, 0], list(batch["mask1"].shape), align_corners=False)
    warped = F.grid_sample(batch["mask1"], grid, align_corners=False)
    iou = ((warped > 0.5) & (batch["mask2"] > 0.5)).sum() / ((warped > 0.5) | (batch["mask2"] > 0.5)).sum()
    assert iou > 0.8


def test_training_pairs_are_fresh_each_epoch_and_reproducible(mnist_pairs):
    loader = mnist_pairs.train_dataloader()
    loader.sampler.set_epoch(0)
    epoch0 = next(iter(loader))["x1"]
    loader.sampler.set_epoch(1)
    epoch1 = next(iter(loader))["x1"]
    loader.sampler.set_epoch(0)
    again = next(iter(loader))["x1"]
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(epoch0, again)


def test_eval_pairs_are_fixed(mnist_pairs):
    first = next(iter(mnist_pairs.val_dataloader()))
    second = next(iter(mnist_pairs.val_dataloader()))
    assert torch.equal(first["x1"], second["x1"]) and torch.equal(first["j"], second["j"])


def test_max_frame_gap_limits_pairs(cache_dir):
    dm = PairFramesDataModule(MovingMNIST(val_clips=32, test_clips=32), batch_size=32, num_workers=0,
                              cache_dir=cache_dir, max_frame_gap=1)
    dm.prepare_data()
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert ((batch["i"] - batch["j"]).abs() == 1).all()


def test_sequence_batches_carry_labels(sprite_sequences):
    batch = next(iter(sprite_sequences.train_dataloader()))
    assert batch["frames"].shape == (6, 8, 3, 64, 64)
    assert 0.0 <= batch["frames"].min() and batch["frames"].max() <= 1.0
    assert batch["action"].shape == batch["view"].shape == batch["label"].shape == (6,)
    assert torch.equal(batch["label"], 3 * batch["action"] + batch["view"])
    assert batch["attributes"].shape == (6, 4)
    assert sprite_sequences.actions == ("walk", "spellcast", "slash")
    assert sprite_sequences.attribute_cardinalities == (6, 6, 6, 6)


def test_sequence_split_sizes(sprite_sequences):
    sprite_sequences.setup("test")
    assert len(sprite_sequences.items["test"]) == 2664
    assert len(sprite_sequences.items["train"]) == 9000
    val_chars = {int(sprite_sequences.datasets["val"][i]["character"]) for i in range(0, 288, 9)}
    test_chars = {int(sprite_sequences.datasets["test"][i]["character"]) for i in range(0, 2664, 9)}
    assert val_chars and not val_chars & test_chars


def test_too_long_windows_are_refused_with_the_fix(cache_dir):
    dm = ActionSequenceDataModule(DSVAESprites(), num_frames=9, batch_size=4, num_workers=0, cache_dir=cache_dir)
    dm.prepare_data()
    with pytest.raises(ValueError, match="shorter than num_frames=9.*drop_short_clips"):
        dm.setup("test")


def test_looped_windows_wrap_around_the_animation_cycle(cache_dir):
    """``looped``: training windows are cyclic shifts of the 8-frame loop (any start, frame 7 then
    frame 0), longer windows repeat the cycle, and val/test windows still start at frame 0."""
    dm = ActionSequenceDataModule(DSVAESprites(), num_frames=8, batch_size=4, num_workers=0, cache_dir=cache_dir, looped=True)
    dm.prepare_data()
    dm.setup("fit")
    train, clips = dm.items["train"], dm.datasets["train"]
    starts = set()
    for key in range(24):
        item = train[key]
        full = clips.get(int(item["index"]))["frames"]
        matches = [s for s in range(8) if torch.equal(item["frames"], full[[(s + t) % 8 for t in range(8)]])]
        assert matches, "a training window is not a cyclic shift of its clip"
        starts.add(matches[0])
    assert len(starts) > 3  # not always frame 0
    val = dm.items["val"][0]
    assert torch.equal(val["frames"], dm.datasets["val"].get(int(val["index"]))["frames"])
    long = ActionSequenceDataModule(DSVAESprites(), num_frames=12, batch_size=4, num_workers=0, cache_dir=cache_dir, looped=True)
    long.setup("fit")
    item = long.items["train"][0]
    torch.testing.assert_close(item["frames"][8:], item["frames"][:4])


def test_train_num_frames_gives_whole_cycles_from_frame_zero(cache_dir):
    """``train_num_frames: 9`` with ``looped`` and no random start: every training window is the
    clip's frames 0..7 then frame 0 again; val/test windows keep ``num_frames``."""
    dm = ActionSequenceDataModule(DSVAESprites(), num_frames=8, train_num_frames=9, random_window=False, batch_size=4,
                                  num_workers=0, cache_dir=cache_dir, looped=True)
    dm.prepare_data()
    dm.setup("fit")
    for key in range(6):
        item = dm.items["train"][key]
        full = dm.datasets["train"].get(int(item["index"]))["frames"]
        assert torch.equal(item["frames"], full[[0, 1, 2, 3, 4, 5, 6, 7, 0]])
    assert dm.items["val"][0]["frames"].shape[0] == 8
    with pytest.raises(ValueError, match="train_num_frames must be >= 2"):
        ActionSequenceDataModule(DSVAESprites(), train_num_frames=1)
    unlooped = ActionSequenceDataModule(DSVAESprites(), train_num_frames=9, num_workers=0, cache_dir=cache_dir)
    with pytest.raises(ValueError, match="shorter than train_num_frames=9.*--data.init_args.train_num_frames"):
        unlooped.setup("fit")


def test_batch_size_must_divide_across_ranks(cache_dir):
    dm = PairFramesDataModule(MovingMNIST(val_clips=32, test_clips=32), batch_size=6, eval_batch_size=4,
                              num_workers=0, cache_dir=cache_dir)
    dm.trainer = FakeTrainer(world_size=4)
    with pytest.raises(ValueError, match="data.batch_size=6 does not divide across 4 DDP processes"):
        dm.setup("fit")
    dm.trainer = FakeTrainer(world_size=2)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_dataloader().batch_size == 3


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        PairFramesDataModule(MovingMNIST(), batch_size=0)
    with pytest.raises(ValueError, match="max_frame_gap must be >= 1"):
        PairFramesDataModule(MovingMNIST(), max_frame_gap=0)


def test_epoch_key_sampler_covers_each_clip_once_per_epoch():
    sampler = EpochKeySampler(10, seed=3)
    sampler.set_epoch(2)
    keys = list(sampler)
    assert sorted(k % 10 for k in keys) == list(range(10))
    assert all(20 <= k < 30 for k in keys)


def test_epoch_key_sampler_resumes_mid_epoch_where_it_stopped():
    full = EpochKeySampler(10, seed=3)
    full.set_epoch(1)
    resumed = EpochKeySampler(10, seed=3, resume_epoch=1, resume_skip=4)
    resumed.set_epoch(1)
    assert list(resumed) == list(full)[4:]
    assert list(resumed) == list(full)  # only the first pass after the resume is shortened
