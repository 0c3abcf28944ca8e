"""Evaluation protocols of paper 000 for a trained ``backbone.scene.EquivariantScene``.

Usable from ``EquivariantSceneModule``'s test stage and on their own (plain functions of a
model, a dataset source and a device):

* ``fig3_protocol``: Moving MNIST Fig. 3 (§4.3 "Quantitative Results"): per-pixel MSE of the
  Transformation manipulation ``h(x2_i, x1_i, x1_j, x2_i)`` and the Background manipulation
  ``h(x1_i, x1_i, x1_j, x2_j)`` against targets rendered from the generator, and the
  Video-frames / No-object baselines, over 10,000 test examples by default.
* ``sprite_analogy_protocol``: sprite analogies (§4.4, Fig. 6-9, 16, 21): for a pair of test
  characters (A, B) with the same animation and view, ``B_k ≈ h(B_1, A_1, A_k, B_1)``;
  per animation; with backgrounds also split into background-only / character-only MSE with
  the masks; and 'Ours-BG' (Fig. 6, 16-17): the same analogy on a plain gray canvas with the
  background encoder fed the canvas.
* ``lightning_modules.evaluation.tz.tz_analysis``: §4.6, the learned ``T_Z`` against the ground-truth ``T_X`` on pairs of one
  digit on one background: SVD nearest-rotation angle, translation norms, linear regression
  r² from ``T_X`` to ``T_Z`` (paper: 0.992 / 0.993).

MSE scales. The paper's figures say "per-pixel MSE" without the scale; its sprite numbers
(28.5 background-only, 79.0 character-only) and the peers it quotes (Reed et al.) are only
plausible on a 0-255 intensity scale or as per-image sums. So every MSE is reported three ways:
``mse`` (mean over pixels and channels, images in [0, 1]), ``mse_255`` (the same on the
0-255 scale, = ``mse * 255**2``, most likely the paper's unit) and ``sse`` (sum of squared
errors over the image on [0, 1], the per-image convention of Reed et al.'s code). Masked
MSEs average over the selected pixels only (``mask`` = character, ``1 - mask`` = background).
SSIM and PSNR (data range 1) come from ``torchmetrics.functional``; PSNR is per example and
then averaged.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torchvision.utils import make_grid

from backbone.scene import EquivariantScene
from lightning_modules.evaluation.scene_metrics import GRAY, concat, ghost_metrics, ghost_ratios, mse_scales, per_example_metrics, per_example_mse, summarize
from utils.progress import counter
from utils.torch_utils import eval_mode

ANALOGY_ROWS = ("analogy", "static_baseline", "background_only", "character_only", "gray_canvas")


# ============================================================================ Fig. 3
@eval_mode.first_argument
def fig3_protocol(
    scene: EquivariantScene,
    source,
    count: int = 10_000,
    chunk: int = 500,
    seed: int = 0,
    device: torch.device | str = "cpu",
    use_ground_truth_transform: bool = False,
    assets_root: str | os.PathLike | None = None,
    progress: bool = True,
    canvas_color: Sequence[float] = GRAY,
) -> dict[str, Any]:
    """Moving MNIST Fig. 3 on ``count`` test examples from ``source.fig3_examples`` (streamed in chunks).

    Each example: two fresh test clips, the same random frame positions ``i != j`` in both.
    Rows: ``transformation`` = ``h(x2_i, x1_i, x1_j, x2_i)`` vs the generator rendering of
    clip 2's frame ``i`` moved like clip 1's ``i -> j``; ``background`` =
    ``h(x1_i, x1_i, x1_j, x2_j)`` vs clip 1's character at frame ``j`` on clip 2's background;
    ``video_frames`` = clip-1 frame ``k != j`` vs ``x1_j``; ``no_object`` = the background
    alone vs ``x1_j``. Also the ghost metrics of ``x1_j`` (``ghost_metrics``; true background
    ``background1``, character mask of ``x1_j``, character target on a ``canvas_color`` canvas):
    ``summary["ghosts"]``. With ``use_ground_truth_transform`` (the ``T_Z := T_X`` ablation, Fig.
    18) the manipulations use the ground-truth ``T_X`` of ``x1_i -> x1_j`` instead of ``T_Z``.

    Returns ``{"summary": {row: {metric: summary}}, "per_example": {f"{row}/{metric}": array},
    "examples": {name: first-chunk tensors for a grid}}``.
    """
    if count < 1 or chunk < 1:
        raise ValueError(f"fig3 count and chunk must be >= 1, got {count} and {chunk}.")
    device = torch.device(device)
    parts: dict[str, list[dict[str, torch.Tensor]]] = {r: [] for r in ("transformation", "background", "video_frames", "no_object")}
    ghosts: list[dict[str, torch.Tensor]] = []
    examples: dict[str, torch.Tensor] = {}
    bar = counter(count, "Fig. 3 examples", progress)
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        ex = source.fig3_examples(size, seed=seed, start=start, assets_root=assets_root)
        dev = {k: ex[k].to(device) for k in ("x1_i", "x1_j", "x2_i", "x2_j")}
        with torch.inference_mode():
            if use_ground_truth_transform:
                theta = ex["transfer_theta"][:, 0].to(device)
                z1_i = scene.encode_character(dev["x1_i"])
                transformation = scene.compose(scene.encode_character(dev["x2_i"]), theta, scene.encode_background(dev["x2_i"]))
                background = scene.compose(z1_i, theta, scene.encode_background(dev["x2_j"]))
            else:
                transformation = scene.h(dev["x2_i"], dev["x1_i"], dev["x1_j"], dev["x2_i"])
                background = scene.h(dev["x1_i"], dev["x1_i"], dev["x1_j"], dev["x2_j"])
            bg_render = scene.g(scene.encode_background(dev["x1_j"])).float().cpu()
            char_render = scene.remove_background(dev["x1_j"], canvas_color=canvas_color).float().cpu()
        transformation, background = transformation.float().cpu(), background.float().cpu()
        mask_j = ex["background_target_mask"]  # the character mask of x1_j (same pose, other background)
        canvas = torch.tensor(canvas_color, dtype=torch.float32).view(1, 3, 1, 1)
        ghosts.append(ghost_metrics(bg_render, ex["background1"], char_render, mask_j * ex["x1_j"] + (1 - mask_j) * canvas, mask_j, ex["x1_j"]))
        parts["transformation"].append(per_example_metrics(transformation, ex["transformation_target"]))
        parts["background"].append(per_example_metrics(background, ex["background_target"]))
        parts["video_frames"].append(per_example_metrics(ex["other_frame"], ex["x1_j"]))
        parts["no_object"].append(per_example_metrics(ex["background1"], ex["x1_j"]))
        parts["transformation"][-1]["target_inside"] = ex["transformation_target_inside"].float()
        if not examples:
            n = min(8, size)
            examples = {
                "x1_i": ex["x1_i"][:n], "x1_j": ex["x1_j"][:n], "x2_i": ex["x2_i"][:n], "x2_j": ex["x2_j"][:n],
                "transformation": transformation[:n], "transformation_target": ex["transformation_target"][:n],
                "background": background[:n], "background_target": ex["background_target"][:n],
            }
        if bar is not None:
            bar.update(size)
    if bar is not None:
        bar.close()
    elements = int(np.prod(examples["x1_i"].shape[1:]))
    summary, per_example = {}, {}
    for row, chunks in parts.items():
        values = concat(chunks)
        summary[row] = {**mse_scales(values["mse"], elements), "ssim": summarize(values["ssim"]), "psnr": summarize(values["psnr"])}
        for key, v in values.items():
            per_example[f"{row}/{key}"] = v
    inside = per_example["transformation/target_inside"] > 0.5
    summary["transformation_target_inside"] = mse_scales(per_example["transformation/mse"][inside], elements)
    summary["transformation_target_inside"]["fraction"] = float(inside.mean())
    ghost_values = concat(ghosts)
    summary["ghosts"] = ghost_ratios(ghost_values)
    per_example.update({f"ghosts/{k}": v for k, v in ghost_values.items()})
    return {"summary": summary, "per_example": per_example, "examples": examples}


def fig3_table(result: Mapping[str, Any]) -> tuple[str, dict[str, dict[str, float]]]:
    """Rows of the Fig. 3 table (mean/median/std of the per-pixel MSE, both scales, SSIM, PSNR)."""
    names = {"transformation": "Transformation", "background": "Background", "video_frames": "Video frames", "no_object": "No object"}
    rows = {}
    for key, name in names.items():
        s = result["summary"][key]
        rows[name] = {
            "MSE mean": s["mse"]["mean"], "MSE median": s["mse"]["median"], "MSE std": s["mse"]["std"],
            "±95%": s["mse"]["ci95"], "MSE(0-255) mean": s["mse_255"]["mean"], "MSE(0-255) median": s["mse_255"]["median"],
            "SSIM": s["ssim"]["mean"], "PSNR": s["psnr"]["mean"],
        }
    return "Fig. 3 (Moving MNIST, per-pixel MSE over {} test examples)".format(result["summary"]["background"]["mse"]["n"]), rows


def ghost_table(ghosts: Mapping[str, float]) -> str:
    """The ghost metrics (``ghost_ratios``) as a printed table (target: ratios <= 1.5)."""
    from utils.report import format_table

    rows = {
        "background-only render vs true background": {"ghost region MSE": ghosts["bg_inside_mse"], "reference MSE": ghosts["bg_outside_mse"],
                                                      "ratio": ghosts["background_ghost_ratio"],
                                                      "character held (0-1)": ghosts["background_ghost_strength"]},
        "character-only render vs character on canvas": {"ghost region MSE": ghosts["char_on_structure_mse"],
                                                         "reference MSE": ghosts["char_off_structure_mse"], "ratio": ghosts["character_ghost_ratio"]},
    }
    return format_table("Ghosts (background render: inside / outside the character mask; character render: "
                        "on / off the true background's diamonds, outside the mask; character held: the share of the character the "
                        "background render copies inside the mask, 0 = inpainting only)", rows, ["ghost region MSE", "reference MSE", "ratio", "character held (0-1)"])


# ============================================================================ sprites
def _clip_labels(dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(character, action, view) per clip, from the dataset's label arrays when it has them."""
    if all(hasattr(dataset, a) for a in ("clip_character", "clip_action", "clip_view")):
        return (np.asarray(dataset.clip_character), np.asarray(dataset.clip_action), np.asarray(dataset.clip_view))
    chars, acts, views = [], [], []
    for i in range(len(dataset)):
        item = dataset.get(i, [0])
        if "action" not in item:
            raise ValueError(f"{type(dataset).__name__} has no action labels; the sprite analogy protocol needs action/view labels.")
        chars.append(int(item.get("character", torch.tensor(i)))), acts.append(int(item["action"])), views.append(int(item.get("view", torch.tensor(0))))
    return np.array(chars), np.array(acts), np.array(views)


