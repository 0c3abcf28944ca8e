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
* ``tz_analysis``: §4.6, the learned ``T_Z`` against the ground-truth ``T_X`` on pairs of one
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

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchvision.utils import make_grid

from backbone.scene import EquivariantScene
from utils.io import write_npz  # noqa: F401 (ev.write_npz)
from utils.progress import counter
from utils.torch_utils import eval_mode

GRAY = (0.5, 0.5, 0.5)
ANALOGY_ROWS = ("analogy", "static_baseline", "background_only", "character_only", "gray_canvas")


# ============================================================================ metrics
def per_example_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``b c h w`` -> ``(b,)`` mean squared error; with ``mask`` (``b 1 h w`` in [0, 1]) the
    mean over the masked pixels only (NaN where the mask is empty)."""
    sq = (pred.float() - target.float()).pow(2)
    if mask is None:
        return sq.flatten(1).mean(1)
    weight = mask.float().expand_as(sq)
    total = weight.flatten(1).sum(1)
    return torch.where(total > 0, (sq * weight).flatten(1).sum(1) / total.clamp_min(1e-12), torch.full_like(total, float("nan")))


def per_example_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example ``mse``, ``ssim`` and ``psnr`` (torchmetrics, data range 1) of ``b c h w`` images."""
    pred, target = pred.float().clamp(0, 1), target.float()
    return {
        "mse": per_example_mse(pred, target),
        "ssim": structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none"),
        "psnr": peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3)),
    }


def structure_mask(background: torch.Tensor, tolerance: float = 1.5 / 255) -> torch.Tensor:
    """``b 3 h w -> b 1 h w``: pixels of a background that differ from its base colour (the per-channel
    median, which the CSS4 base colour covers in most of the frame): where its diamonds are."""
    base = background.float().flatten(2).median(dim=2).values[..., None, None]
    return ((background.float() - base).abs().amax(1, keepdim=True) > tolerance).float()


def ghost_metrics(background_render: torch.Tensor, true_background: torch.Tensor, character_render: torch.Tensor,
                  character_target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example ghosts of one component in the render of the other (``b`` each; issue 13).

    * ``background_render`` (``g(fb(x))``) against the ``true_background``: MSE inside the character
      ``mask`` (``bg_inside``: a ghost of the character shows here) and outside (``bg_outside``).
    * ``character_render`` (the background removed: ``fb`` fed a plain canvas) against
      ``character_target`` (the character on that canvas), outside the mask: on the true
      background's diamonds (``char_on_structure``: a ghost of the background shows here) and on
      its base colour (``char_off_structure``).

    The ghost ratios are ``bg_inside / bg_outside`` and ``char_on_structure / char_off_structure``
    of the means (``ghost_ratios``): about 1 without a ghost, large with one.
    """
    mask = mask.float()
    outside = 1.0 - mask
    structure = structure_mask(true_background)
    return {
        "bg_inside": per_example_mse(background_render, true_background, mask),
        "bg_outside": per_example_mse(background_render, true_background, outside),
        "char_on_structure": per_example_mse(character_render, character_target, outside * structure),
        "char_off_structure": per_example_mse(character_render, character_target, outside * (1.0 - structure)),
    }


def ghost_ratios(values: Mapping[str, np.ndarray]) -> dict[str, float]:
    """``background_ghost_ratio`` and ``character_ghost_ratio`` from ``ghost_metrics`` arrays (NaNs dropped)."""
    mean = {k: float(np.nanmean(np.asarray(v, dtype=np.float64))) for k, v in values.items()}
    ratio = lambda a, b: mean[a] / mean[b] if mean[b] > 0 else float("inf") if mean[a] > 0 else 1.0  # noqa: E731
    return {**{f"{k}_mse": v for k, v in mean.items()},
            "background_ghost_ratio": ratio("bg_inside", "bg_outside"),
            "character_ghost_ratio": ratio("char_on_structure", "char_off_structure")}


def summarize(values: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Mean, std, median, quartiles, min/max and the 95% confidence half-width of the mean (NaNs dropped)."""
    v = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "median": float("nan"), "q1": float("nan"),
                "q3": float("nan"), "min": float("nan"), "max": float("nan"), "ci95": float("nan")}
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {
        "n": int(len(v)), "mean": float(v.mean()), "std": std, "median": float(np.median(v)),
        "q1": float(np.percentile(v, 25)), "q3": float(np.percentile(v, 75)), "min": float(v.min()), "max": float(v.max()),
        "ci95": 1.96 * std / math.sqrt(len(v)),
    }


def mse_scales(mse: np.ndarray, elements: int) -> dict[str, dict[str, float]]:
    """Summaries of an MSE array on the three scales (module docstring)."""
    mse = np.asarray(mse, dtype=np.float64)
    return {"mse": summarize(mse), "mse_255": summarize(mse * 255.0**2), "sse": summarize(mse * elements)}


