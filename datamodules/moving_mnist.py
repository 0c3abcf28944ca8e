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
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.base import ClipDataset, ClipSource, check_split, relative_affine
from datamodules.backgrounds import RECIPE_VERSION as BACKGROUND_RECIPE_VERSION
from datamodules.backgrounds import split_backgrounds
from datamodules.cache import cached_arrays
from datamodules.mnist import DIGIT_SIZE, load_mnist

IMAGE_SIZE = 64
ROTATIONS_DEG = np.array([-15, -12, -9, -6, -3, 3, 6, 9, 12, 15], dtype=np.float64)
TRANSLATIONS_PX = np.array([-10, -8, -6, -4, -2, 2, 4, 6, 8, 10], dtype=np.float64)
ROTATION, TRANSLATION = 0, 1  # values of ``step_kind``
#: Every nonzero digit pixel centre stays within [margin, size - 1 - margin] px.
BORDER_MARGIN = 0.5
#: MNIST training digits used for the validation split (held out of training clips).
MNIST_VAL_SLICE = slice(50_000, 60_000)
MNIST_TRAIN_SLICE = slice(0, 50_000)
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
#: Cache format version and the batch size of the (deterministic) cache builder.
CACHE_VERSION = 1
BUILD_BATCH = 256
#: Clips per rendering chunk (keeps float intermediates in the CPU cache).
CHUNK = 16
MAX_REDRAW_ROUNDS = 10_000


# ============================================================================ geometry
def _pixel_to_norm(size: int) -> np.ndarray:
    """3x3 map from pixel coords (x, y; pixel centres at integers) to ``align_corners=False``
    normalised coords ``u = (2x + 1) / size - 1``."""
    return np.array([[2.0 / size, 0.0, 1.0 / size - 1.0], [0.0, 2.0 / size, 1.0 / size - 1.0], [0.0, 0.0, 1.0]])


@functools.lru_cache(maxsize=None)
def _norm_to_pixel(size: int) -> np.ndarray:
    """``inv(_pixel_to_norm(size))``, computed once (read-only)."""
    out = np.linalg.inv(_pixel_to_norm(size))
    out.flags.writeable = False
    return out


def _homogeneous(theta: np.ndarray) -> np.ndarray:
    """(..., 2, 3) -> (..., 3, 3)."""
    out = np.zeros(theta.shape[:-2] + (3, 3), dtype=np.float64)
    out[..., :2, :] = theta
    out[..., 2, 2] = 1.0
    return out


def _translation(xy: np.ndarray) -> np.ndarray:
    """(..., 2) -> (..., 3, 3) translation matrices."""
    out = np.zeros(xy.shape[:-1] + (3, 3), dtype=np.float64)
    out[..., 0, 0] = out[..., 1, 1] = out[..., 2, 2] = 1.0
    out[..., :2, 2] = xy
    return out


