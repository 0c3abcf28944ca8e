"""``PairFramesDataModule``: two frames of one clip, for the equivariant scene model (paper 000 §3)."""

from __future__ import annotations

from typing import Any

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

    def pick(self, key: int) -> tuple[int, int, int]:
        """``(clip index, i, j)`` of item ``key``."""
        index, rng = self.locate(key)
        length = self.clips.clip_length(index)
        if length < 2:
            raise ValueError(f"Clip {index} of the {self.split} split has {length} frame(s); pairs need at least 2.")
        i = int(rng.integers(length))
        choices = [j for j in range(length) if j != i and (self.max_gap is None or abs(j - i) <= self.max_gap)]
        return index, i, int(choices[rng.integers(len(choices))])

    @staticmethod
    def _pair(clip: dict[str, torch.Tensor], i, j) -> dict[str, torch.Tensor]:
        """The item from ``clip`` holding frames (i, j) (one clip, or stacked clips on dim 0)."""
        a = (slice(None),) * (clip["frames"].dim() - 4)
        item = {"x1": clip["frames"][a + (0,)], "x2": clip["frames"][a + (1,)], "i": torch.tensor(i), "j": torch.tensor(j)}
        if "masks" in clip:
            item["mask1"], item["mask2"] = clip["masks"][a + (0,)], clip["masks"][a + (1,)]
        if "poses" in clip:
            item["T_X"] = relative_affine(clip["poses"][a + (0,)], clip["poses"][a + (1,)])
        item.update({k: clip[k] for k in PASSTHROUGH if k in clip})
        return item

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        index, i, j = self.pick(key)
        return self._pair(self.clips.get(index, [i, j]), i, j)

    def __getitems__(self, keys: list[int]) -> list[dict[str, torch.Tensor]]:
        """A batch of items (the DataLoader's batched fetch): one ``get_batch`` call where the
        clips support it (Moving MNIST: the clips are generated and rendered as one batch),
        the same items as ``[self[k] for k in keys]``."""
        get_batch = getattr(self.clips, "get_batch", None)
        if get_batch is None or not keys:
            return [self[k] for k in keys]
        picks = [self.pick(k) for k in keys]
        items = self._pair(get_batch([p[0] for p in picks], [[p[1], p[2]] for p in picks]), [p[1] for p in picks], [p[2] for p in picks])
        return [{k: v[b] for k, v in items.items()} for b in range(len(keys))]


class PairFramesDataModule(ClipDataModule):
    """Pairs ``(x1, x2)`` of two random frames of one clip (plus masks, background and the
    ground-truth affine ``T_X`` (b, n, 2, 3) where the dataset has them).

    Training pairs are drawn afresh every epoch; val/test pairs are fixed by the seed.

    Args:
        max_frame_gap: if set, only pairs with ``|i - j| <= max_frame_gap`` ("nearby frames").
        predict_num_frames: ``cli.py predict`` (split ``predict_split``) gets whole clips
            (``frames``), not pairs: the first ``predict_num_frames`` frames of each clip (looped
            when a clip is shorter; default: the split's shortest clip, at most 16 frames).
        **kwargs: see ``ClipDataModule`` (batch sizes, workers, assets, cache, seed, pin memory,
            predict split); LightningCLI lists them as this class's options.
    """

    def __init__(
        self,
        source: ClipSource,
        max_frame_gap: int | None = None,
        predict_num_frames: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(source, **kwargs)
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
