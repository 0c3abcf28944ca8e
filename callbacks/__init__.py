"""Experiment tooling: image grids, logging that works offline, CI-readable progress, metric files.

YAML class paths: ``callbacks.SwapGrid``, ``callbacks.AnalogyGrid``, ``callbacks.GenerationGrid``,
``callbacks.ProgressBar``, ``callbacks.MetricsJSON``, ``callbacks.StepSeed`` (``trainer.callbacks``) and
``callbacks.WandbLogger`` (``trainer.logger``).
"""

from callbacks.image_grids import AnalogyGrid, GenerationGrid, ImageGridCallback, SwapGrid
from callbacks.logging import MetricsJSON, ProgressBar, WandbLogger
from callbacks.resume import StepSeed

__all__ = ["AnalogyGrid", "GenerationGrid", "ImageGridCallback", "MetricsJSON", "ProgressBar", "StepSeed", "SwapGrid", "WandbLogger"]
