"""Layers shared by the networks of ``backbone``."""

from __future__ import annotations

from torch import nn

NORMS = ("batch", "group", "none")


def norm_layer(kind: str | bool, channels: int, dims: int = 2) -> nn.Module:
    """A normalisation of ``channels`` features: ``"batch"`` (``BatchNorm1d`` / ``2d`` by ``dims``),
    ``"group"`` (8 groups at most; ``dims=2``), ``"none"``; ``True`` / ``False`` mean ``"batch"`` / ``"none"``."""
    kind = {True: "batch", False: "none"}.get(kind, kind) if isinstance(kind, bool) else kind
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    if kind == "group" and dims == 2:
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"Unknown norm {kind!r}; expected 'batch', 'group' or 'none'.")
