"""Experiment tooling: image grids, logging that works offline, CI-readable progress, metric files.

YAML class paths: ``callbacks.SwapGrid``, ``callbacks.AnalogyGrid``, ``callbacks.GenerationGrid``,
``callbacks.ProgressBar``, ``callbacks.MetricsJSON``, ``callbacks.StepSeed``,
``callbacks.LastCheckpointAtEnd``, ``callbacks.PredictionWriter`` (``trainer.callbacks``) and
``callbacks.WandbLogger`` (``trainer.logger``).
"""

from callbacks.image_grids import AnalogyGrid, GenerationGrid, ImageGridCallback, SwapGrid
from callbacks.logging import MetricsJSON, ProgressBar, WandbLogger
from callbacks.prediction_writer import PredictionWriter
from callbacks.resume import LastCheckpointAtEnd, StepSeed

__all__ = ["AnalogyGrid", "GenerationGrid", "ImageGridCallback", "LastCheckpointAtEnd", "MetricsJSON", "PredictionWriter", "ProgressBar", "StepSeed", "SwapGrid", "WandbLogger"]