def _concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    return {k: torch.cat([p[k] for p in parts]).cpu().numpy() for k in parts[0]}


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
        ghosts.append(ghost_metrics(bg_render, ex["background1"], char_render, mask_j * ex["x1_j"] + (1 - mask_j) * canvas, mask_j))
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
        values = _concat(chunks)
        summary[row] = {**mse_scales(values["mse"], elements), "ssim": summarize(values["ssim"]), "psnr": summarize(values["psnr"])}
        for key, v in values.items():
            per_example[f"{row}/{key}"] = v
    inside = per_example["transformation/target_inside"] > 0.5
    summary["transformation_target_inside"] = mse_scales(per_example["transformation/mse"][inside], elements)
    summary["transformation_target_inside"]["fraction"] = float(inside.mean())
    ghost_values = _concat(ghosts)
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
                                                      "ratio": ghosts["background_ghost_ratio"]},
        "character-only render vs character on canvas": {"ghost region MSE": ghosts["char_on_structure_mse"],
                                                         "reference MSE": ghosts["char_off_structure_mse"], "ratio": ghosts["character_ghost_ratio"]},
    }
    return format_table("Ghosts (background render: inside / outside the character mask; character render: "
                        "on / off the true background's diamonds, outside the mask)", rows, ["ghost region MSE", "reference MSE", "ratio"])


def tz_table(res: Mapping[str, Any], paper: float | None = None) -> str:
    """§4.6 numbers as a printed table: uniform and variance-weighted r², per-output r², angle and translation-norm r²."""
    from utils.report import format_table

    rows = {"r2 T_X -> T_Z (uniform mean, sklearn)": {"value": res["r2_tx_to_tz"], "paper": paper},
            "r2 T_X -> T_Z (variance-weighted)": {"value": res["r2_tx_to_tz_variance_weighted"], "paper": None}}
    for name, value in zip(("a11", "a12", "t_x", "a21", "a22", "t_y"), res["r2_tx_to_tz_per_output"]):
        rows[f"  r2 of T_Z {name}"] = {"value": value, "paper": None}
    rows["r2 rotation angle (SVD)"] = {"value": res["r2_angle"], "paper": None}
    rows["r2 translation norm"] = {"value": res["r2_translation_norm"], "paper": None}
    where = f", digit {res['digit_label']}, {res['pairs']} pairs" if "digit_label" in res else ""
    return format_table(f"T_Z analysis (§4.6){where}", rows, ["value", "paper"])


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
                                        scene.remove_background(x_b1, canvas_color=canvas_color).float().cpu(), on_b[:1], clip_b["masks"][:1]))
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
        values = _concat(chunks)
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
        ghost_values = _concat(ghosts)
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


