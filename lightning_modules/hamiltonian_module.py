"""``HamiltonianMotionModule``: training and evaluation of the Hamiltonian motion model (paper 004).

Training (§3.2–3.3, eq. 11–17): per clip a reference frame ``t ~ U{1..T}``; ``z ~ q(z|x_{1:T})``,
``q_t, p_t`` from their posteriors at ``t``; the state is unrolled forward and backward with
``exp(τ H_k)``; loss ``= -ELBO`` averaged over clips:

    -ELBO = NLL + KL_z + KL_q + KL_p,    NLL = Σ_{t', pixels} (x - x̂)² / (2 α²)   (up to a constant)

The residual is measured in the paper's pixel units: its images (Tanh decoder) live in [-1, 1],
ours in [0, 1], so ``x - x̂`` is doubled before dividing by ``α`` (default ``α = 1``, §3.1).
KLs are analytic (``DiagonalGaussian.kl_standard_normal``) and only the active action's
``d``-dim position / momentum blocks at the reference frame enter (eq. 17, 25).

Evaluation (val generation scores, the ``test`` protocols of Tables 1 and 2, the published
numbers and the report) is ``lightning_modules.evaluation.motion.MotionEvaluation``'s.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbone.motion_vae import MotionVAE
from lightning_modules import prediction
from lightning_modules.base import SceneMotionModule, check_lr_schedule
from lightning_modules.evaluation.motion import MotionEvaluation, generation_metrics
from lightning_modules.evaluation.motion_report import EVAL_OPTIONS, GEN_METRICS
from lightning_modules.judge_module import load_judge
from utils.torch_utils import eval_mode

GPU_SCALE_PARAMS = 20_000_000


def network_arguments(given: dict) -> dict:
    """``MotionVAE``'s arguments: its defaults updated with ``given`` (sequences as lists); one clear
    error for a name that is neither ``HamiltonianMotionModule``'s nor ``MotionVAE``'s."""
    params = inspect.signature(MotionVAE).parameters
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise TypeError(
            f"HamiltonianMotionModule got unknown argument(s) {unknown}: they are neither its own nor "
            f"backbone.motion_vae.MotionVAE's (known network arguments: {', '.join(params)})."
        )
    merged = {name: given.get(name, p.default) for name, p in params.items()}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}


class HamiltonianMotionModule(MotionEvaluation, SceneMotionModule):
    """The Hamiltonian content/motion VAE (``backbone.motion_vae.MotionVAE``) with its ELBO and evaluation.

    Args:
        **network: the network's arguments, passed to ``backbone.motion_vae.MotionVAE`` (its defaults
            are Tables 3–5's ~108 M-parameter paper scale). The CLI and the YAML configs give them
            flat beside the arguments below (``model.init_args.position_dim``): jsonargparse follows
            ``**network`` into ``MotionVAE``'s signature, so they are type-checked and documented there.
        alpha: std of the Gaussian likelihood in the paper's [-1, 1] pixel units (paper: 1).
        lr: Adam learning rate (paper 2e-4).
        operator_lr: learning rate of the Hamiltonian operators (default: ``lr``). The operators
            start near the identity; a larger rate lets short (CPU) runs reach the needed
            rotation speeds sooner.
        lr_schedule: ``"constant"`` (paper) or ``"cosine"`` (decay to 5% over the run's steps,
            per optimiser step; helps short CPU runs settle). With ``trainer.max_time`` set, the
            decay follows the elapsed share of that time when it is further along than the steps,
            so a run stopped by time on a slower machine still ends annealed (and is then not
            step-for-step reproducible across machines; drop ``max_time`` for that).
        content_subclip_prob: probability that a training batch's content posterior reads a
            random contiguous sub-clip (length ``U{1..T}``, start per clip) instead of the whole
            clip. Image -> sequence generation gives ``q(z | ·)`` a single frame, which an LSTM
            trained only on whole clips reads poorly (measured: 16-frame SSIM 0.869 from one
            frame vs 0.888 with the clip's content). Any ``q`` keeps eq. 17 a valid bound;
            0 (default) is the paper's whole-clip posterior. Off in every config: in the CPU
            budget 0.5 gave no gain (val SSIM 0.825 vs 0.830 at step 2250 of 4500).
        channels_last: channels-last memory format for the convolutions (faster on CPU).
        generation_length: frames generated from the first frame at val/test (paper 16).
        content_still_frames: at image -> sequence generation the content posterior reads the
            single frame as a still clip of this many frames (set it to the training clip
            length; 1 reads it as a one-frame clip). The paper does not say how its LSTM reads one
            frame; measured on the shipped CPU model (2664 test clips): 16-frame SSIM 0.919 read
            once, 0.920 as a still 8-frame clip, 0.919 with the content of the real clip.
        judge_checkpoint: a ``SequenceJudgeModule`` checkpoint; enables the Table 2 scores.
        eval_seeds: seeds of the stochastic evaluations (prior samples, swap pairing).
        val_generation: also score ``generation_length``-frame generation at validation.
        probe_clips: training clips the test-stage leakage probes and the aggregate-posterior
            statistics are fitted on (``lightning_modules.evaluation.disentanglement``; 0 skips them).
        predict: what ``cli.py predict`` produces (``lightning_modules.prediction.PredictOptions``:
            ``tasks`` of generate / swap / sample, ``length``, ``actions``, ``seed``).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        lr: float = 2e-4,
        operator_lr: float | None = None,
        lr_schedule: str = "constant",
        content_subclip_prob: float = 0.0,
        channels_last: bool = False,
        generation_length: int = 16,
        content_still_frames: int = 8,
        judge_checkpoint: str | None = None,
        eval_seeds: list[int] = [0, 1, 2],
        val_generation: bool = True,
        probe_clips: int = 3000,
        predict: dict | None = None,
        **network,
    ) -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"alpha (likelihood std) must be > 0, got {alpha}.")
        if generation_length < 1:
            raise ValueError(f"generation_length must be >= 1, got {generation_length}.")
        if content_still_frames < 1:
            raise ValueError(f"content_still_frames must be >= 1, got {content_still_frames}.")
        if probe_clips < 0:
            raise ValueError(f"probe_clips must be >= 0 (0 skips the leakage probes), got {probe_clips}.")
        if not eval_seeds:
            raise ValueError("eval_seeds must list at least one seed.")
        if not 0.0 <= content_subclip_prob <= 1.0:
            raise ValueError(f"content_subclip_prob must be in [0, 1], got {content_subclip_prob}.")
        check_lr_schedule(lr_schedule)
        network = network_arguments(network)  # every network argument is a saved hyper-parameter, defaults included
        # Evaluation options are attributes, not hyper-parameters: LightningCLI re-applies a
        # checkpoint's hyper-parameters over the command line (``--ckpt_path``), so options saved
        # there could not be changed at test time (e.g. ``--model.init_args.judge_checkpoint``).
        self.save_hyperparameters(ignore=list(EVAL_OPTIONS))
        self.judge_checkpoint, self.eval_seeds = judge_checkpoint, list(eval_seeds)
        self.generation_length, self.val_generation = generation_length, val_generation
        self.content_still_frames, self.probe_clips = content_still_frames, probe_clips
        self.predict_options = prediction.PredictOptions.parse(predict, "hamiltonian")
        self.model = MotionVAE(**network)
        if channels_last:
            self.use_channels_last(self.model, True)
            self.model.memory_format = torch.channels_last
        # val/test: generation scores; test: headline SSIM per action and frames inside / beyond the clip
        self.gen_metrics, self.energy_drift, self.ssim_breakdown = generation_metrics(self.model.num_actions)
        self._judge: list[nn.Module] = []  # not a registered submodule: never saved in our checkpoints

    # ------------------------------------------------------------------ checks
    def setup(self, stage: str) -> None:
        if self._trainer is None:
            return
        n_params = sum(p.numel() for p in self.model.parameters())
        self.warn_gpu_scale(
            stage == "fit" and self.on_cpu() and n_params > GPU_SCALE_PARAMS,
            f"This is the GPU-scale (paper, Tables 3-4) configuration: {n_params / 1e6:.0f} M parameters, about a "
            f"minute per batch of 24 clips on a CPU. It will run, but slowly. To train on a CPU use "
            f"configs/sprites_hamiltonian_cpu.yaml (or configs/sprites_hamiltonian_skew_cpu.yaml).",
        )
        dm = self.datamodule
        if dm is None or not hasattr(dm, "actions"):
            return
        num_actions = self.model.num_actions
        if len(dm.actions) != num_actions and not (stage == "predict" and not dm.actions):  # unlabelled inputs: no swap
            raise ValueError(
                f"The data has {len(dm.actions)} actions {list(dm.actions)} but the model has num_actions={num_actions}. "
                f"Set --model.init_args.num_actions {len(dm.actions)}."
            )
        self.check_image_size(
            self.model.image_size,
            "The data's frames are {size}x{size} but the model expects image_size={image_size}. "
            "Set --model.init_args.image_size {size} (or the source's image_size)."
        )

    # ------------------------------------------------------------------ user-facing inference
    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Eval mode (BatchNorm running statistics) and no grad, restoring the previous mode."""
        with eval_mode(self.model), torch.no_grad():
            yield

    def forward(self, clip: Tensor, action: Tensor | int) -> Tensor:
        """Posterior-mean reconstruction of clips ``(b, T, 3, h, w)``."""
        return self.reconstruct(clip, action)

    def reconstruct(self, clip: Tensor, action: Tensor | int) -> Tensor:
        """Reconstruction ``(b, T, 3, h, w)``: content of the clip, its state unrolled over ``T`` frames."""
        with self._eval_mode():
            return self.model.reconstruct(clip, action)

    def generate(self, frames0: Tensor, action: Tensor | int, length: int = 16, content: Tensor | None = None) -> Tensor:
        """Image -> sequence: ``frames0 (b, 3, h, w)`` -> ``(b, length, 3, h, w)`` of action(s) ``action``.

        Any action and any length (the model trains on 8 frames; 16 is the paper's test).
        ``content`` (``(b, T, 3, h, w)``) optionally supplies the clip the content is read from;
        without it the content comes from ``frames0`` read as a still clip (``content_still_frames``).
        """
        with self._eval_mode():
            return self.model.generate(frames0, action, length, content, self.content_still_frames)

    def swap_motion(self, clip_a: Tensor, clip_b: Tensor, action_a: Tensor | int, action_b: Tensor | int) -> tuple[Tensor, Tensor]:
        """Motion swap: ``(ab, ba)``, ``ab`` = content of ``clip_a`` with the motion of ``clip_b``."""
        with self._eval_mode():
            return self.model.swap_motion(clip_a, clip_b, action_a, action_b)

    def sample(
        self, num: int, action: Tensor | int, length: int = 8, content_from: Tensor | None = None, seed: int | None = None
    ) -> Tensor:
        """Unconditional generation ``(num, length, 3, h, w)``: prior state and (unless
        ``content_from`` clips are given) prior content."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(seed)
        with self._eval_mode():
            return self.model.sample(num, action, length, content_from, gen)

    def energy(self, frames0: Tensor, action: Tensor | int, length: int = 16) -> Tensor:
        """Energy ``½ sᵀ M_k s`` along the posterior-mean rollout from ``frames0 (b, 3, h, w)``: ``(b, length)``.

        Constant along the rollout (Hamiltonian flow), up to float round-off.
        """
        with self._eval_mode():
            states = self.model.state_trajectory(frames0, action, length)
            return self.model.energy(states, action)

    # ------------------------------------------------------------------ ELBO
    def elbo_terms(
        self, frames: Tensor, action: Tensor, reference: Tensor, content_index: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Per-clip terms of eq. 17 (``nll``, ``kl_z``, ``kl_q``, ``kl_p``, ``loss``; ``(b,)``) and ``recon``
        (``MotionVAE.elbo`` with this module's likelihood std ``alpha``)."""
        return self.model.elbo(frames, action, reference, self.hparams.alpha, content_index)

    def _shared_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        frames, action = batch["frames"], batch["action"]
        b, T = frames.shape[:2]
        reference = torch.randint(0, T, (b,), device=frames.device)  # eq. 11
        content_index = self._content_subclip(b, T, frames.device) if stage == "train" else None
        terms = self.elbo_terms(frames, action, reference, content_index)
        loss = terms["loss"].mean()
        logs = {f"{stage}/{k}": terms[k].mean() for k in ("nll", "kl_z", "kl_q", "kl_p")}
        logs[f"{stage}/mse"] = F.mse_loss(terms["recon"], frames.float())
        train = stage == "train"
        if train:
            self._check_finite(loss, logs)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=train, on_epoch=not train, sync_dist=not train, batch_size=b)
        self.log_dict(logs, on_step=train, on_epoch=not train, sync_dist=not train, batch_size=b)
        return loss

    def _check_finite(self, loss: Tensor, logs: dict[str, Tensor]) -> None:
        """Stop at the first non-finite training loss (on every rank at once), before the optimiser
        step writes NaNs into the weights and the checkpoints: a diverged run should not go on."""
        bad = not bool(torch.isfinite(loss))
        if self._trainer is not None:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            terms = ", ".join(f"{k} {v.item():.4g}" for k, v in logs.items())
            raise FloatingPointError(
                f"The training loss is not finite at step {self.global_step} ({terms}): training diverged. "
                f"Train again with a lower --model.init_args.lr / --model.init_args.operator_lr, or with "
                f"--trainer.gradient_clip_val set."
            )

    def _content_subclip(self, b: int, T: int, device: torch.device) -> Tensor | None:
        """Frame indices ``(b, L)`` of a random contiguous sub-clip per clip, with probability
        ``content_subclip_prob`` (else ``None``: the whole clip); see the class docstring."""
        p = self.hparams.content_subclip_prob
        if p <= 0 or torch.rand(()).item() >= p:
            return None
        length = int(torch.randint(1, T + 1, ()).item())
        start = torch.randint(0, T - length + 1, (b, 1), device=device)
        return start + torch.arange(length, device=device)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")
        if self.val_generation:
            self._update_generation(batch, "val", both=False)

    def on_validation_epoch_end(self) -> None:
        if not self.val_generation:
            return
        for m in GEN_METRICS:
            metric = self.gen_metrics[f"val_gen_{m}"]
            if metric.update_count:
                self.log(f"val/{m}", metric.compute()["mean"], prog_bar=m == "ssim")
                metric.reset()

    # ------------------------------------------------------------------ optimiser
    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        """``cli.py predict``: image -> sequence per action, motion swap, samples (``lightning_modules.prediction``)."""
        names = prediction.action_names(getattr(self.trainer, "datamodule", None), self.model.num_actions)
        return prediction.hamiltonian_predict(self, batch, batch_idx, self.predict_options, names)

    def optimizer(self) -> torch.optim.Optimizer:
        """Adam (paper: lr 2e-4), the operators in their own group (``operator_lr``)."""
        hp = self.hparams
        ops = list(self.model.operators.parameters())
        ids = {id(p) for p in ops}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return torch.optim.Adam([{"params": rest}, {"params": ops, "lr": hp.operator_lr or hp.lr}], lr=hp.lr)

    def lr_lambda(self) -> Callable[[int], float] | None:
        """``lr_schedule: cosine``: ``SceneMotionModule.cosine_lr_lambda``; ``constant``: none."""
        return self.cosine_lr_lambda() if self.hparams.lr_schedule == "cosine" else None

    def _load_judge(self, path: str) -> nn.Module:
        return load_judge(path, self.device)
