"""§4.6 of paper 000: the learned ``T_Z`` against the ground-truth ``T_X`` on pairs of one digit on
one background: SVD nearest-rotation angle, translation norms, linear-regression r² from ``T_X``
to ``T_Z`` (paper: 0.992 / 0.993). The command is ``python -m lightning_modules.tz_analysis``."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import torch

from backbone.scene import EquivariantScene
from lightning_modules.evaluation.scene_metrics import summarize
from utils.progress import counter
from utils.torch_utils import eval_mode


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