def analogy_pairs(dataset, seed: int = 0, max_clips: int | None = None) -> list[tuple[int, int]]:
    """``(a, b)`` clip pairs: for each clip ``b`` (B's animation), a random clip ``a`` of another
    character with the same action and view and length (seeded). ``max_clips`` keeps an evenly
    spread subset of the ``b`` clips (all by default)."""
    chars, acts, views = _clip_labels(dataset)
    rng = np.random.default_rng([seed, 0xA7A1])
    order = np.arange(len(chars))
    if max_clips is not None and max_clips < len(order):
        order = order[np.linspace(0, len(order) - 1, max_clips).round().astype(int)]
    pairs = []
    for b in order:
        same = np.flatnonzero((acts == acts[b]) & (views == views[b]) & (chars != chars[b]))
        same = [a for a in same if dataset.clip_length(int(a)) == dataset.clip_length(int(b))]
        if same:
            pairs.append((int(same[rng.integers(len(same))]), int(b)))
    if not pairs:
        raise ValueError("No analogy pairs: the split needs at least two characters with the same action and view.")
    return pairs


@eval_mode.first_argument
def sprite_analogy_protocol(
    scene: EquivariantScene,
    dataset,
    seed: int = 0,
    max_clips: int | None = None,
    device: torch.device | str = "cpu",
    canvas_color: Sequence[float] = GRAY,
    progress: bool = True,
) -> dict[str, Any]:
    """Sprite analogies (§4.4): ``B_k ≈ h(B_1, A_1, A_k, B_1)`` for ``k >= 2`` (0-based ``k >= 1``).

    Rows per animation (``dataset.actions``) and over all: ``analogy`` (full-frame MSE),
    ``static_baseline`` (``B_1`` repeated, no animation: what the analogy must beat); when
    the dataset has backgrounds also ``background_only`` / ``character_only`` (MSE over the
    target's non-character / character pixels, Fig. 9, 21) and ``gray_canvas`` ('Ours-BG',
    Fig. 6, 16-17: A, B and the target composited on a plain ``canvas_color`` canvas with the
    masks, the background encoder fed the plain canvas). Per-example values are per predicted
    frame.
    """
    device = torch.device(device)
    has_bg = bool(getattr(dataset, "has_backgrounds", False))
    has_masks = bool(getattr(dataset, "has_masks", False))
    pairs = analogy_pairs(dataset, seed, max_clips)
    actions = tuple(getattr(dataset, "actions", ())) or ("all",)
    rows: dict[str, list[dict[str, torch.Tensor]]] = {r: [] for r in ANALOGY_ROWS}
    ghosts: list[dict[str, torch.Tensor]] = []
    labels: list[torch.Tensor] = []
    examples: dict[str, torch.Tensor] = {}
    bar = counter(len(pairs), "sprite analogies", progress)
    for a, b in pairs:
        clip_a, clip_b = dataset.get(a), dataset.get(b)
        frames_a, frames_b = clip_a["frames"], clip_b["frames"]
        t = frames_a.shape[0]
        xa = frames_a.to(device)
        xb0 = frames_b[:1].to(device)
        pred = scene.animate(xb0, xa[:1], xa[None, 1:])[0].float().cpu()  # 't-1 c h w'
        target = frames_b[1:]
        rows["analogy"].append(per_example_metrics(pred, target))
        rows["static_baseline"].append(per_example_metrics(frames_b[:1].expand_as(target), target))
        action = int(clip_b.get("action", torch.tensor(0)))
        labels.append(torch.full((t - 1,), action, dtype=torch.int64))
        if has_bg and has_masks:
            mask = clip_b["masks"][1:]
            rows["background_only"].append({"mse": per_example_mse(pred, target, 1.0 - mask)})
            rows["character_only"].append({"mse": per_example_mse(pred, target, mask)})
            canvas = torch.tensor(canvas_color, dtype=frames_a.dtype).view(1, 3, 1, 1)
            on_a = clip_a["masks"] * frames_a + (1 - clip_a["masks"]) * canvas
            on_b = clip_b["masks"] * frames_b + (1 - clip_b["masks"]) * canvas
            with torch.inference_mode():
                z_c = scene.encode_character(on_b[:1].to(device)).expand(t - 1, -1, -1, -1)
                theta = scene.transform(scene.encode_character(on_a[:1].to(device)).expand(t - 1, -1, -1, -1),
                                        scene.encode_character(on_a[1:].to(device)))
                z_b = scene.encode_background(scene.canvas(on_b[:1].to(device), canvas_color)).expand(t - 1, -1, -1, -1)
                gray = scene.compose(z_c, theta, z_b).float().cpu()
            rows["gray_canvas"].append(per_example_metrics(gray, on_b[1:]))
            x_b1 = frames_b[:1].to(device)
            ghosts.append(ghost_metrics(scene.render_background(x_b1).float().cpu(), clip_b["background"][None],
                                        scene.remove_background(x_b1, canvas_color=canvas_color).float().cpu(), on_b[:1], clip_b["masks"][:1], frames_b[:1]))
        if not examples:
            examples = {"A": frames_a, "B": frames_b, "prediction": torch.cat([frames_b[:1], pred])}
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    action_of = torch.cat(labels).numpy()
    elements = int(np.prod(frames_b.shape[1:]))
    summary: dict[str, dict[str, Any]] = {}
    per_example: dict[str, np.ndarray] = {"action": action_of}
    for row, chunks in rows.items():
        if not chunks:
            continue
        values = concat(chunks)
        summary[row] = {}
        for name, idx in [("all", np.ones_like(action_of, dtype=bool))] + [(act, action_of == k) for k, act in enumerate(actions)]:
            if not idx.any():
                continue
            entry = mse_scales(values["mse"][idx], elements)
            for extra in ("ssim", "psnr"):
                if extra in values:
                    entry[extra] = summarize(values[extra][idx])
            summary[row][name] = entry
        for key, v in values.items():
            per_example[f"{row}/{key}"] = v
    if ghosts:
        ghost_values = concat(ghosts)
        summary["ghosts"] = ghost_ratios(ghost_values)
        per_example.update({f"ghosts/{k}": v for k, v in ghost_values.items()})
    return {"summary": summary, "per_example": per_example, "examples": examples, "pairs": len(pairs), "actions": list(actions)}


