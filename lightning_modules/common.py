"""``CheckpointGuardMixin``: the model tag on every LightningModule's checkpoints.

The general helpers that lived here are in ``utils/`` (``utils.checkpoints``, ``utils.io``,
``utils.report``, ``utils.trainer``, ``utils.progress``, ``utils.errors``).
"""

from __future__ import annotations

from typing import Any

from utils.checkpoints import MODEL_TAG_KEY, check_checkpoint_model


class CheckpointGuardMixin:
    """Tags checkpoints with the model class and refuses to load another model's checkpoint.

    ``on_load_checkpoint`` runs before the state dict is loaded, so a checkpoint of the other
    model gets one clear message instead of a list of missing keys.
    """

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[MODEL_TAG_KEY] = type(self).__name__

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_checkpoint_model(checkpoint, type(self).__name__)
