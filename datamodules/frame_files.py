"""``FrameFiles``: your own images and clips as prediction inputs (``cli.py predict``, the studio).

Unlike ``VideoFolder`` (a training set with splits and a cache), ``FrameFiles`` reads a short
list of inputs as they are, in the order given, and serves all of them in every split:

* an image file (png, jpg, ...): a still clip, the image held for ``still_frames`` frames (so
  image -> sequence and the scene manipulations work from a single picture);
* a folder of frame images (sorted by name) or a video file (gif; mp4 and others with the
  ``video`` extra): one clip;
* a folder of the above: each entry is an input (sorted by name).

Frames are centre-cropped to a square and resized to ``image_size`` (``VideoFolder``'s decoding).
``action`` labels the inputs for the Hamiltonian model's motion swap (an index into the model's
actions, or one per input); without it the inputs are unlabelled (``predict`` then skips ``swap``).

    python cli.py predict --config configs/sprites_hamiltonian_cpu.yaml --ckpt_path last.ckpt \\
        --data.init_args.source datamodules.FrameFiles --data.init_args.source.init_args.paths '[me.png, walk.gif]'
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from datamodules.base import ClipDataset, ClipSource, check_image_size, check_split, to_float_frames
from datamodules.video_folder import FRAME_EXTENSIONS, VIDEO_EXTENSIONS, VideoFolderError, _square_resize, read_clip


def expand_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Input files / clip folders: a folder holding frame images is one clip; any other folder
    contributes its images, videos and frame folders (sorted by name)."""
    out: list[Path] = []
    for p in map(lambda x: Path(x).expanduser(), paths):
        if not p.exists():
            raise VideoFolderError(f"Input {p} does not exist (FrameFiles paths).")
        if p.is_dir() and not any(c.suffix.lower() in FRAME_EXTENSIONS for c in p.iterdir() if c.is_file()):
            entries = sorted(c for c in p.iterdir() if not c.name.startswith("."))
            found = [c for c in entries if c.is_dir() or c.suffix.lower() in FRAME_EXTENSIONS + VIDEO_EXTENSIONS]
            if not found:
                raise VideoFolderError(f"No images, clips or frame folders in {p} (FrameFiles paths).")
            out.extend(found)
        else:
            out.append(p)
    if not out:
        raise VideoFolderError("FrameFiles needs at least one input path.")
    return out


def read_input(path: str | Path, image_size: int, still_frames: int = 8) -> np.ndarray:
    """uint8 ``t h w 3`` of one input: a still clip for an image file, else the clip's frames."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in FRAME_EXTENSIONS:
        with Image.open(path) as im:
            frame = _square_resize(im, image_size)
        return np.repeat(frame[None], still_frames, axis=0)
    if path.is_file() and path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise VideoFolderError(f"{path} is neither an image ({'/'.join(FRAME_EXTENSIONS)}) nor a video ({'/'.join(VIDEO_EXTENSIONS)}).")
    clip = read_clip(path, image_size)
    if len(clip) == 0:
        raise VideoFolderError(f"{path} holds no frames.")
    return clip


class FrameFilesDataset(ClipDataset):
    """The decoded inputs (every split is the same list)."""

    def __init__(self, clips: list[np.ndarray], names: list[str], image_size: int, actions: list[int] | None,
                 action_names: tuple[str, ...]) -> None:
        self.clips, self.names, self.image_size = clips, names, image_size
        self.clip_action = actions
        self.actions = action_names

    def __len__(self) -> int:
        return len(self.clips)

    def clip_length(self, index: int) -> int:
        return len(self.clips[index])

    def clip_name(self, index: int) -> str:
        return f"input {self.names[index]}"

    def get(self, index: int, frames: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        sel = self.frame_selection(index, frames)
        item = {"frames": to_float_frames(self.clips[index][sel]), "index": torch.tensor(index)}
        if self.clip_action is not None:
            item["action"] = item["label"] = torch.tensor(self.clip_action[index])
        return item


class FrameFiles(ClipSource):
    """Images, frame folders and videos as prediction inputs (module docstring).

    Args:
        paths: input files / folders (a single path may be given as a string).
        image_size: the model's frame side.
        still_frames: frames of the still clip made from an image file.
        action: action index of every input (one int), or one per input; ``None``: unlabelled.
        num_actions: the model's number of actions (names the labels ``action0``...; needed with ``action``).
    """

    def __init__(self, paths: list[str] | str, image_size: int = 64, still_frames: int = 8, action: int | list[int] | None = None,
                 num_actions: int | None = None) -> None:
        self.paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        self.image_size = check_image_size(image_size)
        if still_frames < 1:
            raise ValueError(f"still_frames must be >= 1, got {still_frames}.")
        if action is not None and not num_actions:
            raise ValueError("FrameFiles: with action labels, set num_actions to the model's number of actions.")
        self.still_frames, self.action, self.num_actions = still_frames, action, num_actions
        self._data: FrameFilesDataset | None = None

    def _load(self) -> FrameFilesDataset:
        if self._data is None:
            files = expand_inputs(self.paths)
            clips = [read_input(p, self.image_size, self.still_frames) for p in files]
            actions = None
            if self.action is not None:
                actions = [self.action] * len(files) if isinstance(self.action, int) else list(self.action)
                if len(actions) != len(files):
                    raise ValueError(f"FrameFiles: {len(actions)} actions for {len(files)} inputs; give one action or one per input.")
            n = self.num_actions or 0
            if actions and any(not 0 <= a < n for a in actions):
                raise ValueError(f"FrameFiles: actions {actions} out of range for num_actions={n}.")
            self._data = FrameFilesDataset(clips, [p.name for p in files], self.image_size, actions,
                                           tuple(f"action{k}" for k in range(n)) if actions else ())
        return self._data

    def prepare(self, assets_root=None, cache_dir=None) -> None:
        """Decode the inputs (nothing is cached)."""
        self._load()

    def dataset(self, split: str, assets_root=None, cache_dir=None) -> FrameFilesDataset:
        check_split(split)
        return self._load()