def sprite_table(result: Mapping[str, Any]) -> tuple[str, dict[str, dict[str, float]]]:
    """One table row per (protocol row, animation): MSE (both scales), SSIM, PSNR."""
    rows = {}
    for row, per_action in result["summary"].items():
        if row == "ghosts":
            continue
        for action, s in per_action.items():
            rows[f"{row} / {action}"] = {
                "MSE mean": s["mse"]["mean"], "MSE median": s["mse"]["median"], "MSE(0-255) mean": s["mse_255"]["mean"],
                "SSE mean": s["sse"]["mean"], "SSIM": s.get("ssim", {}).get("mean"), "PSNR": s.get("psnr", {}).get("mean"),
            }
    return f"Sprite analogies ({result['pairs']} test clip pairs, per predicted frame)", rows


# ============================================================================ output
def labeled_grid(rows: Sequence[tuple[str, torch.Tensor]], label_width: int = 140, padding: int = 2):
    """A PIL image: one row of images (``n 3 h w`` in [0, 1]) per ``(label, tensor)``, label on the left."""
    from PIL import Image, ImageDraw

    ncol = max(r[1].shape[0] for r in rows)
    blocks = []
    for _, images in rows:
        images = images.detach().float().cpu().clamp(0, 1)
        if images.shape[0] < ncol:
            images = torch.cat([images, torch.ones(ncol - images.shape[0], *images.shape[1:])])
        blocks.append(make_grid(images, nrow=ncol, padding=padding, pad_value=1.0))
    grid = torch.cat(blocks, dim=1)
    array = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    body = Image.fromarray(array)
    canvas = Image.new("RGB", (body.width + label_width, body.height), "white")
    canvas.paste(body, (label_width, 0))
    draw = ImageDraw.Draw(canvas)
    row_h = body.height // len(rows)
    for k, (label, _) in enumerate(rows):
        draw.text((4, k * row_h + row_h // 2 - 5), label, fill=(0, 0, 0))
    return canvas


def fig3_grid(examples: Mapping[str, torch.Tensor]):
    """Fig. 2/3-style grid of the first examples: inputs, manipulations and their targets."""
    return labeled_grid([
        ("x1_i", examples["x1_i"]), ("x1_j", examples["x1_j"]), ("x2_i", examples["x2_i"]), ("x2_j", examples["x2_j"]),
        ("transformation", examples["transformation"]), ("  target", examples["transformation_target"]),
        ("background", examples["background"]), ("  target", examples["background_target"]),
    ])


def manipulation_grid(scene: EquivariantScene, x1: torch.Tensor, x2: torch.Tensor, canvas_color: Sequence[float] = GRAY):
    """All manipulations on ``n`` pairs ``(x1, x2)`` of different videos (video ``k`` and ``k+1`` mixed):

    rows: inputs, reconstruction ``h(x1,x1,x2,x1)``, background swap (character of video ``k``
    as in its ``x2``, background of video ``k+1``), animation transfer (video ``k+1``'s first
    frame moved like video ``k``'s ``x1 -> x2``), both at once, background removal on a gray
    canvas, and Fig. 10's background-only / character-only renderings.
    """
    other = torch.roll(x1, 1, dims=0)
    return labeled_grid([
        ("x1", x1), ("x2", x2), ("other video", other),
        ("reconstruct", scene.reconstruct(x1, x2)),
        ("swap background", scene.swap_background(x1, x2, other)),
        ("transfer animation", scene.transfer_animation(other, x1, x2)),
        ("swap bg + animation", scene.swap_background_and_animation(x1, torch.roll(x1, 2, 0), torch.roll(x2, 2, 0), other)),
        ("remove background", scene.remove_background(x1, x1, x2, canvas_color)),
        ("background only", scene.render_background(x1)),
        ("character only", scene.render_character(x1, x1, x2)),
    ])
