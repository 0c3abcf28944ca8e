"""``EquivariantSceneModule``: training and evaluation of equivariant scene synthesis (paper 000).

The maths lives in ``backbone.scene.EquivariantScene`` (``self.scene``); this module trains it
on ``PairFramesDataModule`` batches with eq. 4, ``L_scene + α_equiv L_equiv + α_inv L_inv``,
and runs the paper's evaluation protocols in the test stage (``lightning_modules.evaluation.scene_report``):

* Moving MNIST (``datamodules.MovingMNIST``): Fig. 3 (Transformation / Background
  manipulations vs the Video-frames / No-object baselines, ``fig3_examples`` test examples)
  and, with one digit per clip, a short §4.6 ``T_Z`` analysis (``tz_pairs`` pairs; the full
  one is ``python -m lightning_modules.tz_analysis``).
* Sprites (``datamodules.ReedSprites``, ``datamodules.SpritesOnBackgrounds``): analogy MSE per
  animation; with backgrounds split into background-only / character-only and on a gray
  canvas ('Ours-BG').

Results: a printed table, ``<log_dir>/<name>.json`` (``utils.report.write_results``), the
per-example values for box plots in ``<log_dir>/<name>_per_example.npz`` and grids of the
manipulations as PNG.

Usage from Python (the manipulations are methods of ``module.scene``)::

    module = EquivariantSceneModule.load_from_checkpoint("last.ckpt")
    out = module.scene.swap_background(x_char, x_t2, x_bg)   # b 3 h w in [0, 1]
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from pytorch_lightning.utilities import rank_zero_info
from torchmetrics import MeanSquaredError, MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from backbone.scene import EquivariantScene
from lightning_modules import prediction
from lightning_modules.base import SceneMotionModule
from lightning_modules.evaluation.scene_report import run_evaluation
from utils.trainer import run_dir


class EquivariantSceneModule(SceneMotionModule):
    """Equivariant scene synthesis (paper 000): ``fc``, ``fb``, ``g``, ``T_Z`` trained on frame pairs.

    Args:
        image_size: frame side the model is built for (must match the data; a multiple of
            ``2**(len(channels) - 1)``).
        channels, feature_channels, blocks_per_stage, tz_channels, tz_hidden, norm: widths of
            ``backbone.scene.EquivariantScene`` (paper scale and CPU scale come from the same classes).
        zero_init_character: start ``fc``'s last layer at zero so the background is learned by
            ``fb`` (``backbone.scene`` docstring).
        tz_keypoints: soft-argmax keypoints per feature map in ``T_Z`` (``backbone.scene.TransformNet``).
        tz_head: what ``T_Z``'s output layer predicts: ``'affine'`` (six free entries, the paper) or
            ``'pivot'`` (angle / scales / shear / translation about the character's centroid, with a
            keypoint Procrustes rotation feature; ``backbone.scene.TransformNet``) or ``'rigid'``
            (the pivot head with scale, aspect and shear held at zero).
        alpha_equiv, alpha_inv: the weights α of eq. 4.
        lr, betas, weight_decay: Adam.
        use_ground_truth_transform: the ``T_Z := T_X`` ablation (Fig. 18): apply the batch's
            ground-truth affine ``T_X`` instead of the learned ``T_Z`` (needs a dataset with poses
            and one character, i.e. ``MovingMNIST`` with ``num_digits: 1``).
        transform_noise, transform_noise_steps: a training aid, not in the paper (0 = off): Gaussian
            noise of this standard deviation (normalised units, resolution independent) on the six
            entries of ``T_Z`` in the training losses, decaying linearly to 0 over
            ``transform_noise_steps`` optimizer steps (constant if 0). Static content carried by
            ``fc`` then costs loss, so the background settles in ``fb`` early and ``T_Z`` learns the
            motion sooner (a 1000-step Moving MNIST probe at 32x32: L_scene 0.0055 with 0.1 over 500
            steps and alpha_equiv 0.1, 0.0067 without noise and alpha_equiv 1).
            Never applied in validation, test or the manipulations.
        channels_last: run convolutions in channels-last memory format (faster on CPUs).
        fig3_examples / fig3_chunk: Moving MNIST Fig. 3 evaluation size (paper: 10,000) and chunk.
        tz_pairs / tz_digit: pairs and digit class of the test-stage §4.6 analysis (0 = skip).
        analogy_clips: sprite analogy clips evaluated (``None`` = every test clip).
        canvas_color: the plain canvas of background removal ('Ours-BG' uses gray).
        eval_seed: seed of the evaluation protocols.
        evaluate: run the protocols in the test stage (the loss/metrics on test pairs always run).
        cpu_alternative: set by paper-scale (GPU) configs: the CPU config to suggest when this
            one is started without a GPU (one warning, rank zero).
        predict: what ``cli.py predict`` produces (``lightning_modules.prediction.PredictOptions``:
            ``tasks`` of swap_background / transfer_animation / swap_background_and_animation /
            remove_background, ``canvas_color``); not saved in checkpoints.
    """

    def __init__(
        self,
        image_size: int = 64,
        channels: Sequence[int] = (32, 64, 128),
        feature_channels: int = 64,
        blocks_per_stage: int = 1,
        tz_channels: Sequence[int] = (64, 64),
        tz_hidden: int = 128,
        norm: str = "batch",
        zero_init_character: bool = True,
        tz_keypoints: int = 16,
        tz_head: str = "affine",
        alpha_equiv: float = 1.0,
        alpha_inv: float = 1.0,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        use_ground_truth_transform: bool = False,
        transform_noise: float = 0.0,
        transform_noise_steps: int = 0,
        channels_last: bool = False,
        fig3_examples: int = 10_000,
        fig3_chunk: int = 500,
        tz_pairs: int = 4000,
        tz_digit: int = 5,
        analogy_clips: int | None = None,
        canvas_color: Sequence[float] = (0.5, 0.5, 0.5),
        eval_seed: int = 0,
        evaluate: bool = True,
        cpu_alternative: str | None = None,
        predict: dict | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("alpha_equiv", alpha_equiv), ("alpha_inv", alpha_inv)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (a weight of eq. 4), got {value}.")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}.")
        if transform_noise < 0 or transform_noise_steps < 0:
            raise ValueError(f"transform_noise and transform_noise_steps must be >= 0, got {transform_noise} and {transform_noise_steps}.")
        if fig3_examples < 1 or fig3_chunk < 1 or tz_pairs < 0:
            raise ValueError(f"fig3_examples and fig3_chunk must be >= 1 and tz_pairs >= 0, got {fig3_examples}, {fig3_chunk}, {tz_pairs}.")
        self.save_hyperparameters(ignore=["predict"])
        self.predict_options = prediction.PredictOptions.parse(predict, "equivariant")
        self.scene = EquivariantScene(image_size, channels, feature_channels, blocks_per_stage, tz_channels, tz_hidden, norm,
                                      zero_init_character, tz_keypoints, tz_head)
        self.scene = self.use_channels_last(self.scene, channels_last)
        if use_ground_truth_transform:  # T_Z is replaced by T_X: keep its (identity) weights out of training / DDP
            self.scene.tz.requires_grad_(False)
        metrics = MetricCollection({
            "mse": MeanSquaredError(),
            "psnr": PeakSignalNoiseRatio(data_range=1.0),
            "ssim": StructuralSimilarityIndexMeasure(data_range=1.0),
        })
        self.metrics = torch.nn.ModuleDict({stage: metrics.clone(prefix=f"{stage}/") for stage in ("val", "test")})

    # ------------------------------------------------------------------ checks
    ARCHITECTURE_KEYS = ("image_size", "channels", "feature_channels", "blocks_per_stage", "tz_channels", "tz_hidden", "norm", "tz_keypoints", "tz_head")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse another model's checkpoint (``SceneMotionModule``) and one of other widths, clearly."""
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("hyper_parameters", {})
        diffs = []
        for key in self.ARCHITECTURE_KEYS:
            if key in saved:
                a, b = saved[key], self.hparams[key]
                if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
                    diffs.append(f"{key}: checkpoint {a!r} vs config {b!r}")
        if diffs:
            raise ValueError(
                "This checkpoint was trained with a different EquivariantSceneModule architecture (" + "; ".join(diffs)
                + "). Use the config the checkpoint was trained with (its run folder has config.yaml) or set these model.init_args."
            )

    def setup(self, stage: str) -> None:
        dm = self.datamodule
        self.check_image_size(
            self.hparams.image_size,
            "The data has {size}x{size} frames but the model is built for image_size={image_size}: "
            f"set model.init_args.image_size: {{size}} (a multiple of {self.scene.downsample}) or the data's image_size."
        )
        if self.hparams.use_ground_truth_transform and dm is not None and hasattr(dm, "datasets"):
            for split, dataset in dm.datasets.items():
                if not getattr(dataset, "has_poses", False):
                    raise ValueError(
                        f"use_ground_truth_transform (the T_Z := T_X ablation) needs ground-truth poses, but the {split} split of "
                        f"{type(dataset).__name__} has none: use datamodules.MovingMNIST (num_digits: 1) or set it to false."
                    )
        self.warn_gpu_scale(
            bool(self.hparams.cpu_alternative) and not torch.cuda.is_available(),
            f"This is a paper-scale (GPU) configuration and no GPU is available: training on the CPU will be very slow. "
            f"For a CPU-scale model use {self.hparams.cpu_alternative}.",
        )

    # ------------------------------------------------------------------ training
    def forward(self, x_c: torch.Tensor, x_t1: torch.Tensor, x_t2: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        """``h(x_c, x_t1, x_t2, x_b)`` (§3)."""
        return self.scene.h(x_c, x_t1, x_t2, x_b)

    def _ground_truth_theta(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "T_X" not in batch:
            raise ValueError(
                "use_ground_truth_transform (the T_Z := T_X ablation) needs the batch key 'T_X' (ground-truth poses): "
                "use datamodules.MovingMNIST with PairFramesDataModule, or set use_ground_truth_transform: false."
            )
        t_x = batch["T_X"]
        if t_x.shape[1] != 1:
            raise ValueError(
                f"use_ground_truth_transform needs one character per clip (T_X is {tuple(t_x.shape)}: {t_x.shape[1]} characters); "
                f"set data.init_args.source.init_args.num_digits: 1."
            )
        return t_x[:, 0]

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        for key in ("x1", "x2"):
            if key not in batch:
                raise ValueError(f"EquivariantSceneModule needs frame pairs (batch keys 'x1', 'x2'; use datamodules.PairFramesDataModule), got keys {sorted(batch)}.")
        x1, x2 = batch["x1"], batch["x2"]
        if self.hparams.channels_last:
            x1, x2 = x1.contiguous(memory_format=torch.channels_last), x2.contiguous(memory_format=torch.channels_last)
        return x1, x2

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """Eq. 4 on a batch of pairs; logs ``{stage}/loss``, ``/scene``, ``/equiv``, ``/inv`` (+ metrics in val/test)."""
        x1, x2 = self._inputs(batch)
        theta = self._ground_truth_theta(batch) if self.hparams.use_ground_truth_transform else None
        noise = self.current_transform_noise() if stage == "train" else 0.0
        out = self.scene.losses(x1, x2, theta, noise)
        loss = out.scene + self.hparams.alpha_equiv * out.equiv + self.hparams.alpha_inv * out.inv
        on_step = stage == "train"
        logs = {f"{stage}/loss": loss, f"{stage}/scene": out.scene, f"{stage}/equiv": out.equiv, f"{stage}/inv": out.inv}
        if stage == "train":  # training curves: feature scales and T_Z's distance from the identity (a collapse shows here)
            logs.update({f"train/{k}": v for k, v in out.diagnostics().items()})
        if stage == "train" and self.hparams.transform_noise > 0:
            logs["train/transform_noise"] = torch.tensor(noise)
        self.log_dict(logs, on_step=on_step, on_epoch=not on_step, prog_bar=False, batch_size=x1.shape[0], sync_dist=not on_step)
        self.log(f"{stage}/scene_mse", out.scene, prog_bar=True, on_step=on_step, on_epoch=not on_step, batch_size=x1.shape[0], sync_dist=not on_step)
        if stage in self.metrics:
            self.metrics[stage].update(out.reconstruction.detach().float().clamp(0, 1).contiguous(), x2.float().contiguous())
            self.log_dict(self.metrics[stage], on_step=False, on_epoch=True, batch_size=x1.shape[0])
        return loss

    def current_transform_noise(self) -> float:
        """The training-aid noise level at the current step (linear decay; see ``transform_noise``)."""
        sigma, steps = self.hparams.transform_noise, self.hparams.transform_noise_steps
        if sigma <= 0 or self.hparams.use_ground_truth_transform:
            return 0.0
        if steps <= 0:
            return float(sigma)
        step = self.trainer.global_step if self._trainer is not None else 0
        return float(sigma) * max(0.0, 1.0 - step / steps)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        """``cli.py predict``: background swap, animation transfer, both, background removal (``lightning_modules.prediction``)."""
        return prediction.scene_predict(self.scene, batch, batch_idx, self.predict_options, self.hparams.canvas_color)

    def optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams.lr, betas=tuple(self.hparams.betas), weight_decay=self.hparams.weight_decay)

    # ------------------------------------------------------------------ evaluation protocols
    def on_test_epoch_end(self) -> None:
        if not self.hparams.evaluate or not self.trainer.is_global_zero:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "source"):
            rank_zero_info("EquivariantSceneModule: no clip DataModule, skipping the paper's evaluation protocols.")
            return
        out_dir = run_dir(self.trainer)
        results = run_evaluation(self, dm, out_dir, progress=bool(getattr(self.trainer, "progress_bar_callback", None)))
        for name, value in results.get("scalars", {}).items():
            self.log(f"test/{name}", value, rank_zero_only=True)
