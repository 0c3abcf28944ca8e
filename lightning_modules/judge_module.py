"""``SequenceJudgeModule``: trains the judge classifier that scores generated clips (paper 004, Table 2).

Trained on real training clips (``ActionSequenceDataModule``), then frozen and loaded by
``HamiltonianMotionModule(judge_checkpoint=...)`` at test time. Heads: the action-view class
(``batch["label"]``, 9 classes on Sprites) and one per attribute (``batch["attributes"]``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from backbone.judge import SequenceJudge
from lightning_modules import prediction
from lightning_modules.base import SceneMotionModule
from lightning_modules.evaluation.sequence_metrics import MultiHeadAccuracy
from utils.checkpoints import load_module_checkpoint

STAGES = ("train", "val", "test")


class SequenceJudgeModule(SceneMotionModule):
    """Frame CNN + BiLSTM classifier of clips (``backbone.judge.SequenceJudge``).

    Args:
        num_classes: classes of the main head; Sprites: ``len(actions) * len(views) = 9``.
        attribute_cardinalities: values per attribute head (Sprites: ``[6, 6, 6, 6]``).
        attribute_names: names of the attribute heads (for logs and result tables).
        target_key: batch key of the main head's target (``label`` = action-view class;
            ``action`` for data without views).
        image_size: frames are resized to this side inside the judge (``None``: as given).
        channels, feature_dim, hidden: widths of the CNN, frame feature and LSTM.
        lr, weight_decay: AdamW settings.
        predict: options of ``cli.py predict`` (``lightning_modules.prediction.PredictOptions``;
            the judge's one task is ``probabilities``); not saved in checkpoints.
    Logs ``{stage}/loss``, ``{stage}/acc`` and ``{stage}/acc_<attribute>``.
    """

    def __init__(
        self,
        num_classes: int = 9,
        attribute_cardinalities: list[int] = [6, 6, 6, 6],
        attribute_names: list[str] = ["skin", "pants", "top", "hair"],
        target_key: str = "label",
        image_size: int | None = 64,
        channels: list[int] = [32, 64, 128, 256],
        feature_dim: int = 256,
        hidden: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        predict: dict | None = None,
    ) -> None:
        super().__init__()
        if len(attribute_names) != len(attribute_cardinalities):
            raise ValueError(
                f"attribute_names {attribute_names} and attribute_cardinalities {attribute_cardinalities} differ in length."
            )
        self.save_hyperparameters(ignore=["predict"])
        self.predict_options = prediction.PredictOptions.parse(predict, "judge")
        self.judge = SequenceJudge(num_classes, attribute_cardinalities, image_size, 3, channels, feature_dim, hidden)
        self.accuracy = nn.ModuleDict({f"{s}_acc": MulticlassAccuracy(num_classes, average="micro") for s in STAGES})
        self.attr_accuracy = nn.ModuleDict({f"{s}_acc": MultiHeadAccuracy(len(attribute_cardinalities)) for s in STAGES})

    # ------------------------------------------------------------------ checks
    def setup(self, stage: str) -> None:
        dm = self.datamodule
        if dm is None or not hasattr(dm, "attribute_cardinalities"):
            return
        hp = self.hparams
        n_classes = len(dm.actions) * max(len(dm.views), 1) if hp.target_key == "label" else len(dm.actions)
        if n_classes != hp.num_classes:
            raise ValueError(
                f"The data has {n_classes} '{hp.target_key}' classes but the judge was built with num_classes="
                f"{hp.num_classes}. Set --model.init_args.num_classes {n_classes}."
            )
        if list(dm.attribute_cardinalities) != list(hp.attribute_cardinalities):
            raise ValueError(
                f"The data's attributes {list(dm.attribute_names)} have cardinalities {list(dm.attribute_cardinalities)}, "
                f"the judge was built with {list(hp.attribute_cardinalities)}. Set --model.init_args.attribute_cardinalities "
                f"and attribute_names to match."
            )

    # ------------------------------------------------------------------ inference
    def forward(self, clip: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """Logits of every head for clips ``(b, t, 3, h, w)`` in [0, 1]."""
        return self.judge(clip)

    @torch.no_grad()
    def probabilities(self, clip: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """Softmax of every head: ``{"label": (b, C), "attributes": [(b, C_i), ...]}``."""
        return self.judge.probabilities(clip)

    # ------------------------------------------------------------------ training
    def _shared_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        hp = self.hparams
        if hp.target_key not in batch:
            raise KeyError(f"The judge needs batch['{hp.target_key}'] (the data has keys {sorted(batch)}); set target_key.")
        out = self.judge(batch["frames"])
        target = batch[hp.target_key]
        loss_label = F.cross_entropy(out["label"], target)
        loss = loss_label
        has_attr = "attributes" in batch and len(hp.attribute_cardinalities) > 0
        if has_attr:
            attrs = batch["attributes"]
            loss = loss + sum(F.cross_entropy(logits, attrs[:, i]) for i, logits in enumerate(out["attributes"]))
        b = target.shape[0]
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step, batch_size=b)
        acc = self.accuracy[f"{stage}_acc"]
        acc(out["label"].detach(), target)
        self.log(f"{stage}/acc", acc, prog_bar=True, on_step=on_step, on_epoch=not on_step, batch_size=b)
        if has_attr:
            attr_acc = self.attr_accuracy[f"{stage}_acc"]
            attr_acc.update([a.detach() for a in out["attributes"]], attrs)
        return loss

    def _log_attributes(self, stage: str) -> None:
        metric = self.attr_accuracy[f"{stage}_acc"]
        if metric.update_count == 0:
            return
        values = metric.compute()
        for name, value in zip(self.hparams.attribute_names, values):
            self.log(f"{stage}/acc_{name}", value)
        metric.reset()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_attributes("train")

    def on_validation_epoch_end(self) -> None:
        self._log_attributes("val")

    def on_test_epoch_end(self) -> None:
        self._log_attributes("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        """``cli.py predict``: class probabilities of every head (``lightning_modules.prediction``)."""
        classes = prediction.class_names(getattr(self.trainer, "datamodule", None), self.hparams.num_classes)
        return prediction.judge_predict(self, batch, batch_idx, classes, self.hparams.attribute_names)

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


def load_judge(path: str, device: torch.device | str = "cpu") -> SequenceJudgeModule:
    """Load a frozen ``SequenceJudgeModule`` (eval mode, no grad) from a checkpoint, with clear errors."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"judge_checkpoint {str(p)!r} does not exist. Train the judge first "
            f"(python cli.py fit --config configs/sprites_judge_cpu.yaml) and pass its checkpoint "
            f"(lightning_logs/version_*/checkpoints/*.ckpt)."
        )
    judge = load_module_checkpoint(
        SequenceJudgeModule, p, device, needs="judge_checkpoint must be a SequenceJudgeModule (judge) checkpoint",
        advice="Pass the judge's checkpoint (python cli.py fit --config configs/sprites_judge_cpu.yaml writes it).",
    )
    judge.eval()
    judge.requires_grad_(False)
    return judge