# ============================================================================ §4.6 T_Z analysis
def nearest_rotation_angle(theta: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) of the rotation ``R = U V^T`` nearest to each 2x2 linear part (SVD, §4.6);
    for a reflection (``det < 0``) the nearest proper rotation (last singular vector flipped)."""
    lin = theta[..., :2, :2].double()
    u, _, vh = torch.linalg.svd(lin)
    d = torch.sign(torch.linalg.det(u @ vh))
    u = torch.cat([u[..., :1], u[..., 1:] * d[..., None, None]], dim=-1)
    r = u @ vh
    return torch.rad2deg(torch.atan2(r[..., 1, 0], r[..., 0, 0]))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation (NaN when either input is constant)."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def linear_regression_r2(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Least squares ``y ≈ [x, 1] W`` (numpy ``lstsq``) and its r² as sklearn's
    ``LinearRegression().score`` computes it: per output ``1 - SS_res / SS_tot``, averaged
    uniformly over outputs; also the variance-weighted average. One departure from sklearn: an
    output that does not vary (``SS_tot = 0``) scores 0, not sklearn's 1, so that a constant
    ``T_Z`` (e.g. stuck at the identity) gives r² = 0 rather than a perfect score."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    ss_res = (resid**2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    varies = ss_tot > 1e-12 * len(y)
    per_output = np.where(varies, 1.0 - ss_res / np.where(varies, ss_tot, 1.0), 0.0)
    weighted = 1.0 - ss_res.sum() / ss_tot.sum() if varies.any() else 0.0
    return {"r2": float(per_output.mean()), "r2_variance_weighted": float(weighted), "r2_per_output": per_output.tolist(),
            "coefficients": coef.tolist()}


def tz_statistics(tx: torch.Tensor, tz: torch.Tensor, image_size: float = 64.0) -> dict[str, Any]:
    """The §4.6 numbers of ground-truth ``tx`` and learned ``tz`` (``n 2 3`` each): r² of the 6-d linear
    regression ``T_X -> T_Z`` (uniform mean as sklearn, variance-weighted and per output), SVD
    nearest-rotation angle fit, translation norms and Fig. 11 statistics. Returns
    ``{"results": numbers, "arrays": per-pair arrays}``."""
    tx, tz = tx.double(), tz.double()
    angle_x = torch.rad2deg(torch.atan2(tx[:, 1, 0], tx[:, 0, 0]))
    angle_z = nearest_rotation_angle(tz)
    half = float(image_size) / 2.0
    arrays = {
        "theta_x": tx.numpy(), "theta_z": tz.numpy(),
        "angle_x": angle_x.numpy(), "angle_z": angle_z.numpy(),
        "translation_norm_x": tx[:, :, 2].norm(dim=1).numpy(), "translation_norm_z": tz[:, :, 2].norm(dim=1).numpy(),
        "translation_norm_x_px": (tx[:, :, 2] * half).norm(dim=1).numpy(),
        "largest_singular_value_x": torch.linalg.svdvals(tx[:, :2, :2])[:, 0].numpy(),
        "largest_singular_value_z": torch.linalg.svdvals(tz[:, :2, :2])[:, 0].numpy(),
        "top_left_x": tx[:, 0, 0].numpy(), "top_left_z": tz[:, 0, 0].numpy(),
    }
    regression = linear_regression_r2(arrays["theta_x"], arrays["theta_z"])
    angle_fit = linear_regression_r2(arrays["angle_x"], arrays["angle_z"])
    norm_fit = linear_regression_r2(arrays["translation_norm_x"], arrays["translation_norm_z"])
    results = {
        "r2_tx_to_tz": regression["r2"], "r2_tx_to_tz_variance_weighted": regression["r2_variance_weighted"],
        "r2_tx_to_tz_per_output": regression["r2_per_output"],
        "r2_angle": angle_fit["r2"], "angle_slope": angle_fit["coefficients"][0][0], "angle_intercept": angle_fit["coefficients"][1][0],
        "pearson_angle": pearson(arrays["angle_x"], arrays["angle_z"]),
        "r2_translation_norm": norm_fit["r2"],
        "pearson_translation_norm": pearson(arrays["translation_norm_x"], arrays["translation_norm_z"]),
        "angle_x": summarize(arrays["angle_x"]), "angle_z": summarize(arrays["angle_z"]),
        "translation_norm_x": summarize(arrays["translation_norm_x"]), "translation_norm_x_px": summarize(arrays["translation_norm_x_px"]),
        "translation_norm_z": summarize(arrays["translation_norm_z"]),
        "largest_singular_value_z": summarize(arrays["largest_singular_value_z"]), "top_left_z": summarize(arrays["top_left_z"]),
        "paper_r2": {"5": 0.992, "8": 0.993},
    }
    return {"results": results, "arrays": arrays}


@eval_mode.first_argument
def tz_analysis(
    scene: EquivariantScene,
    source,
    digit_index: int,
    background_index: int = 0,
    pairs: int = 40_000,
    chunk: int = 1000,
    seed: int = 0,
    split: str = "test",
    device: torch.device | str = "cpu",
    assets_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """§4.6 on ``pairs`` frame pairs of one digit instance on one background (``source.tz_analysis_pairs``).

    For each pair ``(x_i, x_j)``: ``T_Z = T_Z(fc(x_i), fc(x_j))`` and ground-truth ``T_X``.
    Returns ``{"results": numbers, "arrays": per-pair arrays}`` with ``angle_x`` (atan of
    ``T_X``'s first column, degrees), ``angle_z`` (SVD nearest rotation of ``T_Z``),
    ``translation_norm_x/z`` (norm of the third column, normalised coordinates; ``T_X`` also
    in px), the largest singular values and top-left entries (Fig. 11), and r² of linear
    regressions ``T_X -> T_Z`` (6-d, as in the paper) and ``angle_x -> angle_z``.
    """
    device = torch.device(device)
    theta_x, theta_z, label = [], [], None
    bar = counter(pairs, "T_Z analysis pairs", progress)
    for start in range(0, pairs, chunk):
        size = min(chunk, pairs - start)
        batch = source.tz_analysis_pairs(size, digit_index, background_index, seed=seed, start=start, split=split, assets_root=assets_root)
        with torch.inference_mode():
            z_i = scene.encode_character(batch["x_i"].to(device))
            z_j = scene.encode_character(batch["x_j"].to(device))
            theta_z.append(scene.transform(z_i, z_j).double().cpu())
        theta_x.append(batch["theta"].double())
        label = int(batch["digit_label"])
        if bar is not None:
            bar.update(size)
    if bar is not None:
        bar.close()
    stats = tz_statistics(torch.cat(theta_x), torch.cat(theta_z), float(getattr(source, "image_size", 64)))
    results = {
        "digit_index": int(digit_index), "digit_label": label, "background_index": int(background_index), "pairs": int(pairs),
        "split": split, "seed": int(seed), **stats["results"],
    }
    arrays = stats["arrays"]
    return {"results": results, "arrays": arrays}


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

