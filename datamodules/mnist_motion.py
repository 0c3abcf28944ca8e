"""Moving MNIST geometry and motion (paper 000 §4.2-4.3; the protocol is in ``datamodules.moving_mnist``):
the step sets, affine poses in ``affine_grid`` convention, seeded motion sampling with border redraws,
and pose transfer between clips."""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from datamodules.mnist import DIGIT_SIZE


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
