"""``ActionSequenceDataModule``: fixed-length action-labelled clips, for the Hamiltonian model (paper 004)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datamodules.base import ClipDataset, ClipSource
from datamodules.clip_datamodule import ClipDataModule, KeyedView


class SequenceWindows(KeyedView):
    """Item ``key`` -> ``num_frames`` consecutive frames of one clip (random window if asked)."""

    def __init__(
        self, clips: ClipDataset, split: str, seed: int, num_frames: int, random_window: bool, drop_short: bool,
        looped: bool = False, option: str = "num_frames",
    ) -> None:
        indices = None
        if not clips.procedural and not looped:
            short = [i for i in range(len(clips)) if clips.clip_length(i) < num_frames]
            if short and not drop_short:
                raise ValueError(
                    f"{len(short)} clip(s) of the {split} split are shorter than {option}={num_frames} "
                    f"(e.g. clip {short[0]} has {clips.clip_length(short[0])} frames). Lower "
                    f"--data.init_args.{option} or set --data.init_args.drop_short_clips true."
                )
            if short:
                indices = sorted(set(range(len(clips))) - set(short))
                if not indices:
                    raise ValueError(f"Every clip of the {split} split is shorter than {option}={num_frames}.")
        super().__init__(clips, split, seed, indices)
        self.num_frames, self.random_window, self.looped = num_frames, random_window, looped

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        index, rng = self.locate(key)
        length = self.clips.clip_length(index)
        if self.looped:  # any start; frame length-1 is followed by frame 0
            start = int(rng.integers(length)) if self.random_window else 0
            frames = (start + np.arange(self.num_frames)) % length
        else:
            start = int(rng.integers(length - self.num_frames + 1)) if self.random_window else 0
            frames = np.arange(start, start + self.num_frames)
        item = self.clips.get(index, frames.tolist())
        item.pop("poses", None)
        return item


class ActionSequenceDataModule(ClipDataModule):
    """Clips of ``num_frames`` frames with their action label (and attributes where known).

    Batches: ``frames`` (b, t, 3, h, w) in [0, 1], ``action``, ``view``, ``label`` (b,),
    ``attributes`` (b, a), ``masks`` (b, t, 1, h, w) when available.

    Args:
        num_frames: frames per clip; longer clips are windowed, shorter ones rejected.
        train_num_frames: frames per training window (default ``num_frames``); val/test keep
            ``num_frames``, the length the evaluation protocol scores.
        random_window: random window start in training (val/test always start at frame 0).
        drop_short_clips: skip clips shorter than ``num_frames`` instead of raising.
        looped: the clips are animation loops (DSVAE Sprites: each 8-frame clip is one cycle):
            windows wrap from the last frame to the first, so the model also sees the step that
            closes the cycle, and clips may be shorter than the window. Training windows start
            at any frame (``random_window``) or at frame 0; val/test windows start at frame 0.
            Not in paper 004 (it trains on the 8 frames in order); without it a model can fit
            the 8 frames with a rotation that does not close the cycle, and 16-frame generation
            degrades after frame 8 (measured: per-frame SSIM 0.90 for frames 0-7 vs 0.84 for
            frames 8-15). With ``random_window: false`` and ``train_num_frames: 10`` every
            training window is the whole cycle plus two steps (frames 0..7, 0, 1) and still
            starts where test clips start, so the momentum read from a lone first frame (image ->
            sequence) is learned at the animation's first frame, as in the paper; random starts
            leave it ambiguous for poses that recur in both directions (Sprites' slash). One
            step past the cycle (9 frames) pins only the position after a cycle, not the
            momentum, and the second pass of a 16-frame generation can drift.
        batch_size: global batch size (default 24 here); it must divide by the number of DDP processes.
        **kwargs: see ``ClipDataModule`` (eval batch size, workers, assets, cache, seed, pin memory,
            predict split); LightningCLI lists them as this class's options.
    """

    def __init__(
        self,
        source: ClipSource,
        num_frames: int = 8,
        random_window: bool = True,
        batch_size: int = 24,
        drop_short_clips: bool = False,
        looped: bool = False,
        train_num_frames: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(source, batch_size=batch_size, **kwargs)
        for option, value in (("num_frames", num_frames), ("train_num_frames", train_num_frames)):
            if value is not None and value < 2:
                raise ValueError(f"{option} must be >= 2, got {value}.")
        self.num_frames, self.random_window, self.drop_short_clips = num_frames, random_window, drop_short_clips
        self.train_num_frames = num_frames if train_num_frames is None else train_num_frames
        self.looped = looped

    def make_view(self, clips: ClipDataset, split: str) -> SequenceWindows:
        train = split == "train"
        length, option = (self.train_num_frames, "train_num_frames") if train else (self.num_frames, "num_frames")
        return SequenceWindows(
            clips, split, self.seed, length, self.random_window and train, self.drop_short_clips, self.looped, option
        )
