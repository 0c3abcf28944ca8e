"""The judge classifier that scores generated clips (paper 004 §4.1, Table 2; DSVAE/S3VAE protocol).

A per-frame CNN, a bidirectional LSTM over the frame features, and linear heads on the
time-averaged LSTM output: one for the action-view class (sprites: 9 = 3 actions x 3 views)
and one per appearance attribute (sprites: skin, pants, top, hair; 6 values each).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class SequenceJudge(nn.Module):
    """Frame CNN + BiLSTM with a class head and one head per attribute.

    Args:
        num_classes: classes of the main head (action-view label).
        attribute_cardinalities: number of values of each attribute head.
        image_size: side the frames are resized to before the CNN (``None``: as given).
        channels: output channels of the stride-2 3x3 conv layers (BN + LReLU after each).
        feature_dim: per-frame feature size (after global average pooling + Linear).
        hidden: LSTM hidden size per direction.
    ``forward(clip (b, t, 3, H, W)) -> {"label": (b, C), "attributes": [(b, C_i), ...]}`` (logits).
    """

    def __init__(
        self,
        num_classes: int = 9,
        attribute_cardinalities: Sequence[int] = (6, 6, 6, 6),
        image_size: int | None = 64,
        in_channels: int = 3,
        channels: Sequence[int] = (32, 64, 128, 256),
        feature_dim: int = 256,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, feature_dim), nn.LeakyReLU(0.2, inplace=True)]
        self.frame_net = nn.Sequential(*layers)
        self.lstm = nn.LSTM(feature_dim, hidden, batch_first=True, bidirectional=True)
        self.label_head = nn.Linear(2 * hidden, num_classes)
        self.attribute_heads = nn.ModuleList(nn.Linear(2 * hidden, c) for c in attribute_cardinalities)

    def forward(self, clip: Tensor) -> dict[str, Tensor | list[Tensor]]:
        if clip.dim() != 5:
            raise ValueError(f"the judge takes clips (b, t, c, h, w), got shape {tuple(clip.shape)}.")
        b = clip.shape[0]
        x = rearrange(clip, "b t c h w -> (b t) c h w")
        if self.image_size is not None and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        feats = rearrange(self.frame_net(x), "(b t) f -> b t f", b=b)
        summary = self.lstm(feats)[0].mean(1)
        return {"label": self.label_head(summary), "attributes": [head(summary) for head in self.attribute_heads]}

    @torch.no_grad()
    def probabilities(self, clip: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """Softmax of every head (``forward``'s keys)."""
        out = self.forward(clip)
        return {"label": out["label"].softmax(-1), "attributes": [a.softmax(-1) for a in out["attributes"]]}
