"""Moving MNIST rendering and generation: digit layers resampled with their poses, composited onto the
backgrounds (``frame = background * prod_k (1 - d_k)``), whole clips from digits, backgrounds and a
seed, the val/test arrays that are cached, and the generation benchmark
(``python -m datamodules.mnist_generation``)."""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.base import check_split
from datamodules.backgrounds import split_backgrounds
from datamodules.mnist import DIGIT_SIZE, load_mnist
from datamodules.mnist_motion import BUILD_BATCH, CHUNK, IMAGE_SIZE, MNIST_TRAIN_SLICE, MNIST_VAL_SLICE, SPLIT_IDS, _homogeneous, _norm_to_pixel, _pixel_to_norm, _poses_from_forward, _translation, sample_motion


# ============================================================================ rendering
def _as_tensor(x) -> torch.Tensor:
    """Tensor view of an array (a copy when it is read-only, e.g. a memory map)."""
    if isinstance(x, torch.Tensor):
        return x
    x = np.asarray(x)
    return torch.from_numpy(np.ascontiguousarray(x) if x.flags.writeable else np.array(x))


def _affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``F.affine_grid(theta, (m, 1, size, size), align_corners=False)`` computed by
    broadcasting (several times faster on the CPU for small images)."""
    lin = (torch.arange(size, dtype=theta.dtype) * 2 + 1) / size - 1
    grid = torch.empty(theta.shape[0], size, size, 2, dtype=theta.dtype)
    for c in range(2):
        torch.add((theta[:, c, 0, None] * lin)[:, None, :], (theta[:, c, 1, None] * lin + theta[:, c, 2, None])[:, :, None], out=grid[..., c])
    return grid


def render_layers(digits, offsets, poses, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """Digit layers ``d_t`` in [0, 1] from digits, frame-0 offsets and poses.

    ``digits`` ``(b, n, 28, 28)`` (uint8 0..255 or float in [0, 1]); ``offsets`` ``(b, n, 2)``
    (x, y of each digit box's top-left at frame 0); ``poses`` ``(b, t, n, 2, 3)`` (see the
    module docstring). Returns float32 ``(b, t, n, size, size)``: each digit placed at its
    offset on a blank canvas, then resampled with ``affine_grid(P_t)`` (bilinear, zero padding,
    ``align_corners=False``), computed directly from the 28x28 image (same result, cheaper).
    """
    digits = _as_tensor(digits)
    digits = digits.float().div(255.0) if digits.dtype == torch.uint8 else digits.float()
    poses64 = _homogeneous(np.asarray(poses.detach().cpu() if isinstance(poses, torch.Tensor) else poses, dtype=np.float64))
    offsets = np.asarray(offsets.cpu() if isinstance(offsets, torch.Tensor) else offsets, dtype=np.float64)
    b, t, n = poses64.shape[:3]
    if digits.shape[:2] != (b, n) or offsets.shape != (b, n, 2):
        raise ValueError(
            f"render_layers: digits {tuple(digits.shape)}, offsets {offsets.shape} and poses {poses64.shape[:3] + (2, 3)} "
            f"must agree as (b, n, 28, 28), (b, n, 2), (b, t, n, 2, 3)."
        )
    # frame-t norm -> frame-0 norm -> frame-0 px -> digit px -> digit norm
    to_digit = _pixel_to_norm(DIGIT_SIZE) @ _translation(-offsets) @ _norm_to_pixel(image_size)
    theta = (to_digit[:, None] @ poses64)[..., :2, :]
    theta = torch.from_numpy(theta.reshape(b * t * n, 2, 3).astype(np.float32))
    src = digits[:, None].expand(b, t, n, DIGIT_SIZE, DIGIT_SIZE).reshape(b * t * n, 1, DIGIT_SIZE, DIGIT_SIZE)
    layers = F.grid_sample(src, _affine_grid(theta, image_size), mode="bilinear", padding_mode="zeros", align_corners=False)
    return layers.view(b, t, n, image_size, image_size)


def composite(layers: torch.Tensor, backgrounds, out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Blacken digits onto backgrounds: ``frame = background * prod_k (1 - d_k)`` (rounded).

    ``layers`` float ``(b, t, n, h, w)``; ``backgrounds`` uint8 ``(b, h, w, 3)``. Returns uint8
    frames ``(b, t, h, w, 3)`` and uint8 masks ``(b, t, h, w)`` (union of ``d_k > 0.5``),
    written into ``out`` when given. Works in chunks of ``CHUNK`` clips so the float
    intermediates stay in the CPU cache.
    """
    bg = _as_tensor(backgrounds)
    b, t, n, h, w = layers.shape
    if out is None:
        out = (torch.empty(b, t, h, w, 3, dtype=torch.uint8), torch.empty(b, t, h, w, dtype=torch.uint8))
    frames, masks = out
    for s in range(0, b, CHUNK):
        d = layers[s : s + CHUNK]
        c = d.shape[0]
        keep = 1.0 - d[:, :, 0] if n == 1 else (1.0 - d).prod(dim=2)
        x = torch.mul(bg[s : s + CHUNK].float()[:, None].expand(c, t, h, w, 3), keep[..., None].expand(c, t, h, w, 3))
        frames[s : s + CHUNK] = x.add_(0.5)  # round half up (values are >= 0), cast to uint8
        masks[s : s + CHUNK] = (d > 0.5).any(dim=2)
    return frames, masks


