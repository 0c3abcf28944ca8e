"""Your own videos: a folder of clips (covers the Fashion and MUG settings, and any video).

Layout, under ``root`` (hidden entries, starting with ``.``, are ignored):

* flat: ``root/<clip>/`` folders of frames (png, jpg, jpeg, bmp, webp; sorted by file name)
  and/or video files ``root/<clip>.gif|.mp4|.avi|.mov|.mkv|.webm|.m4v``;
* labelled: ``root/<action>/<clip>/...`` or ``root/<action>/<clip>.<video>``. The folder is
  labelled when it has no top-level video file and no top-level folder holds frame images
  directly (every top-level folder holds only clip folders and/or videos); the action names
  are the top-level folder names, sorted, and items gain ``action`` and ``label`` (= action).

Decoding: frames and GIFs with Pillow (images with transparency are composited on black; 16-bit
grayscale frames are scaled to 8 bits by their real values);
other video formats with ``torchcodec``, ``av`` (PyAV) or ``imageio`` (v3, with its ffmpeg
plugin), whichever is installed (torchvision 0.29 no longer decodes video). Every frame is
centre-cropped to a square (the shorter side) and resized to ``image_size`` with Pillow's
antialiased bicubic filter. ``frame_stride`` keeps every k-th frame; ``num_frames`` then keeps
the first ``num_frames`` frames of every clip and rejects shorter clips.

Splits: clips (sorted by path) are shuffled with ``seed``; the first
``round(test_fraction * n)`` are test, the next ``round(val_fraction * n)`` val, the rest
train (a non-zero fraction gets at least one clip). Decoded uint8 frames are cached
(``cached_arrays``) under a key of the root path, every source file's relative path, size and
modification time, and the decoding parameters: editing the folder rebuilds the cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageSequence, UnidentifiedImageError

from datamodules.base import ClipDataset, ClipSource, MemmapPickle, check_image_size, check_split, to_float_frames
from datamodules.cache import cached_arrays
from utils.checks import check_int
from utils.progress import progress_bar

FRAME_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
PIL_VIDEO_EXTENSIONS: tuple[str, ...] = (".gif",)
VIDEO_EXTENSIONS: tuple[str, ...] = (".gif", ".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
CACHE_VERSION = 1


class VideoFolderError(ValueError):
    """Bad video-folder input; the message names the path and what to do."""


def _visible(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if not p.name.startswith("."))


def _to_8bit(image: Image.Image) -> Image.Image:
    """High-bit-depth grayscale (``I;16*``, ``I``: 16-bit PNG frames; ``F``) as 8-bit ``L`` with its real values.

    Pillow's ``convert("RGB")`` clips these modes at 255, so a 16-bit frame came out all white.
    Integer modes hold 16-bit samples (0..65535 -> 0..255); float images are taken as 0..1.
    """
    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    scale = 255.0 if image.mode == "F" else 255.0 / 65535.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")


def _square_resize(image: Image.Image, size: int) -> np.ndarray:
    """Centre-crop to a square, resize (antialiased bicubic), return uint8 ``h w 3``."""
    image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def _decode_video(path: Path) -> list[Image.Image]:
    """All frames of a non-GIF video, via the first installed backend."""
    try:
        from torchcodec.decoders import VideoDecoder  # type: ignore

        frames = VideoDecoder(str(path))[:]  # (n, c, h, w) uint8
        return [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]
    except ImportError:
        pass
    try:
        import av  # type: ignore

        with av.open(str(path)) as container:
            return [frame.to_image() for frame in container.decode(video=0)]
    except ImportError:
        pass
    try:
        import imageio.v3 as iio  # type: ignore

        return [Image.fromarray(f) for f in iio.imread(path, index=None)]
    except ImportError:
        pass
    raise VideoFolderError(
        f"Cannot decode {path}: no video backend is installed (torchvision 0.29 no longer reads "
        f"video). Install one with `pip install av` (or `pip install torchcodec`, or "
        f"`pip install imageio[ffmpeg]`), or convert the clip to a GIF or a folder of PNG frames."
    )


def read_clip(
    path: str | os.PathLike, image_size: int, frame_stride: int = 1, extensions: Sequence[str] = FRAME_EXTENSIONS
) -> np.ndarray:
    """Decode one clip (frame folder or video file) to uint8 ``t h w 3`` at ``image_size``."""
    path = Path(path)
    if path.is_dir():
        files = [p for p in _visible(path) if p.is_file() and p.suffix.lower() in extensions]
        out = []
        for file in files[::frame_stride]:
            try:
                with Image.open(file) as im:
                    out.append(_square_resize(im, image_size))
            except (UnidentifiedImageError, OSError) as exc:
                raise VideoFolderError(f"Unreadable frame {file}: {exc}. Remove or replace the file.") from None
    else:
        try:
            if path.suffix.lower() in PIL_VIDEO_EXTENSIONS:
                with Image.open(path) as im:
                    frames = [_square_resize(f.copy(), image_size) for f in ImageSequence.Iterator(im)]
            else:
                frames = [_square_resize(f, image_size) for f in _decode_video(path)]
        except VideoFolderError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, RuntimeError) as exc:
            raise VideoFolderError(f"Unreadable video {path}: {exc}. Remove or replace the file.") from None
        out = frames[::frame_stride]
    if not out:
        raise VideoFolderError(f"Clip {path} has no frames.")
    return np.stack(out)


def discover_clips(root: Path, extensions: Sequence[str]) -> tuple[list[Path], list[str] | None, list[int] | None]:
    """``(clip paths, action names or None, action index per clip or None)`` (module docstring)."""
    frame_ext = tuple(e for e in extensions if e in FRAME_EXTENSIONS)
    video_ext = tuple(e for e in extensions if e in VIDEO_EXTENSIONS)

    def is_video(p: Path) -> bool:
        return p.is_file() and p.suffix.lower() in video_ext

    def is_frame_dir(p: Path) -> bool:
        return p.is_dir() and any(c.is_file() and c.suffix.lower() in frame_ext for c in _visible(p))

    top = _visible(root)
    dirs = [p for p in top if p.is_dir()]
    labelled = bool(dirs) and not any(is_video(p) for p in top) and not any(is_frame_dir(d) for d in dirs)
    if not labelled:
        return [p for p in top if is_video(p) or is_frame_dir(p)], None, None
    clips, actions, labels = [], [], []
    for d in dirs:
        members = [p for p in _visible(d) if is_video(p) or is_frame_dir(p)]
        if members:
            labels += [len(actions)] * len(members)
            actions.append(d.name)
            clips += members
    return clips, actions, labels


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Seeded clip split (module docstring); sorted indices per split."""
    perm = np.random.default_rng(seed).permutation(n)

    def count(f: float) -> int:
        return max(1, int(round(f * n))) if f > 0 else 0

    n_test, n_val = count(test_fraction), count(val_fraction)
    if n - n_test - n_val < 1:
        raise VideoFolderError(
            f"Only {n} clip(s): val_fraction={val_fraction} and test_fraction={test_fraction} leave no "
            f"training clip. Add clips or lower the fractions."
        )
    return {
        "test": np.sort(perm[:n_test]),
        "val": np.sort(perm[n_test : n_test + n_val]),
        "train": np.sort(perm[n_test + n_val :]),
    }


