"""Moving MNIST on diamond backgrounds (paper 000 §4.2–4.3), with exact ground-truth poses.

Protocol (paper 000 §4.3, every detail the paper leaves open is stated here):

* **Backgrounds** (§4.2): ``B = num_backgrounds`` per split from
  ``datamodules.backgrounds.split_backgrounds(split, B, seed=seed)`` (disjoint per split).
* **Digits**: train clips use MNIST training digits 0..49,999; validation clips use the
  held-out MNIST training digits 50,000..59,999 (``MNIST_VAL_SLICE``: the conventional fixed
  last-10k slice, so no digit instance is shared between train and val); test clips use the
  MNIST *test* set. The ``N = num_digits`` digits of a clip are distinct instances.
* **Placement**: each 28x28 digit is placed at a uniformly random integer offset with its box
  fully inside the 64x64 frame (and, as for every later frame, every nonzero digit pixel at
  least ``BORDER_MARGIN`` = 0.5 px inside the frame's pixel centres, so bilinear rendering
  loses no ink at the border: a digit's total intensity varies < 1% across frames).
* **Motion**: for each digit and each of the ``M - 1`` steps, rotation or translation is chosen
  with probability 1/2; a rotation turns the digit by an angle in ``ROTATIONS_DEG`` =
  {-15,-12,…,15}\\{0} degrees (positive = counter-clockwise as displayed) about its *current
  centre* (the centre of its transformed 28x28 box); a translation moves it by independent
  amounts in ``TRANSLATIONS_PX`` = {-10,-8,…,10}\\{0} px in x (right) and y (down, image
  rows). If any nonzero digit pixel would leave the frame, the step (kind and values) is
  redrawn; steps are applied cumulatively. (Translations are redrawn more often than
  rotations near the border, so slightly more than half of the accepted steps, ~55%, are
  rotations.)
* **Rendering**: digit layer ``d_t`` in [0, 1] = the original 28x28 digit resampled (bilinear,
  ``grid_sample``) with the cumulative pose, so frame 0 is the exact digit and every pose is
  exact. The paper "locates the (black) MNIST pixels and blackens those locations": we blacken
  *proportionally to ink*, ``frame = background * prod_k (1 - d_k)``, which keeps anti-aliased
  stroke edges (black backgrounds never occur, so the digit is always distinguishable).
  Frames are stored as uint8 (rounded).
* **Masks**: the character mask of a frame is the union over digits of ``d_k > 0.5``.
* **Poses** (``base.py`` contract): ``poses[t, k]`` is the ``affine_grid`` theta
  (normalised coordinates, ``align_corners=False``) mapping frame-``t`` coordinates to the
  digit's frame-0 coordinates, so ``grid_sample(d_0, affine_grid(P_t)) = d_t`` and
  ``T_X = relative_affine(P_t, P_s)`` warps ``d_t`` into ``d_s``. Note that ``T_X`` (like any
  ``affine_grid`` theta) is the *inverse* of the forward motion; its linear part is the
  rotation matrix ``[[cos a, -sin a], [sin a, cos a]]`` of the counter-clockwise angle ``a``,
  so the paper's "arctan of the first column" (§4.6) gives ``a`` directly.
* **Per-step ground truth** (user-friendly): ``step_kind`` (0 = rotation, 1 = translation),
  ``step_angle`` (degrees), ``step_translation`` (px, ``(x right, y down)``), and per frame the
  cumulative ``angle`` and the digit ``centre`` (px), so the motion between frames ``i, j`` is a
  rotation by ``angle[j] - angle[i]`` and a centre displacement ``centre[j] - centre[i]``.

Splits: train is *procedural* (``get(key)`` generates the clip from ``(seed, key)``, fresh
clips every epoch); val and test are fixed seeded sets cached as uint8 arrays
(``datamodules.cache.cached_arrays``) and memory-mapped.

Evaluation helpers (for the equivariant model, paper 000 §4.3 "Quantitative Results" and
§4.6): ``render``/``render_layers``/``composite`` (ground-truth rendering from digits and
poses), ``transfer_poses`` (apply one clip's motion to another clip's digit),
``MovingMNIST.fig3_examples`` and ``MovingMNIST.tz_analysis_pairs``.

Modules: ``datamodules.mnist_motion`` (geometry, motion), ``datamodules.mnist_generation`` (rendering,
generation, the benchmark), ``datamodules.mnist_evaluation`` (the evaluation sets); this one holds
the datasets and the ``MovingMNIST`` source, and keeps their public names importable from here.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import torch

from datamodules import mnist_evaluation
from datamodules.base import ClipDataset, ClipSource, MemmapPickle, check_split
from datamodules.backgrounds import RECIPE_VERSION as BACKGROUND_RECIPE_VERSION
from datamodules.backgrounds import split_backgrounds
from datamodules.cache import cached_arrays
from datamodules.mnist import load_mnist
from datamodules.mnist_generation import build_split_arrays, digit_pool, generate_clips, render_uint8
from datamodules.mnist_generation import benchmark_generation, composite, find_digit, render, render_layers  # noqa: F401 (public here)
from datamodules.mnist_motion import BORDER_MARGIN, BUILD_BATCH, CACHE_VERSION, IMAGE_SIZE, MNIST_VAL_SLICE, SPLIT_IDS, _poses_from_forward, sample_motion
from datamodules.mnist_motion import ROTATION, ROTATIONS_DEG, TRANSLATION, TRANSLATIONS_PX, digit_centres, poses_inside, transfer_poses  # noqa: F401 (public here)
from utils.checks import check_int


# ============================================================================ datasets
class _MovingMNISTSplit(ClipDataset):
    has_masks = True
    has_backgrounds = True
    has_poses = True
    image_size = IMAGE_SIZE

    def __init__(self, split: str, num_frames: int, backgrounds: np.ndarray):
        self.split = split
        self.num_frames = num_frames
        self.backgrounds = backgrounds

    def clip_length(self, index: int) -> int:
        return self.num_frames

    def record(self, index: int) -> dict[str, np.ndarray]:
        """Everything about clip ``index`` as numpy (all frames): the ``generate_clips`` keys
        without the batch axis, plus ``digits`` (n, 28, 28) uint8, ``digit_labels``,
        ``digit_indices`` (into ``digit_pool(split)``), ``background_index`` and
        ``background`` (h, w, 3) uint8."""
        raise NotImplementedError

    def get(self, index: int, frames: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.get_batch([index], [frames]).items()}

    def get_batch(self, indices: Sequence[int], frames: Sequence[Sequence[int] | None]) -> dict[str, torch.Tensor]:
        """``get`` of many clips at once, stacked: clip ``indices[c]`` restricted to ``frames[c]``
        (the same number of frames for every clip). Bit-identical to stacking ``get`` calls,
        several times cheaper (the pair loader uses it through ``FramePairs.__getitems__``).
        Returns ``frames`` (b, f, 3, h, w), ``masks`` (b, f, 1, h, w), ``background``
        (b, 3, h, w), ``poses`` (b, f, n, 2, 3), ``digit_labels`` (b, n), ``index`` (b,)."""
        if len(indices) != len(frames):
            raise ValueError(f"Moving MNIST get_batch: {len(indices)} indices but {len(frames)} frame selections.")
        sel = [self.select_frames(f, self.num_frames, "Moving MNIST clips") for f in frames]
        if len({len(x) for x in sel}) > 1:
            raise ValueError("Moving MNIST get_batch: every clip needs the same number of frames.")
        sel = np.stack(sel) if sel else np.zeros((0, 0), dtype=np.int64)
        uint8_frames, masks, backgrounds, poses, labels = self._select(indices, sel)
        return {
            "frames": uint8_frames.permute(0, 1, 4, 2, 3).float().div_(255.0),
            "masks": masks.float()[:, :, None],
            "background": torch.from_numpy(np.ascontiguousarray(backgrounds)).permute(0, 3, 1, 2).float().div_(255.0),
            "poses": torch.from_numpy(np.ascontiguousarray(poses, dtype=np.float32)),
            "digit_labels": torch.from_numpy(np.asarray(labels, dtype=np.int64)),
            "index": torch.tensor([int(i) for i in indices], dtype=torch.int64),
        }

    def _select(self, indices: Sequence[int], sel: np.ndarray) -> tuple:
        """uint8 frames (b, f, h, w, 3) and masks (b, f, h, w) (torch), backgrounds (b, h, w, 3),
        poses (b, f, n, 2, 3) and digit labels (b, n) (numpy) of the selected frames."""
        raise NotImplementedError


class ProceduralMovingMNIST(_MovingMNISTSplit):
    """Train split: clip ``key`` is generated from ``default_rng([seed, 0, key])`` on demand,
    independent of worker/rank; the DataModule passes ``key = epoch * len + i`` so every epoch
    sees fresh clips. ``len`` is ``clips_per_epoch``; any ``key >= 0`` is valid."""

    procedural = True

    def __init__(self, digits: np.ndarray, labels: np.ndarray, backgrounds: np.ndarray, num_digits: int, num_frames: int, clips_per_epoch: int, seed: int):
        super().__init__("train", num_frames, backgrounds)
        self.digits, self.labels = digits, labels
        self.num_digits, self.clips_per_epoch, self.seed = num_digits, clips_per_epoch, seed

    def __len__(self) -> int:
        return self.clips_per_epoch

    def record(self, index: int) -> dict[str, np.ndarray]:
        key = int(index)
        if key < 0:
            raise IndexError(f"Moving MNIST train: clip key must be >= 0, got {key}.")
        rng = np.random.default_rng([self.seed, SPLIT_IDS["train"], key])
        digit_idx = rng.choice(len(self.digits), self.num_digits, replace=False)
        bg_idx = int(rng.integers(0, len(self.backgrounds)))
        clip = generate_clips(self.digits[digit_idx][None], self.backgrounds[bg_idx][None], rng, self.num_frames)
        rec = {k: v[0] for k, v in clip.items()}
        rec.update(digits=self.digits[digit_idx], digit_indices=digit_idx, digit_labels=self.labels[digit_idx],
                   background_index=np.int64(bg_idx), background=self.backgrounds[bg_idx])
        return rec

    def _select(self, indices: Sequence[int], sel: np.ndarray) -> tuple:
        """The clips of ``record`` (same per-key generators, same values), generated as one batch
        and rendered at the selected frames only."""
        rngs, digit_idx, bg_idx = [], [], []
        for index in indices:
            key = int(index)
            if key < 0:
                raise IndexError(f"Moving MNIST train: clip key must be >= 0, got {key}.")
            rng = np.random.default_rng([self.seed, SPLIT_IDS["train"], key])
            digit_idx.append(rng.choice(len(self.digits), self.num_digits, replace=False))
            bg_idx.append(int(rng.integers(0, len(self.backgrounds))))
            rngs.append(rng)
        digit_idx = np.array(digit_idx, dtype=np.int64).reshape(len(indices), self.num_digits)
        bg_idx = np.array(bg_idx, dtype=np.int64)
        digits, backgrounds = self.digits[digit_idx], self.backgrounds[bg_idx]
        motion = sample_motion(digits, rngs, self.num_frames, self.image_size)
        poses = _poses_from_forward(motion["forward"], self.image_size).astype(np.float32)
        poses = poses[np.arange(len(indices))[:, None], sel]
        with torch.inference_mode():
            frames, masks = render_uint8(digits, motion["offsets"], poses, backgrounds, self.image_size)
        return frames, masks, backgrounds, poses, self.labels[digit_idx]


class CachedMovingMNIST(MemmapPickle, _MovingMNISTSplit):
    """Val/test split: a fixed seeded clip set, memory-mapped from the cache (pickled by file name: ``MemmapPickle``)."""

    def __init__(self, split: str, arrays: Mapping[str, np.ndarray]):
        super().__init__(split, arrays["frames"].shape[1], arrays["backgrounds"])
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays["frames"])

    def record(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"Moving MNIST {self.split}: clip {index} out of range ({len(self)} clips).")
        rec = {k: v[index] for k, v in self.arrays.items() if k != "backgrounds"}
        rec["background_index"] = rec.pop("background_indices")
        rec["background"] = self.backgrounds[int(rec["background_index"])]
        return rec

    def _select(self, indices: Sequence[int], sel: np.ndarray) -> tuple:
        n = len(self)
        for index in indices:
            if not -n <= int(index) < n:
                raise IndexError(f"Moving MNIST {self.split}: clip {index} out of range ({n} clips).")
        idx = np.array([int(i) % n for i in indices], dtype=np.int64)
        rows = idx[:, None]
        a = self.arrays
        frames = torch.from_numpy(np.ascontiguousarray(a["frames"][rows, sel]))
        masks = torch.from_numpy(np.ascontiguousarray(a["masks"][rows, sel]))
        return frames, masks, self.backgrounds[a["background_indices"][idx]], a["poses"][rows, sel], a["digit_labels"][idx]


# ============================================================================ the source
class MovingMNIST(ClipSource):
    """Moving MNIST on diamond backgrounds (paper 000 §4.2–4.3); see the module docstring.

    Args:
        num_digits: digits per clip (N; the paper shows N = 1 and 2).
        num_frames: frames per clip (M = 5 in the paper).
        num_backgrounds: backgrounds per split (B = 64 in the paper: "the model overfit with
            B < 64").
        train_clips_per_epoch: length of the procedural train split (fresh clips every epoch).
        val_clips: size of the fixed, cached validation set.
        test_clips: size of the fixed, cached test set (10,000 as in Fig. 3).
        seed: seeds backgrounds, the val/test sets and the procedural train clips.
        image_size: frame size; only 64 (the paper's) is supported.
    """

    def __init__(
        self,
        num_digits: int = 1,
        num_frames: int = 5,
        num_backgrounds: int = 64,
        train_clips_per_epoch: int = 10000,
        val_clips: int = 1000,
        test_clips: int = 10000,
        seed: int = 0,
        image_size: int = 64,
    ):
        for name, value, low in (
            ("num_digits", num_digits, 1), ("num_frames", num_frames, 2), ("num_backgrounds", num_backgrounds, 1),
            ("train_clips_per_epoch", train_clips_per_epoch, 1), ("val_clips", val_clips, 1), ("test_clips", test_clips, 1),
        ):
            check_int(value, name, low, message="MovingMNIST: {name} must be an integer >= {low}, got {value!r}.")
        if num_digits > 4:
            raise ValueError(f"MovingMNIST: num_digits={num_digits} is too many for a 64x64 frame; use 1..4 (the paper uses 1 or 2).")
        if image_size != IMAGE_SIZE:
            raise ValueError(
                f"MovingMNIST: image_size={image_size!r} is not supported; the paper's protocol (28x28 digits, "
                f"±10 px steps) is defined for 64x64 frames: set image_size: 64."
            )
        self.num_digits = int(num_digits)
        self.num_frames = int(num_frames)
        self.num_backgrounds = int(num_backgrounds)
        self.train_clips_per_epoch = int(train_clips_per_epoch)
        self.val_clips = int(val_clips)
        self.test_clips = int(test_clips)
        self.seed = int(seed)
        self.image_size = int(image_size)

    # ------------------------------------------------------------------ caches
    def cache_params(self, split: str) -> dict:
        """Everything the cached ``split`` depends on (the cache key)."""
        return {
            "version": CACHE_VERSION, "backgrounds": BACKGROUND_RECIPE_VERSION, "split": split, "num_digits": self.num_digits, "num_frames": self.num_frames,
            "num_backgrounds": self.num_backgrounds, "clips": self.val_clips if split == "val" else self.test_clips,
            "seed": self.seed, "image_size": self.image_size, "build_batch": BUILD_BATCH,
            "val_slice": [MNIST_VAL_SLICE.start, MNIST_VAL_SLICE.stop], "margin": BORDER_MARGIN,
        }

    def _cached(self, split: str, assets_root, cache_dir) -> dict[str, np.ndarray]:
        params = self.cache_params(split)
        return cached_arrays(
            "moving_mnist",
            params,
            lambda: build_split_arrays(split, self.num_digits, self.num_frames, self.num_backgrounds, params["clips"],
                                       self.seed, self.image_size, assets_root),
            cache_dir,
        )

    def prepare(self, assets_root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> None:
        """Verify the MNIST files and build the val/test caches (no-op when cached)."""
        load_mnist("train", assets_root)
        load_mnist("test", assets_root)
        for split in ("val", "test"):
            self._cached(split, assets_root, cache_dir)

    def dataset(self, split: str, assets_root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> ClipDataset:
        check_split(split)
        if split == "train":
            images, labels, _ = digit_pool("train", assets_root)
            backgrounds, _ = split_backgrounds("train", self.num_backgrounds, self.image_size, self.seed)
            return ProceduralMovingMNIST(images, labels, backgrounds, self.num_digits, self.num_frames, self.train_clips_per_epoch, self.seed)
        return CachedMovingMNIST(split, self._cached(split, assets_root, cache_dir))

    # ------------------------------------------------------------------ evaluation (datamodules.mnist_evaluation)
    def fig3_examples(self, count: int, seed: int = 0, start: int = 0, anchor: str = "frame",
                      assets_root: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
        """Examples for the Fig. 3 protocol, TEST split (``datamodules.mnist_evaluation.fig3_examples``)."""
        return mnist_evaluation.fig3_examples(self, count, seed, start, anchor, assets_root)

    def tz_analysis_pairs(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Pairs of one digit on one background for §4.6 (``datamodules.mnist_evaluation.tz_analysis_pairs``)."""
        return mnist_evaluation.tz_analysis_pairs(self, *args, **kwargs)