def render_uint8(digits, offsets, poses, backgrounds, image_size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """``composite(render_layers(...), backgrounds)`` computed in cache-sized chunks:
    uint8 frames ``(b, t, h, w, 3)`` and masks ``(b, t, h, w)``."""
    b, t = np.shape(poses)[:2]
    frames = torch.empty(b, t, image_size, image_size, 3, dtype=torch.uint8)
    masks = torch.empty(b, t, image_size, image_size, dtype=torch.uint8)
    for s in range(0, b, CHUNK):
        sl = slice(s, s + CHUNK)
        layers = render_layers(digits[sl], offsets[sl], poses[sl], image_size)
        composite(layers, backgrounds[sl], out=(frames[sl], masks[sl]))
    return frames, masks


def render(digits, offsets, poses, backgrounds, image_size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth frames for given digits, offsets, poses and backgrounds (batched).

    Shapes as in ``render_layers``; ``backgrounds`` uint8 ``(b, h, w, 3)``. Returns float32
    ``frames`` ``(b, t, 3, h, w)`` and ``masks`` ``(b, t, 1, h, w)`` in [0, 1], quantised to
    uint8 levels exactly like the dataset frames (so rendering a dataset clip's own digits,
    offsets and poses reproduces its frames bit for bit).
    """
    with torch.inference_mode():
        frames, masks = render_uint8(digits, offsets, poses, backgrounds, image_size)
    return frames.permute(0, 1, 4, 2, 3).float().div_(255.0), masks[:, :, None].float()


def generate_clips(
    digits: np.ndarray, backgrounds: np.ndarray, rng: np.random.Generator, num_frames: int, image_size: int = IMAGE_SIZE
) -> dict[str, np.ndarray]:
    """Generate a batch of Moving MNIST clips (paper 000 §4.3), the one path every split uses.

    ``digits`` uint8 ``(b, n, 28, 28)``, ``backgrounds`` uint8 ``(b, h, w, 3)``. Returns numpy:

    ==================  ============================  ======================================
    frames              uint8 (b, t, h, w, 3)         composited frames
    masks               uint8 (b, t, h, w) {0, 1}     union of digit masks ``d > 0.5``
    poses               float32 (b, t, n, 2, 3)       frame-t -> frame-0 ``affine_grid`` theta
    offsets             int16 (b, n, 2)               digit box top-left (x, y) at frame 0
    step_kind           int8 (b, t-1, n)              0 = rotation, 1 = translation
    step_angle          float32 (b, t-1, n)           degrees, counter-clockwise (0 if transl.)
    step_translation    float32 (b, t-1, n, 2)        px, (x right, y down) (0 if rotation)
    angle               float32 (b, t, n)             cumulative rotation (degrees)
    centre              float32 (b, t, n, 2)          digit box centre (px, x, y)
    ==================  ============================  ======================================
    """
    digits = np.asarray(digits)
    if digits.ndim != 4 or digits.shape[2:] != (DIGIT_SIZE, DIGIT_SIZE):
        raise ValueError(f"generate_clips: digits must be (b, n, 28, 28), got {digits.shape}.")
    if num_frames < 2:
        raise ValueError(f"generate_clips: num_frames must be >= 2, got {num_frames}.")
    motion = sample_motion(digits, rng, num_frames, image_size)
    # Render from the float32 poses that are stored, so render() reproduces frames exactly.
    poses = _poses_from_forward(motion["forward"], image_size).astype(np.float32)
    with torch.inference_mode():
        frames, masks = render_uint8(digits, motion["offsets"], poses, backgrounds, image_size)
    forward = motion["forward"]
    centre = forward[..., :2, :2] @ np.full(2, (DIGIT_SIZE - 1) / 2.0) + forward[..., :2, 2]
    angle = np.concatenate([np.zeros_like(motion["step_angle"][:, :1]), np.cumsum(motion["step_angle"], axis=1)], axis=1)
    return {
        "frames": frames.numpy(),
        "masks": masks.numpy(),
        "poses": poses,
        "offsets": motion["offsets"].astype(np.int16),
        "step_kind": motion["step_kind"],
        "step_angle": motion["step_angle"],
        "step_translation": motion["step_translation"],
        "angle": angle.astype(np.float32),
        "centre": centre.astype(np.float32),
    }


# ============================================================================ digits / backgrounds
def digit_pool(split: str, assets_root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images (m, 28, 28) uint8, labels (m,) int64, mnist_indices (m,))`` of a split's digits:
    train = MNIST train[0:50000], val = MNIST train[50000:60000], test = MNIST test."""
    check_split(split)
    if split == "test":
        images, labels = load_mnist("test", assets_root)
        return images, labels.astype(np.int64), np.arange(len(images))
    images, labels = load_mnist("train", assets_root)
    sl = MNIST_TRAIN_SLICE if split == "train" else MNIST_VAL_SLICE
    return images[sl], labels[sl].astype(np.int64), np.arange(len(images))[sl]


def find_digit(label: int, split: str = "test", occurrence: int = 0, assets_root: str | os.PathLike | None = None) -> int:
    """Index (into ``digit_pool(split)``) of the ``occurrence``-th digit with class ``label``
    (e.g. the paper's §4.6 analysis shows digits 5 and 8)."""
    _, labels, _ = digit_pool(split, assets_root)
    hits = np.flatnonzero(labels == label)
    if occurrence >= len(hits) or not 0 <= label <= 9:
        raise ValueError(f"find_digit: no occurrence {occurrence} of digit {label} in the {split} split.")
    return int(hits[occurrence])


def _distinct_digits(rng: np.random.Generator, pool: int, count: int, n: int) -> np.ndarray:
    """``(count, n)`` digit indices, distinct within each row."""
    idx = rng.integers(0, pool, size=(count, n))
    if n > 1:
        for _ in range(1000):
            srt = np.sort(idx, axis=1)
            dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
            if not dup.any():
                break
            idx[dup] = rng.integers(0, pool, size=(int(dup.sum()), n))
    return idx


def build_split_arrays(
    split: str,
    num_digits: int,
    num_frames: int,
    num_backgrounds: int,
    clips: int,
    seed: int,
    image_size: int = IMAGE_SIZE,
    assets_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Build the fixed clip set of one split (val/test caches) with the batched generator."""
    images, labels, _ = digit_pool(split, assets_root)
    backgrounds, _ = split_backgrounds(split, num_backgrounds, image_size, seed)
    rng = np.random.default_rng([seed, SPLIT_IDS[split], 0xCAC4E])
    digit_idx = _distinct_digits(rng, len(images), clips, num_digits)
    bg_idx = rng.integers(0, num_backgrounds, size=clips)
    arrays: dict[str, np.ndarray] = {}
    bar = None
    if progress and clips >= 2000:
        from tqdm.auto import tqdm

        bar = tqdm(total=clips, desc=f"Moving MNIST {split} clips", unit="clip")
    for start in range(0, clips, BUILD_BATCH):
        sl = slice(start, min(clips, start + BUILD_BATCH))
        part = generate_clips(images[digit_idx[sl]], backgrounds[bg_idx[sl]], rng, num_frames, image_size)
        for key, value in part.items():  # preallocate on the first batch: no concatenation copy
            if key not in arrays:
                arrays[key] = np.empty((clips,) + value.shape[1:], dtype=value.dtype)
            arrays[key][sl] = value
        if bar is not None:
            bar.update(sl.stop - sl.start)
    if bar is not None:
        bar.close()
    arrays.update(
        digits=images[digit_idx],
        digit_indices=digit_idx.astype(np.int64),
        digit_labels=labels[digit_idx],
        background_indices=bg_idx.astype(np.int64),
        backgrounds=backgrounds,
    )
    return arrays


# ============================================================================ benchmark
def benchmark_generation(seconds: float = 5.0, num_digits: int = 1, num_frames: int = 5, batch_size: int = BUILD_BATCH,
                         threads: int | None = 1, assets_root: str | os.PathLike | None = None) -> float:
    """Clips per second of ``generate_clips`` (batched path, train digits/backgrounds) on
    ``threads`` torch threads (1 = one core; ``None`` leaves the setting alone). Runs one
    warm-up batch, then batches until ``seconds`` have passed."""
    images, _, _ = digit_pool("train", assets_root)
    backgrounds, _ = split_backgrounds("train", 64, IMAGE_SIZE, 0)
    rng = np.random.default_rng(0)
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        def batch():
            d = images[_distinct_digits(rng, len(images), batch_size, num_digits)]
            generate_clips(d, backgrounds[rng.integers(0, len(backgrounds), batch_size)], rng, num_frames)

        batch()
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            batch()
            done += batch_size
        return done / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datamodules.mnist_generation", description="Moving MNIST generation benchmark.")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--num-digits", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=BUILD_BATCH)
    parser.add_argument("--assets-root", default=None)
    args = parser.parse_args(argv)
    print(f"{'digits':>6} {'frames':>6} {'batch':>6} {'clips/s (1 thread)':>20}")
    for n in args.num_digits:
        rate = benchmark_generation(args.seconds, n, 5, args.batch_size, 1, args.assets_root)
        print(f"{n:>6} {5:>6} {args.batch_size:>6} {rate:>20.0f}")


if __name__ == "__main__":
    main()
