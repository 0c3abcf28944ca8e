"""Per-example image metrics of the scene evaluations (paper 000), and their summaries.

MSE scales (see ``lightning_modules.evaluation.scene``): ``mse`` on [0, 1], ``mse_255`` on 0-255,
``sse`` summed over the image. SSIM and PSNR (data range 1) come from ``torchmetrics.functional``.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

GRAY = (0.5, 0.5, 0.5)


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
                  character_target: torch.Tensor, mask: torch.Tensor, frame: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-example ghosts of one component in the render of the other (``b`` each; issue 13).

    * ``background_render`` (``g(fb(x))``) against the ``true_background``: MSE inside the character
      ``mask`` (``bg_inside``: a ghost of the character shows here) and outside (``bg_outside``).
    * ``character_render`` (the background removed: ``fb`` fed a plain canvas) against
      ``character_target`` (the character on that canvas), outside the mask: on the true
      background's diamonds (``char_on_structure``: a ghost of the background shows here) and on
      its base colour (``char_off_structure``).
    * ``bg_ghost_strength`` (with the input ``frame``): how much of the character the background
      render holds inside the mask, the least-squares ``a`` in ``render - background ≈ a (frame -
      background)`` there. 0 when the error under the character is unrelated to it (inpainting the
      hidden background), 1 when the render copies the character. The MSE ratio cannot tell these apart.

    The ghost ratios are ``bg_inside / bg_outside`` and ``char_on_structure / char_off_structure``
    of the means (``ghost_ratios``): about 1 without a ghost, large with one.
    """
    mask = mask.float()
    outside = 1.0 - mask
    structure = structure_mask(true_background)
    strength = torch.full((mask.shape[0],), float("nan"))
    if frame is not None:
        residual, character = background_render.float() - true_background.float(), frame.float() - true_background.float()
        weight = mask.expand_as(character)
        energy = (character.square() * weight).flatten(1).sum(1)
        strength = torch.where(energy > 0, (residual * character * weight).flatten(1).sum(1) / energy.clamp_min(1e-12), strength)
    return {
        "bg_ghost_strength": strength,
        "bg_inside": per_example_mse(background_render, true_background, mask),
        "bg_outside": per_example_mse(background_render, true_background, outside),
        "char_on_structure": per_example_mse(character_render, character_target, outside * structure),
        "char_off_structure": per_example_mse(character_render, character_target, outside * (1.0 - structure)),
    }


def ghost_ratios(values: Mapping[str, np.ndarray]) -> dict[str, float]:
    """``background_ghost_ratio``, ``character_ghost_ratio`` and the mean ``background_ghost_strength``
    from ``ghost_metrics`` arrays (NaNs dropped)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN strength (no frame given) is NaN
        mean = {k: float(np.nanmean(np.asarray(v, dtype=np.float64))) for k, v in values.items()}
    strength = mean.pop("bg_ghost_strength", float("nan"))
    ratio = lambda a, b: mean[a] / mean[b] if mean[b] > 0 else float("inf") if mean[a] > 0 else 1.0  # noqa: E731
    return {**{f"{k}_mse": v for k, v in mean.items()},
            "background_ghost_ratio": ratio("bg_inside", "bg_outside"),
            "character_ghost_ratio": ratio("char_on_structure", "char_off_structure"),
            "background_ghost_strength": strength}


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


def concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    return {k: torch.cat([p[k] for p in parts]).cpu().numpy() for k in parts[0]}