class VideoFolderDataset(MemmapPickle, ClipDataset):
    """One split of a ``VideoFolder``; ``clip_names[i]`` is clip ``i``'s path under root."""

    def __init__(self, frames: np.ndarray, offsets: np.ndarray, clips: np.ndarray, names: list[str],
                 actions: tuple[str, ...], action_of: np.ndarray | None, image_size: int):
        self._frames, self._offsets, self._clips = frames, offsets, clips
        self.clip_names = [names[c] for c in clips]
        self.actions = actions
        self.clip_action = None if action_of is None else action_of[clips]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self._clips)

    def clip_length(self, index: int) -> int:
        c = self._clips[index]
        return int(self._offsets[c + 1] - self._offsets[c])

    def clip_name(self, index: int) -> str:
        return f"clip {self.clip_names[index]}"

    def get(self, index: int, frames: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        sel = self.frame_selection(index, frames)
        start = int(self._offsets[self._clips[index]])
        item = {"frames": to_float_frames(self._frames[start + sel]), "index": torch.tensor(index)}
        if self.clip_action is not None:
            action = int(self.clip_action[index])
            item["action"] = torch.tensor(action)
            item["label"] = torch.tensor(action)
        return item


class VideoFolder(ClipSource):
    """Clips from a folder of your own videos or frame folders (module docstring).

    Args:
        root: the folder (see the layouts above).
        image_size: output side; frames are centre-cropped square and resized.
        num_frames: keep the first ``num_frames`` frames of every clip; shorter clips are an
            error naming the clip. ``None`` keeps every frame (clips of varying length).
        val_fraction / test_fraction: fractions of clips held out (seeded by ``seed``).
        seed: split seed.
        extensions: file extensions to read (frames and videos); default all known ones.
        frame_stride: keep every ``frame_stride``-th frame (paper 004 halves MUG's rate: 2).
    """

    def __init__(
        self,
        root: str,
        image_size: int = 64,
        num_frames: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        extensions: list[str] | None = None,
        frame_stride: int = 1,
    ):
        self.root = Path(root).expanduser()
        self.image_size = check_image_size(image_size)
        self.num_frames = check_int(num_frames, "num_frames", optional=True, message="{name} must be a positive integer or None, got {value!r}.")
        for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= f < 1:
                raise ValueError(f"{name} must be in [0, 1), got {f!r}.")
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}.")
        self.val_fraction, self.test_fraction, self.seed = float(val_fraction), float(test_fraction), int(seed)
        known = FRAME_EXTENSIONS + VIDEO_EXTENSIONS
        exts = known if extensions is None else tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        unknown = [e for e in exts if e not in known]
        if unknown or not exts:
            raise ValueError(f"Unsupported extensions {unknown or exts}; choose from {', '.join(known)}.")
        self.extensions = exts
        self.frame_stride = check_int(frame_stride, "frame_stride", message="{name} must be a positive integer, got {value!r}.")

    def _scan(self) -> tuple[Path, list[Path], list[str] | None, list[int] | None]:
        root = self.root.resolve()
        if not root.is_dir():
            raise VideoFolderError(f"Video folder {root} does not exist (VideoFolder root). Point root at your clips.")
        clips, actions, labels = discover_clips(root, self.extensions)
        if not clips:
            raise VideoFolderError(
                f"No clips found in {root}: expected <clip>/ folders of {'/'.join(FRAME_EXTENSIONS)} frames or "
                f"video files ({'/'.join(VIDEO_EXTENSIONS)}), optionally inside <action>/ folders."
            )
        return root, clips, actions, labels

    def _cache_params(self, root: Path, clips: list[Path]) -> dict:
        files = []
        for clip in clips:
            members = [p for p in _visible(clip) if p.is_file()] if clip.is_dir() else [clip]
            for p in members:
                st = p.stat()
                files.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
        return {
            "version": CACHE_VERSION, "root": str(root), "files": files, "image_size": self.image_size,
            "num_frames": self.num_frames, "extensions": list(self.extensions), "frame_stride": self.frame_stride,
        }

    def _build(self, root: Path, clips: list[Path]) -> dict[str, np.ndarray]:
        frame_ext = tuple(e for e in self.extensions if e in FRAME_EXTENSIONS)
        decoded, lengths = [], []
        for clip in progress_bar(clips, desc=f"Decoding {root.name}", unit="clip"):
            x = read_clip(clip, self.image_size, self.frame_stride, frame_ext)
            if self.num_frames is not None:
                if len(x) < self.num_frames:
                    raise VideoFolderError(
                        f"Clip {clip} has {len(x)} frame(s) (after frame_stride={self.frame_stride}) but "
                        f"num_frames={self.num_frames}; remove the clip or lower num_frames."
                    )
                x = x[: self.num_frames]
            decoded.append(x)
            lengths.append(len(x))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return {"frames": np.concatenate(decoded), "offsets": offsets}

    def _arrays(self, root: Path, clips: list[Path], cache_dir) -> dict[str, np.ndarray]:
        return cached_arrays("video_folder", self._cache_params(root, clips), lambda: self._build(root, clips), cache_dir)

    def prepare(self, assets_root=None, cache_dir=None) -> None:
        """Decode and cache every clip (``assets_root`` is unused: the clips live under ``root``)."""
        root, clips, _, _ = self._scan()
        split_indices(len(clips), self.val_fraction, self.test_fraction, self.seed)
        self._arrays(root, clips, cache_dir)

    def dataset(self, split: str, assets_root=None, cache_dir=None) -> VideoFolderDataset:
        """One split (``assets_root`` is unused: the clips live under ``root``)."""
        check_split(split)
        root, clips, actions, labels = self._scan()
        idx = split_indices(len(clips), self.val_fraction, self.test_fraction, self.seed)[split]
        arrays = self._arrays(root, clips, cache_dir)
        names = [c.relative_to(root).as_posix() for c in clips]
        return VideoFolderDataset(
            arrays["frames"], arrays["offsets"], idx, names, tuple(actions or ()),
            None if labels is None else np.asarray(labels, dtype=np.int64), self.image_size,
        )