def _step_matrices(kind: np.ndarray, angle_deg: np.ndarray, shift: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Forward step maps in pixel coords (y down): rotation by ``angle_deg`` counter-clockwise
    on screen about ``centre`` where ``kind == ROTATION``, else translation by ``shift``."""
    a = np.deg2rad(np.where(kind == ROTATION, angle_deg, 0.0))
    c, s = np.cos(a), np.sin(a)
    out = np.zeros(kind.shape + (3, 3), dtype=np.float64)
    out[..., 0, 0], out[..., 0, 1], out[..., 1, 0], out[..., 1, 1] = c, s, -s, c
    out[..., 2, 2] = 1.0
    lin = out[..., :2, :2]
    # rotation about the centre: x -> R (x - c) + c ; translation: x -> x + shift
    rot_offset = centre - np.einsum("...ij,...j->...i", lin, centre)
    out[..., :2, 2] = np.where((kind == ROTATION)[..., None], rot_offset, shift)
    return out


def _extreme_points(digits: np.ndarray) -> np.ndarray:
    """Per digit, the leftmost and rightmost nonzero pixel of every row (x, y), ``(d, 56, 2)``.

    These contain every vertex of the convex hull of the digit's nonzero pixels, so an affine
    map keeps all nonzero pixels inside a box iff it keeps these points inside. Empty rows
    repeat a valid point (an empty digit uses its box centre).
    """
    nz = digits > 0
    d, h, w = nz.shape
    row_has = nz.any(axis=2)
    left = nz.argmax(axis=2)
    right = w - 1 - nz[:, :, ::-1].argmax(axis=2)
    rows = np.broadcast_to(np.arange(h), (d, h))
    first = row_has.argmax(axis=1)
    fallback = np.stack([left[np.arange(d), first], first], axis=-1).astype(np.float64)
    fallback[~row_has.any(axis=1)] = (w - 1) / 2.0
    pts = np.stack([np.concatenate([left, right], 1), np.concatenate([rows, rows], 1)], axis=-1).astype(np.float64)
    valid = np.concatenate([row_has, row_has], 1)
    return np.where(valid[..., None], pts, fallback[:, None, :])


def _inside(forward: np.ndarray, pts: np.ndarray, size: int, margin: float = BORDER_MARGIN) -> np.ndarray:
    """Whether every point (digit px) mapped by ``forward`` (digit px -> frame px, (..., 3, 3))
    lies within ``[margin, size - 1 - margin]`` px; ``pts`` is ``(..., k, 2)``."""
    mapped = np.einsum("...ij,...kj->...ki", forward[..., :2, :2], pts) + forward[..., None, :2, 2]
    return ((mapped >= margin) & (mapped <= size - 1 - margin)).all(axis=(-1, -2))


def _poses_from_forward(forward: np.ndarray, size: int) -> np.ndarray:
    """Pose thetas ``P_t = N G_0 G_t^{-1} N^{-1}`` from forward maps ``G`` ``(b, t, n, 3, 3)``
    (digit px -> frame-t px); returns float64 ``(b, t, n, 2, 3)``."""
    norm = _pixel_to_norm(size)
    q = forward[:, :1] @ np.linalg.inv(forward)  # frame-t px -> frame-0 px
    return (norm @ q @ _norm_to_pixel(size))[..., :2, :]


def _pixel_poses(poses: np.ndarray, size: int) -> np.ndarray:
    """Normalised pose thetas (..., 2, 3) -> pixel-space 3x3 maps ``Q = N^{-1} P N``
    (frame-t px -> frame-0 px)."""
    return _norm_to_pixel(size) @ _homogeneous(np.asarray(poses, dtype=np.float64)) @ _pixel_to_norm(size)


def digit_centres(poses: np.ndarray, offsets: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Digit box centres (px, (x, y)) ``(b, t, n, 2)`` from poses ``(b, t, n, 2, 3)`` and
    frame-0 offsets ``(b, n, 2)`` (the point rotations turn about)."""
    q_inv = np.linalg.inv(_pixel_poses(poses, size))  # frame-0 px -> frame-t px
    c0 = np.asarray(offsets, dtype=np.float64)[:, None] + (DIGIT_SIZE - 1) / 2.0
    return np.einsum("...ij,...j->...i", q_inv[..., :2, :2], c0) + q_inv[..., :2, 2]


def sample_motion(
    digits: np.ndarray, rng: np.random.Generator | Sequence[np.random.Generator], num_frames: int, image_size: int = IMAGE_SIZE
) -> dict[str, np.ndarray]:
    """Random placement and cumulative steps for a batch of digits (paper 000 §4.3).

    ``digits`` uint8 ``(b, n, 28, 28)``. Returns ``offsets`` int64 ``(b, n, 2)`` (x, y of the
    digit box's top-left at frame 0), ``forward`` float64 ``(b, t, n, 3, 3)`` (digit px ->
    frame-t px), ``step_kind`` int8 / ``step_angle`` float32 ``(b, t-1, n)``,
    ``step_translation`` float32 ``(b, t-1, n, 2)``. The redraw loop ("if the character leaves
    the image boundaries, we redo the transformation selection") is vectorised over the
    digits that still need a valid step.

    ``rng`` is one generator for the whole batch, or a sequence of ``b`` generators, one per
    clip: clip ``c``'s digits then draw from ``rng[c]`` alone, exactly the values
    ``sample_motion(digits[c:c+1], rng[c], ...)`` would draw (the geometry is still vectorised
    over the whole batch; the train split batches its per-key clips this way).
    """
    b, n = digits.shape[:2]
    if isinstance(rng, np.random.Generator):
        groups = [(rng, slice(0, b * n))]
    else:
        if len(rng) != b:
            raise ValueError(f"sample_motion: {len(rng)} generators for {b} clips.")
        groups = [(g, slice(c * n, (c + 1) * n)) for c, g in enumerate(rng)]
    group_of = np.repeat(np.arange(len(groups)), n) if len(groups) > 1 else None
    flat = np.asarray(digits).reshape(b * n, DIGIT_SIZE, DIGIT_SIZE)
    pts = _extreme_points(flat)
    lo = np.maximum(0, np.ceil(BORDER_MARGIN - pts.min(axis=1))).astype(np.int64)
    hi = np.minimum(image_size - DIGIT_SIZE, np.floor(image_size - 1 - BORDER_MARGIN - pts.max(axis=1))).astype(np.int64)
    hi = np.maximum(hi, lo) + 1
    offsets = np.concatenate([g.integers(lo[sl], hi[sl]) for g, sl in groups]) if len(groups) > 1 else groups[0][0].integers(lo, hi)
    forward = np.empty((num_frames, b * n, 3, 3))
    forward[0] = _translation(offsets.astype(np.float64))
    kind = np.zeros((num_frames - 1, b * n), dtype=np.int8)
    angle = np.zeros((num_frames - 1, b * n), dtype=np.float32)
    shift = np.zeros((num_frames - 1, b * n, 2), dtype=np.float32)
    centre_local = np.array([(DIGIT_SIZE - 1) / 2.0, (DIGIT_SIZE - 1) / 2.0, 1.0])
    for t in range(1, num_frames):
        pending = np.arange(b * n)
        for _ in range(MAX_REDRAW_ROUNDS):
            k, a, s = _draw_steps(groups, group_of, pending)
            prev = forward[t - 1, pending]
            centre = (prev @ centre_local)[:, :2]
            cand = _step_matrices(k, a, s, centre) @ prev
            ok = _inside(cand, pts[pending], image_size)
            done = pending[ok]
            forward[t, done] = cand[ok]
            kind[t - 1, done] = k[ok]
            angle[t - 1, done] = np.where(k[ok] == ROTATION, a[ok], 0.0)
            shift[t - 1, done] = np.where((k[ok] == TRANSLATION)[:, None], s[ok], 0.0)
            pending = pending[~ok]
            if not len(pending):
                break
        else:  # pragma: no cover - a valid position always admits some valid step
            raise RuntimeError(f"Moving MNIST: no valid step found for {len(pending)} digits after {MAX_REDRAW_ROUNDS} redraws.")
    return {
        "offsets": offsets.reshape(b, n, 2),
        "forward": forward.reshape(num_frames, b, n, 3, 3).transpose(1, 0, 2, 3, 4),
        "step_kind": kind.reshape(num_frames - 1, b, n).transpose(1, 0, 2),
        "step_angle": angle.reshape(num_frames - 1, b, n).transpose(1, 0, 2),
        "step_translation": shift.reshape(num_frames - 1, b, n, 2).transpose(1, 0, 2, 3),
    }


def _choice(rng: np.random.Generator, values: np.ndarray, size) -> np.ndarray:
    """``rng.choice(values, size)`` (uniform, with replacement): the same draw and the same
    generator state (``Generator.choice`` draws ``integers(0, len(values), size)``; checked in
    tests/test_moving_mnist.py), without ``choice``'s per-call overhead."""
    return values[rng.integers(0, len(values), size)]


def _draw_steps(groups, group_of: np.ndarray | None, pending: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step candidates (kind, angle, shift) for the ``pending`` digits (ascending rows); each
    group draws from its own generator, in the order a lone ``sample_motion`` call would."""
    if group_of is None:
        rng, m = groups[0][0], len(pending)
        return rng.integers(0, 2, m).astype(np.int8), _choice(rng, ROTATIONS_DEG, m), _choice(rng, TRANSLATIONS_PX, (m, 2))
    counts = np.bincount(group_of[pending], minlength=len(groups))
    draws = []
    for g in np.flatnonzero(counts):
        rng, m = groups[g][0], int(counts[g])
        draws.append((rng.integers(0, 2, m).astype(np.int8), _choice(rng, ROTATIONS_DEG, m), _choice(rng, TRANSLATIONS_PX, (m, 2))))
    return tuple(np.concatenate(parts) for parts in zip(*draws))


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


def transfer_poses(poses1_i, poses1_j, poses2_i, offsets1=None, offsets2=None, anchor: str = "frame", image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Poses of clip 2's digits at frame i, moved like clip 1's digits from frame i to j.

    All poses ``(..., n, 2, 3)`` (normalised ``affine_grid`` thetas, frame -> frame-0).

    * ``anchor="frame"`` (default; what a global affine ``T_Z`` on the feature map can do): the
      image-space motion ``T = relative_affine(P1_i, P1_j)`` is applied to clip 2's frame i
      as a whole: ``d_new(p) = d2_i(T p) = d2_0(P2_i T p)``, i.e. ``P_new = P2_i @ T``
      (3x3 homogeneous product). A rotation therefore turns about clip 1's digit centre.
    * ``anchor="character"``: the motion is re-centred on clip 2's digit (same rotation about
      its own centre, same centre displacement): ``F' = K F1 K^{-1}`` with ``K`` the translation
      from clip 1's to clip 2's digit centre at frame i; needs ``offsets1``/``offsets2``
      ``(..., n, 2)``.

    If clip 2 is clip 1 both give ``P1_j`` (up to float rounding).
    """
    p1i, p1j, p2i = (_homogeneous(np.asarray(p, dtype=np.float64)) for p in (poses1_i, poses1_j, poses2_i))
    if anchor == "frame":
        return (p2i @ np.linalg.inv(p1i) @ p1j)[..., :2, :]
    if anchor != "character":
        raise ValueError(f"transfer_poses: unknown anchor {anchor!r}; expected 'frame' or 'character'.")
    if offsets1 is None or offsets2 is None:
        raise ValueError("transfer_poses(anchor='character') needs offsets1 and offsets2 (digit box positions at frame 0).")
    norm = _pixel_to_norm(image_size)
    norm_inv = np.linalg.inv(norm)
    q1i, q1j, q2i = (norm_inv @ p @ norm for p in (p1i, p1j, p2i))
    half = (DIGIT_SIZE - 1) / 2.0
    c1 = _apply(np.linalg.inv(q1i), np.asarray(offsets1, dtype=np.float64) + half)
    c2 = _apply(np.linalg.inv(q2i), np.asarray(offsets2, dtype=np.float64) + half)
    k = _translation(c2 - c1)
    f1 = np.linalg.inv(q1j) @ q1i  # frame-i px -> frame-j px (clip 1)
    f2 = k @ f1 @ np.linalg.inv(k)
    return (norm @ (q2i @ np.linalg.inv(f2)) @ norm_inv)[..., :2, :]


def _apply(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return np.einsum("...ij,...j->...i", m[..., :2, :2], xy) + m[..., :2, 2]


def poses_inside(digits, offsets, poses, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Whether every nonzero digit pixel stays inside the frame (the generation criterion) for
    each digit/pose: ``digits`` ``(b, n, 28, 28)``, ``offsets`` ``(b, n, 2)``, ``poses``
    ``(b, t, n, 2, 3)`` -> bool ``(b, t, n)``."""
    digits = np.asarray(digits)
    b, n = digits.shape[:2]
    pts = _extreme_points(digits.reshape(b * n, DIGIT_SIZE, DIGIT_SIZE)).reshape(b, 1, n, -1, 2)
    forward = np.linalg.inv(_pixel_poses(poses, image_size)) @ _translation(np.asarray(offsets, dtype=np.float64))[:, None]
    return _inside(forward, pts, image_size)


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

    def _frame_index(self, frames: Sequence[int] | None) -> np.ndarray:
        if frames is None:
            return np.arange(self.num_frames)
        sel = np.asarray(frames, dtype=np.int64).reshape(-1)
        if sel.size and (sel.min() < -self.num_frames or sel.max() >= self.num_frames):
            raise IndexError(f"Moving MNIST: frame indices {sel.tolist()} out of range for clips of {self.num_frames} frames.")
        return sel % self.num_frames

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
        sel = [self._frame_index(f) for f in frames]
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


class CachedMovingMNIST(_MovingMNISTSplit):
    """Val/test split: a fixed seeded clip set, memory-mapped from the cache."""

    def __init__(self, split: str, arrays: Mapping[str, np.ndarray]):
        super().__init__(split, arrays["frames"].shape[1], arrays["backgrounds"])
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays["frames"])

    def __getstate__(self) -> dict:
        # Pickle memory maps by file name (DataLoader workers under spawn), not by content.
        state = dict(self.__dict__)
        state["arrays"] = {k: ("__memmap__", v.filename) if isinstance(v, np.memmap) else v for k, v in self.arrays.items()}
        state.pop("backgrounds")
        return state

    def __setstate__(self, state: dict) -> None:
        state["arrays"] = {
            k: np.load(v[1], mmap_mode="r") if isinstance(v, tuple) and v[0] == "__memmap__" else v for k, v in state["arrays"].items()
        }
        state["backgrounds"] = state["arrays"]["backgrounds"]
        self.__dict__.update(state)

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
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"MovingMNIST: {name} must be an integer >= {low}, got {value!r}.")
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

    # ------------------------------------------------------------------ evaluation
    def _split_assets(self, split: str, assets_root):
        images, labels, _ = digit_pool(split, assets_root)
        backgrounds, _ = split_backgrounds(split, self.num_backgrounds, self.image_size, self.seed)
        return images, labels, backgrounds

    def fig3_examples(self, count: int, seed: int = 0, start: int = 0, anchor: str = "frame",
                      assets_root: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
        """Examples for the Fig. 3 protocol (paper 000 §4.3 "Quantitative Results"), TEST split.

        Each example: two fresh clips from random (background, digits) pairs of the test split
        (MNIST test digits, test backgrounds), the same random frame positions ``i != j`` in
        both. Deterministic in ``(seed, start)``; call with ``start = 0, count, 2 count, …`` to
        stream 10,000 examples in chunks. Returns float32 tensors in [0, 1] (images
        ``(c, 3, h, w)``, masks ``(c, 1, h, w)``):

        * ``x1_i, x1_j, x2_i, x2_j``: the frames; ``frame_i, frame_j`` (c,) int64.
        * ``transformation_target``: background and character of ``x2_i``, transformed like
          ``x1_i -> x1_j`` (``transfer_poses`` with ``anchor``), to compare with
          ``h(x2_i, x1_i, x1_j, x2_i)``; ``transformation_target_mask``;
          ``transformation_target_inside`` (c,) bool: whether the transferred digit stays inside
          the frame (it may not; such targets are kept and simply cut at the border, filter on
          this flag to exclude them).
        * ``background_target``: the character of ``x1_j`` (its pose unchanged) on the
          background of clip 2, to compare with ``h(x1_i, x1_i, x1_j, x2_j)``;
          ``background_target_mask``.
        * Baselines: ``other_frame`` = clip-1 frame ``frame_k`` (``k != j``, uniform), whose MSE
          against ``x1_j`` is "Video frames"; ``background1`` / ``background2`` (3, h, w): the
          backgrounds alone ("No object" = MSE of ``background1`` against ``x1_j``).
        * Ground truth: ``poses1, poses2`` (c, t, n, 2, 3), ``transfer_theta`` (c, n, 2, 3) =
          ``relative_affine(P1_i, P1_j)``, ``target_poses`` (c, n, 2, 3), ``digit_labels1/2``.
        """
        images, labels, backgrounds = self._split_assets("test", assets_root)
        rng = np.random.default_rng([seed, 0xF163, start])
        n, t = self.num_digits, self.num_frames
        digit_idx = _distinct_digits(rng, len(images), 2 * count, n)
        bg_idx = rng.integers(0, len(backgrounds), size=2 * count)
        clips = generate_clips(images[digit_idx], backgrounds[bg_idx], rng, t, self.image_size)
        i = rng.integers(0, t, size=count)
        j = (i + rng.integers(1, t, size=count)) % t
        k = (j + rng.integers(1, t, size=count)) % t
        ar = np.arange(count)
        c1, c2 = 2 * ar, 2 * ar + 1
        tc1, ti, tj, tk = (torch.from_numpy(a) for a in (c1, i, j, k))
        tc2 = tc1 + 1
        poses = clips["poses"]
        target = transfer_poses(poses[c1, i], poses[c1, j], poses[c2, i], clips["offsets"][c1], clips["offsets"][c2], anchor, self.image_size)
        target = target.astype(np.float32)[:, None]
        digits1, digits2 = images[digit_idx[c1]], images[digit_idx[c2]]
        tr_frames, tr_masks = render(digits2, clips["offsets"][c2], target, backgrounds[bg_idx[c2]], self.image_size)
        bg_frames, bg_masks = render(digits1, clips["offsets"][c1], poses[c1, j][:, None], backgrounds[bg_idx[c2]], self.image_size)
        frames = torch.from_numpy(clips["frames"]).permute(0, 1, 4, 2, 3)

        def img(rows, cols):
            return frames[rows, cols].float().div(255.0)

        def bg(rows):
            return torch.from_numpy(backgrounds[bg_idx[rows]]).permute(0, 3, 1, 2).float().div(255.0)

        rel = relative_affine(torch.from_numpy(poses[c1, i]).double(), torch.from_numpy(poses[c1, j]).double())
        return {
            "x1_i": img(tc1, ti), "x1_j": img(tc1, tj), "x2_i": img(tc2, ti), "x2_j": img(tc2, tj),
            "frame_i": torch.from_numpy(i), "frame_j": torch.from_numpy(j), "frame_k": torch.from_numpy(k),
            "transformation_target": tr_frames[:, 0], "transformation_target_mask": tr_masks[:, 0],
            "transformation_target_inside": torch.from_numpy(
                poses_inside(digits2, clips["offsets"][c2], target, self.image_size).all(axis=(1, 2))),
            "background_target": bg_frames[:, 0], "background_target_mask": bg_masks[:, 0],
            "other_frame": img(tc1, tk), "background1": bg(c1), "background2": bg(c2),
            "poses1": torch.from_numpy(poses[c1]), "poses2": torch.from_numpy(poses[c2]),
            "transfer_theta": rel.float(), "target_poses": torch.from_numpy(target[:, 0]),
            "digit_labels1": torch.from_numpy(labels[digit_idx[c1]]), "digit_labels2": torch.from_numpy(labels[digit_idx[c2]]),
        }

    def tz_analysis_pairs(self, count: int, digit_index: int, background_index: int, seed: int = 0, start: int = 0,
                          split: str = "test", assets_root: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
        """Frame pairs of ONE digit instance on ONE background with ground-truth ``T_X`` (§4.6).

        The paper gathers 40,000 unique pairs of a fixed digit instance (it shows a 5 and an 8,
        see ``find_digit``) on a fixed background. Each pair comes from its own fresh clip
        (random placement and steps, one digit, ``num_frames`` frames) with a random ordered
        pair ``i != j``. ``digit_index`` indexes ``digit_pool(split)``; ``background_index`` the
        split's backgrounds. Deterministic in ``(seed, start)``: stream 40,000 pairs as chunks
        with ``start = 0, count, …``. Returns tensors:

        * ``x_i, x_j`` (c, 3, h, w), ``masks_i, masks_j`` (c, 1, h, w) float in [0, 1];
          ``frame_i, frame_j`` (c,) int64.
        * ``theta`` (c, 2, 3): ``T_X = relative_affine(P_i, P_j)`` (``affine_grid`` theta
          warping ``x_i``'s digit onto ``x_j``'s); ``angle_deg`` (c,): net counter-clockwise
          rotation i -> j (= ``atan2(theta[1, 0], theta[0, 0])``); ``translation_px`` (c, 2):
          displacement of the digit centre i -> j (x right, y down).
        * ``poses`` (c, t, 2, 3) and the generating steps ``step_kind`` (c, t-1), ``step_angle``
          (c, t-1), ``step_translation`` (c, t-1, 2); ``digit_label`` () int64.
        """
        images, labels, backgrounds = self._split_assets(check_split(split), assets_root)
        if not 0 <= digit_index < len(images):
            raise ValueError(f"tz_analysis_pairs: digit_index {digit_index} out of range for the {split} split ({len(images)} digits).")
        if not 0 <= background_index < len(backgrounds):
            raise ValueError(f"tz_analysis_pairs: background_index {background_index} out of range ({len(backgrounds)} backgrounds).")
        rng = np.random.default_rng([seed, 0x7A5, digit_index, background_index, start])
        t = self.num_frames
        digits = np.broadcast_to(images[digit_index], (count, 1, DIGIT_SIZE, DIGIT_SIZE))
        bgs = np.broadcast_to(backgrounds[background_index], (count,) + backgrounds.shape[1:])
        clips = generate_clips(digits, bgs, rng, t, self.image_size)
        i = rng.integers(0, t, size=count)
        j = (i + rng.integers(1, t, size=count)) % t
        ar, ti, tj = torch.arange(count), torch.from_numpy(i), torch.from_numpy(j)
        frames = torch.from_numpy(clips["frames"]).permute(0, 1, 4, 2, 3)
        masks = torch.from_numpy(clips["masks"])[:, :, None]
        poses = torch.from_numpy(clips["poses"][:, :, 0])
        theta = relative_affine(poses[ar, ti].double(), poses[ar, tj].double()).float()
        x_i, x_j, masks_i, masks_j = frames[ar, ti], frames[ar, tj], masks[ar, ti], masks[ar, tj]
        ar = ar.numpy()
        return {
            "x_i": x_i.float().div(255.0), "x_j": x_j.float().div(255.0),
            "masks_i": masks_i.float(), "masks_j": masks_j.float(),
            "frame_i": torch.from_numpy(i), "frame_j": torch.from_numpy(j),
            "theta": theta,
            "angle_deg": torch.from_numpy(clips["angle"][ar, j, 0] - clips["angle"][ar, i, 0]),
            "translation_px": torch.from_numpy(clips["centre"][ar, j, 0] - clips["centre"][ar, i, 0]),
            "poses": poses,
            "step_kind": torch.from_numpy(clips["step_kind"][:, :, 0].astype(np.int64)),
            "step_angle": torch.from_numpy(clips["step_angle"][:, :, 0]),
            "step_translation": torch.from_numpy(clips["step_translation"][:, :, 0]),
            "digit_label": torch.tensor(int(labels[digit_index]), dtype=torch.int64),
        }


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
    parser = argparse.ArgumentParser(prog="python -m datamodules.moving_mnist", description="Moving MNIST generation benchmark.")
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
