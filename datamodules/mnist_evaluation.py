"""Evaluation sets of Moving MNIST for the equivariant model (paper 000): the Fig. 3 examples and the
§4.6 T_Z analysis pairs, built from a ``MovingMNIST`` source (its methods ``fig3_examples`` /
``tz_analysis_pairs`` call these)."""

from __future__ import annotations

import os

import numpy as np
import torch

from datamodules.base import check_split, relative_affine
from datamodules.backgrounds import split_backgrounds
from datamodules.mnist import DIGIT_SIZE
from datamodules.mnist_generation import _distinct_digits, digit_pool, generate_clips, render
from datamodules.mnist_motion import poses_inside, transfer_poses


def split_assets(source, split: str, assets_root):
    images, labels, _ = digit_pool(split, assets_root)
    backgrounds, _ = split_backgrounds(split, source.num_backgrounds, source.image_size, source.seed)
    return images, labels, backgrounds

def fig3_examples(source, count: int, seed: int = 0, start: int = 0, anchor: str = "frame",
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
    images, labels, backgrounds = split_assets(source, "test", assets_root)
    rng = np.random.default_rng([seed, 0xF163, start])
    n, t = source.num_digits, source.num_frames
    digit_idx = _distinct_digits(rng, len(images), 2 * count, n)
    bg_idx = rng.integers(0, len(backgrounds), size=2 * count)
    clips = generate_clips(images[digit_idx], backgrounds[bg_idx], rng, t, source.image_size)
    i = rng.integers(0, t, size=count)
    j = (i + rng.integers(1, t, size=count)) % t
    k = (j + rng.integers(1, t, size=count)) % t
    ar = np.arange(count)
    c1, c2 = 2 * ar, 2 * ar + 1
    tc1, ti, tj, tk = (torch.from_numpy(a) for a in (c1, i, j, k))
    tc2 = tc1 + 1
    poses = clips["poses"]
    target = transfer_poses(poses[c1, i], poses[c1, j], poses[c2, i], clips["offsets"][c1], clips["offsets"][c2], anchor, source.image_size)
    target = target.astype(np.float32)[:, None]
    digits1, digits2 = images[digit_idx[c1]], images[digit_idx[c2]]
    tr_frames, tr_masks = render(digits2, clips["offsets"][c2], target, backgrounds[bg_idx[c2]], source.image_size)
    bg_frames, bg_masks = render(digits1, clips["offsets"][c1], poses[c1, j][:, None], backgrounds[bg_idx[c2]], source.image_size)
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
            poses_inside(digits2, clips["offsets"][c2], target, source.image_size).all(axis=(1, 2))),
        "background_target": bg_frames[:, 0], "background_target_mask": bg_masks[:, 0],
        "other_frame": img(tc1, tk), "background1": bg(c1), "background2": bg(c2),
        "poses1": torch.from_numpy(poses[c1]), "poses2": torch.from_numpy(poses[c2]),
        "transfer_theta": rel.float(), "target_poses": torch.from_numpy(target[:, 0]),
        "digit_labels1": torch.from_numpy(labels[digit_idx[c1]]), "digit_labels2": torch.from_numpy(labels[digit_idx[c2]]),
    }

def tz_analysis_pairs(source, count: int, digit_index: int, background_index: int, seed: int = 0, start: int = 0,
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
    images, labels, backgrounds = split_assets(source, check_split(split), assets_root)
    if not 0 <= digit_index < len(images):
        raise ValueError(f"tz_analysis_pairs: digit_index {digit_index} out of range for the {split} split ({len(images)} digits).")
    if not 0 <= background_index < len(backgrounds):
        raise ValueError(f"tz_analysis_pairs: background_index {background_index} out of range ({len(backgrounds)} backgrounds).")
    rng = np.random.default_rng([seed, 0x7A5, digit_index, background_index, start])
    t = source.num_frames
    digits = np.broadcast_to(images[digit_index], (count, 1, DIGIT_SIZE, DIGIT_SIZE))
    bgs = np.broadcast_to(backgrounds[background_index], (count,) + backgrounds.shape[1:])
    clips = generate_clips(digits, bgs, rng, t, source.image_size)
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
