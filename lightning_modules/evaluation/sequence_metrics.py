"""torchmetrics ``Metric``s for scoring generated clips with a frozen judge (paper 004, Table 2).

Every state is a sum registered with ``add_state(..., dist_reduce_fx="sum")``, so the scores
are computed exactly over all ranks' samples under DDP (no averaging of per-rank averages).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


class ClassifierScores(Metric):
    """Accuracy, Inception Score, ``H(y|x)`` and ``H(y)`` of a classifier's predictions.

    ``update(probs (n, C), target (n,) | None)``; ``compute()`` returns a dict with

    * ``accuracy``: fraction of ``argmax p(y|x) == target`` (NaN without targets);
    * ``entropy_conditional`` ``H(y|x) = E_x[-Σ_y p(y|x) log p(y|x)]`` (low: confident);
    * ``entropy_marginal`` ``H(y) = -Σ_y p(y) log p(y)`` with ``p(y) = E_x p(y|x)`` (high: diverse);
    * ``inception_score`` ``IS = exp(E_x KL(p(y|x) || p(y))) = exp(H(y) - H(y|x))``.

    IS is computed once over all samples (not averaged over splits).
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, num_classes: int, eps: float = 1e-12, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        self.num_classes, self.eps = num_classes, eps
        self.add_state("prob_sum", torch.zeros(num_classes), dist_reduce_fx="sum")
        self.add_state("entropy_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("correct", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("labelled", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor | None = None) -> None:
        if probs.dim() != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(f"probs must be (n, {self.num_classes}) class probabilities, got {tuple(probs.shape)}.")
        probs = probs.detach().float()
        self.prob_sum += probs.sum(0)
        self.entropy_sum += -(probs * probs.clamp_min(self.eps).log()).sum()
        self.total += probs.shape[0]
        if target is not None:
            self.correct += (probs.argmax(1) == target).sum()
            self.labelled += target.numel()

    def compute(self) -> dict[str, Tensor]:
        total = self.total.clamp_min(1)
        marginal = self.prob_sum / total
        h_cond = self.entropy_sum / total
        h_marg = -(marginal * marginal.clamp_min(self.eps).log()).sum()
        acc = self.correct / self.labelled if self.labelled > 0 else torch.tensor(math.nan, device=self.total.device)
        return {
            "accuracy": acc,
            "inception_score": (h_marg - h_cond).exp(),
            "entropy_conditional": h_cond,
            "entropy_marginal": h_marg,
        }


class MultiHeadAccuracy(Metric):
    """Accuracy of each of several classification heads (e.g. the 4 sprite attributes).

    ``update(logits_or_probs: list of (n, C_i), target (n, heads))``; ``compute()`` -> ``(heads,)``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_heads: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.add_state("correct", torch.zeros(num_heads), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, scores: list[Tensor], target: Tensor) -> None:
        if len(scores) != self.num_heads or target.shape[-1] != self.num_heads:
            raise ValueError(f"expected {self.num_heads} heads and targets (n, {self.num_heads}), got {len(scores)} and {tuple(target.shape)}.")
        hits = torch.stack([(s.argmax(1) == target[:, i]) for i, s in enumerate(scores)], 1)
        self.correct += hits.sum(0)
        self.total += target.shape[0]

    def compute(self) -> Tensor:
        return self.correct / self.total.clamp_min(1)


class MeanStd(Metric):
    """Mean and (population) standard deviation of a stream of scalars (e.g. per-clip SSIM)."""

    full_state_update = False
    higher_is_better = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_sq", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        v = values.detach().reshape(-1).to(torch.float64)
        self.sum += v.sum()
        self.sum_sq += v.square().sum()
        self.count += v.numel()

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp_min(1)
        mean = self.sum / n
        var = (self.sum_sq / n - mean.square()).clamp_min(0)
        return {"mean": mean.float(), "std": var.sqrt().float()}


# --------------------------------------------------------------------------- fast SSIM
def _reflect_blur_matrix(size: int, kernel_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(size, size)`` matrix of a 1-D Gaussian blur with reflect padding (``F.pad(mode="reflect")``)."""
    pad = kernel_size // 2
    dist = torch.arange(kernel_size, dtype=torch.float64) - pad
    g = torch.exp(-0.5 * (dist / sigma) ** 2)
    g = g / g.sum()
    out = torch.arange(size)[:, None].expand(size, kernel_size)
    src = out + torch.arange(kernel_size)[None] - pad
    src = torch.where(src < 0, -src, src)
    src = torch.where(src >= size, 2 * (size - 1) - src, src)
    A = torch.zeros(size, size, dtype=torch.float64)
    A.index_put_((out.reshape(-1), src.reshape(-1)), g.repeat(size), accumulate=True)
    return A.to(dtype=dtype, device=device)


def ssim_per_image(
    preds: Tensor, target: Tensor, data_range: float = 1.0, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03
) -> Tensor:
    """SSIM of each image ``(n, c, h, w) -> (n,)``: torchmetrics' ``structural_similarity_index_measure``
    (Gaussian window σ = 1.5, 11 taps, reflect padding, mean over all pixels, ``reduction="none"``)
    computed with the separable window as two small matrix products instead of an 11x11 depthwise
    convolution (~50x faster on a CPU; ``tests/test_hamiltonian_module.py`` checks the two agree).
    """
    if preds.shape != target.shape or preds.dim() != 4:
        raise ValueError(f"preds and target must both be (n, c, h, w), got {tuple(preds.shape)} and {tuple(target.shape)}.")
    preds, target = preds.float(), target.float()
    k = int(3.5 * sigma + 0.5) * 2 + 1
    pad = k // 2
    h, w = preds.shape[-2:]
    if h <= 2 * pad or w <= 2 * pad:
        raise ValueError(f"images of {h}x{w} are too small for an {k}x{k} SSIM window.")
    Ah = _reflect_blur_matrix(h, k, sigma, preds.dtype, preds.device)
    Aw = _reflect_blur_matrix(w, k, sigma, preds.dtype, preds.device)
    stack = torch.stack([preds, target, preds * preds, target * target, preds * target])  # (5, n, c, h, w)
    mu_p, mu_t, e_pp, e_tt, e_pt = Ah @ stack @ Aw.T
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    var_p = (e_pp - mu_p.square()).clamp_min(0)
    var_t = (e_tt - mu_t.square()).clamp_min(0)
    cov = e_pt - mu_p * mu_t
    ssim = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p.square() + mu_t.square() + c1) * (var_p + var_t + c2))
    return ssim.mean((1, 2, 3))
