"""Experiment tooling: image grids, logging that works offline, CI-readable progress, metric files.

YAML class paths: ``callbacks.SwapGrid``, ``callbacks.AnalogyGrid``, ``callbacks.GenerationGrid``,
``callbacks.ProgressBar``, ``callbacks.MetricsJSON`` (``trainer.callbacks``) and
``callbacks.WandbLogger`` (``trainer.logger``).
"""

from callbacks.image_grids import AnalogyGrid, GenerationGrid, ImageGridCallback, SwapGrid
from callbacks.logging import MetricsJSON, ProgressBar, WandbLogger

__all__ = ["AnalogyGrid", "GenerationGrid", "ImageGridCallback", "MetricsJSON", "ProgressBar", "SwapGrid", "WandbLogger"]
