"""``PairFramesDataModule``: two frames of one clip, for the equivariant scene model (paper 000 §3)."""

from __future__ import annotations

import torch

from datamodules.action_sequence import SequenceWindows
from datamodules.base import ClipDataset, ClipSource, relative_affine
from datamodules.clip_datamodule import ClipDataModule, KeyedView

PASSTHROUGH = ("background", "action", "view", "label", "attributes", "character", "index")


class FramePairs(KeyedView):
    """Item ``key`` -> frames (i, j), i != j, of one clip; ``|i - j| <= max_gap`` when set."""

    def __init__(self, clips: ClipDataset, split: str, seed: int, max_gap: int | None) -> None:
        super().__init__(clips, split, seed)
        self.max_gap = max_gap

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        index, rng = self.locate(key)
        length = self.clips.clip_length(index)
        if length < 2:
            raise ValueError(f"Clip {index} of the {self.split} split has {length} frame(s); pairs need at least 2.")
        i = int(rng.integers(length))
        choices = [j for j in range(length) if j != i and (self.max_gap is None or abs(j - i) <= self.max_gap)]
        j = int(choices[rng.integers(len(choices))])
        clip = self.clips.get(index, [i, j])
        item = {"x1": clip["frames"][0], "x2": clip["frames"][1], "i": torch.tensor(i), "j": torch.tensor(j)}
        if "masks" in clip:
            item["mask1"], item["mask2"] = clip["masks"][0], clip["masks"][1]
        if "poses" in clip:
            item["T_X"] = relative_affine(clip["poses"][0], clip["poses"][1])
        item.update({k: clip[k] for k in PASSTHROUGH if k in clip})
        return item


class PairFramesDataModule(ClipDataModule):
    """Pairs ``(x1, x2)`` of two random frames of one clip (plus masks, background and the
    ground-truth affine ``T_X`` (b, n, 2, 3) where the dataset has them).

    Training pairs are drawn afresh every epoch; val/test pairs are fixed by the seed.

    Args:
        max_frame_gap: if set, only pairs with ``|i - j| <= max_frame_gap`` ("nearby frames").
        predict_split: the split ``cli.py predict`` reads; ``predict`` gets whole clips
            (``frames``), not pairs: the first ``predict_num_frames`` frames of each clip (looped
            when a clip is shorter; default: the split's shortest clip, at most 16 frames).
        **kwargs: see ``ClipDataModule`` (source, batch sizes, workers, assets, cache, seed).
    """

    def __init__(
        self,
        source: ClipSource,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        assets_root: str | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
        pin_memory: bool = False,
        max_frame_gap: int | None = None,
        predict_split: str = "test",
        predict_num_frames: int | None = None,
    ) -> None:
        super().__init__(source, batch_size, eval_batch_size, num_workers, assets_root, cache_dir, seed, pin_memory, predict_split)
        if predict_num_frames is not None and predict_num_frames < 1:
            raise ValueError(f"predict_num_frames must be >= 1 or null, got {predict_num_frames}.")
        self.predict_num_frames = predict_num_frames
        if max_frame_gap is not None and max_frame_gap < 1:
            raise ValueError(f"max_frame_gap must be >= 1 or null, got {max_frame_gap}.")
        self.max_frame_gap = max_frame_gap

    def make_view(self, clips: ClipDataset, split: str) -> FramePairs:
        return FramePairs(clips, split, self.seed, self.max_frame_gap)

    def predict_view(self, clips: ClipDataset, split: str) -> SequenceWindows:
        """Whole clips for ``predict`` (``lightning_modules.prediction.scene_predict``), from frame 0, looped."""
        length = self.predict_num_frames or min(16, min(clips.clip_length(i) for i in range(len(clips))))
        return SequenceWindows(clips, split, self.seed, length, random_window=False, drop_short=False, looped=True)
