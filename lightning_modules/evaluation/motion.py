"""Evaluation of the Hamiltonian motion model (paper 004) in ``HamiltonianMotionModule``'s val and test stages.


* Table 1: 16-frame image -> sequence from each test clip's FIRST frame (posterior means)
  against the 8-frame clip repeated (the Sprites clips are periodic, §4.1); SSIM / PSNR / MSE
  per frame (torchmetrics, ``data_range=1``), mean ± std over clips. Content ``z`` read from
  the first frame alone (``gen``, the headline: nothing but the first frame is seen), as a still
  clip of ``content_still_frames`` frames (the LSTM's training length); the same frame read as a
  one-frame clip (``gen_one_frame``); and from the whole 8-frame clip (``gen_clip_content``; the
  motion still comes from the first frame only). Plus 8-frame reconstruction scores, the
  headline SSIM per action and for frames inside / beyond the clip's length (where it is lost:
  a rollout that does not close the cycle only scores badly beyond), and the energy drift along
  rollouts.
* Table 2 (with ``judge_checkpoint``): for every test clip and every action ``k``: ``s_1`` from
  the prior ``N(0, I)``, unrolled by ``H_k``, ``z`` = the clip's content posterior mean. The
  frozen judge classifies the 9 action-view classes; with ``K = 3`` actions the view is part of
  the content, so the target is ``len(views) * k + view(clip)``. Scores: accuracy, IS,
  ``H(y|x)``, ``H(y)``. Attribute accuracy with changed motion: motion swapped with another
  test clip (seeded pairing) and with the prior samples above; target = the content clip's
  attributes. The stochastic parts run once per ``eval_seeds`` entry: mean ± std over seeds.
  Results are printed beside the published numbers and written to
  ``<log_dir>/test_results.json``.

``MotionEvaluation`` is the mixin that holds these stages (the module's ``test_step`` and its
hooks); the tables are ``motion_report.MotionReport``'s.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import default_collate
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.functional.image import peak_signal_noise_ratio
from pytorch_lightning.utilities import rank_zero_info

from backbone.hamiltonian import embed_subspace
from datamodules.dsvae_sprites import ACTIONS as SPRITES_ACTIONS
from datamodules.dsvae_sprites import DSVAESprites
from lightning_modules.evaluation.disentanglement import aggregate_gaussian, cholesky_factor, linear_probe_accuracy, mode_power, posterior_spread, sample_gaussian
from lightning_modules.evaluation.motion_report import GEN_METRICS, MotionReport
from lightning_modules.evaluation.sequence_metrics import ClassifierScores, MeanStd, MultiHeadAccuracy, ssim_per_image
from utils.io import atomic_output

GEN_VARIANTS = ("gen", "gen_one_frame", "gen_clip_content", "recon")


def per_frame_scores(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """SSIM / PSNR / MSE (``data_range=1``) of every frame of ``(b, t, c, h, w)`` clips: ``(b, t)`` each.

    SSIM is torchmetrics' (Gaussian 11x11, σ 1.5) computed by ``ssim_per_image`` (same values,
    faster on CPU); PSNR is ``torchmetrics.functional.peak_signal_noise_ratio`` per frame.
    """
    b, t = pred.shape[:2]
    p = pred.flatten(0, 1).float().clamp(0, 1)
    g = target.flatten(0, 1).float()
    ssim = ssim_per_image(p, g, data_range=1.0)
    psnr = peak_signal_noise_ratio(p, g, data_range=1.0, reduction="none", dim=(1, 2, 3))
    mse = (p - g).square().mean((1, 2, 3))
    return {k: v.reshape(b, t) for k, v in (("ssim", ssim), ("psnr", psnr), ("mse", mse))}


def repeat_clip(clip: Tensor, length: int) -> Tensor:
    """The clip ``(b, T, ...)`` repeated periodically to ``length`` frames (the §4.1 ground truth)."""
    idx = torch.arange(length, device=clip.device) % clip.shape[1]
    return clip[:, idx]


def generation_metrics(num_actions: int) -> tuple[nn.ModuleDict, MeanStd, nn.ModuleDict]:
    """The metrics ``MotionEvaluation`` updates: generation scores per stage / variant / metric, the
    energy drift and the headline-SSIM breakdown (per action, frames inside / beyond the clip)."""
    gen = nn.ModuleDict({f"{stage}_{variant}_{m}": MeanStd() for stage in ("val", "test") for variant in GEN_VARIANTS for m in GEN_METRICS})
    breakdown = nn.ModuleDict(
        {f"action_{k}": MeanStd() for k in range(num_actions)} | {"frames_in_clip": MeanStd(), "frames_beyond_clip": MeanStd()}
    )
    return gen, MeanStd(), breakdown


class MotionEvaluation(MotionReport):
    """Mixin of ``HamiltonianMotionModule``: generation scores (val and test), the judge's Table 2
    scores, the disentanglement diagnostics and the test grids. It uses the module's ``model``
    (``MotionVAE``), ``generate``, ``_eval_mode`` and ``_load_judge``."""

    # ------------------------------------------------------------------ generation scores
    def _update_generation(self, batch: dict[str, Tensor], stage: str, both: bool) -> None:
        frames, action = batch["frames"], batch["action"]
        L = self.generation_length
        target = repeat_clip(frames, L)
        variants = {"gen": self.generate(frames[:, 0], action, L)}
        if both:
            if self.content_still_frames > 1:
                variants["gen_one_frame"] = self.model.generate(frames[:, 0], action, L)
            variants["gen_clip_content"] = self.model.generate(frames[:, 0], action, L, content=frames)
            variants["recon"] = self.model.reconstruct(frames, action)
        for variant, pred in variants.items():
            scores = per_frame_scores(pred, frames if variant == "recon" else target)
            for m, v in scores.items():
                self.gen_metrics[f"{stage}_{variant}_{m}"].update(v.mean(1))
            if variant == "gen" and both:
                self._update_breakdown(scores["ssim"], action, frames.shape[1])
        if both:
            states = self.model.state_trajectory(frames[:, 0], action, L, dtype=torch.float64)  # fp32 rounding is ~1e-5
            e = self.model.energy(states, action)
            drift = (e - e[:, :1]).abs().amax(1) / e[:, 0].abs().clamp_min(1e-6)
            self.energy_drift.update(drift)

    def _update_breakdown(self, ssim: Tensor, action: Tensor, clip_length: int) -> None:
        """Where the headline SSIM ``(b, L)`` is lost: per action, and frames ``< T`` vs ``>= T``
        (the second pass through the clip: only a rollout that closes the cycle scores there)."""
        clip_ssim = ssim.mean(1)
        for k in range(self.model.num_actions):
            self.ssim_breakdown[f"action_{k}"].update(clip_ssim[action == k])
        self.ssim_breakdown["frames_in_clip"].update(ssim[:, :clip_length].mean(1))
        if ssim.shape[1] > clip_length:
            self.ssim_breakdown["frames_beyond_clip"].update(ssim[:, clip_length:].mean(1))

    def _breakdown_results(self) -> dict[str, dict[str, float]]:
        """``{label: {mean, std, clips}}`` of the ``ssim_breakdown`` entries that saw clips (all ranks)."""
        labels = self._action_labels()
        out = {}
        for key, metric in self.ssim_breakdown.items():
            if metric.update_count:
                stats = metric.compute()
                if metric.count:
                    out[labels.get(key, key)] = {"mean": float(stats["mean"]), "std": float(stats["std"]), "clips": int(metric.count)}
            metric.reset()
        return out

    def _action_labels(self) -> dict[str, str]:
        """``action_k`` -> its printed label, with the action's name on DSVAE Sprites."""
        keys = [f"action_{k}" for k in range(self.model.num_actions)]
        if self._is_sprites() and len(SPRITES_ACTIONS) == len(keys):
            return {key: f"{key} ({name})" for key, name in zip(keys, SPRITES_ACTIONS)}
        return {key: key for key in keys}

    # ------------------------------------------------------------------ test
    def on_test_start(self) -> None:
        self._grid_examples = self._disentangle_examples = None
        self._latents: dict[str, list[Tensor]] = {}
        self._judge = []
        self.judge_metrics = None
        self._fitted_prior, self._train_latents = {}, None
        path = self.judge_checkpoint
        if not path:
            rank_zero_info("No judge_checkpoint given: skipping the judge scores (Table 2). Pass --model.init_args.judge_checkpoint PATH.")
            return
        judge = self._load_judge(path)
        dm = getattr(self.trainer, "datamodule", None)
        views = len(dm.views) if dm is not None and hasattr(dm, "views") else judge.hparams.num_classes // self.model.num_actions
        self._views = max(views, 1)
        expect = self.model.num_actions * self._views
        if judge.hparams.target_key != "label" or judge.hparams.num_classes != expect:
            raise ValueError(
                f"The judge {path} classifies {judge.hparams.num_classes} '{judge.hparams.target_key}' classes; this model "
                f"needs an action-view judge with {expect} classes ({self.model.num_actions} actions x {self._views} views)."
            )
        self._judge = [judge]
        n_attr = len(judge.hparams.attribute_cardinalities)
        metrics = {}
        for seed in self.eval_seeds:
            metrics[f"prior_{seed}"] = ClassifierScores(expect)
            metrics[f"attr_prior_{seed}"] = MultiHeadAccuracy(n_attr)
            metrics[f"attr_swap_{seed}"] = MultiHeadAccuracy(n_attr)
        metrics["real"] = ClassifierScores(expect)
        metrics["attr_real"] = MultiHeadAccuracy(n_attr)
        metrics["prior_confusion"] = MulticlassConfusionMatrix(expect)  # [target, judged], all seeds
        for key in ("own_reconstruction", "real_motion_same_view", "real_motion_any_view"):
            metrics[key] = ClassifierScores(expect)
        metrics["attr_own_reconstruction"] = MultiHeadAccuracy(n_attr)
        self._fitted_prior = self._fit_state_prior()
        if self._fitted_prior:
            for seed in self.eval_seeds:
                metrics[f"fitted_prior_{seed}"] = ClassifierScores(expect)
        self.judge_metrics = nn.ModuleDict(metrics).to(self.device)

    def _fit_state_prior(self) -> dict[int, tuple[Tensor, Tensor]]:
        """Per action, ``(mean, Cholesky factor)`` of the Gaussian fitted to the first-frame posterior
        of ``s`` on ``probe_clips`` training clips (``aggregate_gaussian``): Table 2's labelled extra
        row, not the paper's prior.
        Empty without training clips to fit on (``probe_clips`` 0 or no labelled source)."""
        dm = getattr(self.trainer, "datamodule", None)
        if self.probe_clips <= 0 or dm is None or not hasattr(dm, "source"):
            return {}
        self._train_latents = self._training_latents(self.probe_clips)
        train, fitted = self._train_latents, {}
        for k in range(self.model.num_actions):
            sel = train["action"] == k
            if int(sel.sum()) > 2 * self.model.dim:  # enough clips for a full covariance
                mean, cov = aggregate_gaussian(train["s_mu"][sel], train["s_log_sigma"][sel])
                fitted[k] = (mean.to(self.device), cholesky_factor(cov).to(self.device))  # factored once, sampled per batch
        return fitted

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if batch_idx == 0:
            self._grid_examples = self._example_grid(batch)
            self._disentangle_examples = self._disentangle_grid(batch)
        self._update_generation(batch, "test", both=True)
        probes = "attributes" in batch and self.probe_clips > 0
        if not (probes or self._judge):
            return
        latents = self._clip_latents(batch)
        if probes:  # the probes score test clips at the first frame; the spread uses training clips
            for k in ("z", "s_mu", "action", "targets"):
                self._latents.setdefault(k, []).append(latents[k])
        if self._judge:
            self._update_judge(batch, batch_idx, latents["z"])

    def _clip_latents(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Posterior means of the clips' content ``z (b, |Z|)`` and first-frame motion state
        ``s_mu, s_log_sigma (b, 2d)`` (where image -> sequence reads it), every frame's state
        ``s_all_mu, s_all_log_sigma (b, T, 2d)``, and the labels the probes read."""
        frames, action = batch["frames"], batch["action"]
        post = self.model.posterior(frames, action)
        mu = torch.cat([post.q.mu, post.p.mu], -1)
        log_sigma = torch.cat([post.q.log_sigma, post.p.log_sigma], -1)
        out = {"z": post.z.mu, "s_mu": mu[:, 0], "s_log_sigma": log_sigma[:, 0], "s_all_mu": mu, "s_all_log_sigma": log_sigma, "action": action}
        view = batch.get("view", torch.zeros_like(action))
        if "attributes" in batch:
            out["targets"] = torch.cat([batch["attributes"], view[:, None]], 1)
        return out

    def _update_judge(self, batch: dict[str, Tensor], batch_idx: int, z: Tensor) -> None:
        judge, metrics = self._judge[0], self.judge_metrics
        frames, action = batch["frames"], batch["action"]
        b, T = frames.shape[:2]
        view = batch["view"] if "view" in batch else torch.zeros_like(action)
        attrs = batch.get("attributes")
        real = judge.probabilities(frames)
        metrics["real"].update(real["label"], batch.get("label", self._views * action + view))
        if attrs is not None:
            metrics["attr_real"].update(real["attributes"], attrs)
        for seed in self.eval_seeds:
            gen = self._batch_generator(seed, batch_idx)
            for k in range(self.model.num_actions):
                ak = torch.full_like(action, k)
                probs = judge.probabilities(self.model.prior_motion(z, ak, T, gen))
                metrics[f"prior_{seed}"].update(probs["label"], self._views * k + view)
                metrics["prior_confusion"].update(probs["label"].argmax(1), self._views * k + view)
                if attrs is not None:
                    metrics[f"attr_prior_{seed}"].update(probs["attributes"], attrs)
                if k in self._fitted_prior:  # extra row: s_1 from the Gaussian fitted to the training posterior
                    fit_gen = self._batch_generator(seed + 1_000_000, batch_idx * self.model.num_actions + k)  # own stream: the N(0, I) row's draws stay as they were
                    start = sample_gaussian(*self._fitted_prior[k], b, fit_gen).to(z.dtype)
                    fitted = judge.probabilities(self.model.prior_motion(z, ak, T, start=start))
                    metrics[f"fitted_prior_{seed}"].update(fitted["label"], self._views * k + view)
            if attrs is not None and b > 1:
                perm = torch.randperm(b, generator=gen, device=self.device)
                ab, _ = self.model.swap_motion(frames, frames[perm], action, action[perm])
                metrics[f"attr_swap_{seed}"].update(judge.probabilities(ab)["attributes"], attrs)
        self._update_judge_ceilings(frames, action, view, attrs, batch_idx)

    def _update_judge_ceilings(self, frames: Tensor, action: Tensor, view: Tensor, attrs: Tensor | None, batch_idx: int) -> None:
        """What the judge reads from the model's own renders, without any change of motion (the
        decoder's ceiling for Table 2b), and from real motion of another test clip of the same
        action (same view, and any view; the ceiling of prior-motion generation: no prior involved)."""
        judge, metrics = self._judge[0], self.judge_metrics
        label = self._views * action + view
        own = judge.probabilities(self.model.reconstruct(frames, action))  # the swap's rendering path, own motion
        metrics["own_reconstruction"].update(own["label"], label)
        if attrs is not None:
            metrics["attr_own_reconstruction"].update(own["attributes"], attrs)
        gen = self._batch_generator(self.eval_seeds[0], batch_idx)
        for same_view, key in ((True, "real_motion_same_view"), (False, "real_motion_any_view")):
            partner = self._partners(action, view if same_view else None, gen)
            keep = partner >= 0
            if keep.any():
                ab, _ = self.model.swap_motion(frames[keep], frames[partner[keep]], action[keep], action[partner[keep]])
                metrics[key].update(judge.probabilities(ab)["label"], label[keep])

    def _batch_generator(self, seed: int, batch_idx: int) -> torch.Generator:
        """The evaluation RNG of one test batch: distinct per seed, rank and batch, reproducible."""
        return torch.Generator(device=self.device).manual_seed(int(seed) * 1_000_003 + self.global_rank * 100_003 + batch_idx)

    def _partners(self, action: Tensor, view: Tensor | None, gen: torch.Generator) -> Tensor:
        """For each clip a random other clip of the batch with the same action (and ``view`` if given); -1 if none."""
        same = action[:, None] == action[None]
        if view is not None:
            same &= view[:, None] == view[None]
        same.fill_diagonal_(False)
        scores = torch.rand(same.shape, generator=gen, device=action.device).masked_fill(~same, -1.0)
        best = scores.argmax(1)
        return torch.where(same.any(1), best, torch.full_like(best, -1))

    def on_test_epoch_end(self) -> None:
        results: dict[str, object] = {"num_test_clips": None, "generation_length": self.generation_length}
        gen: dict[str, dict[str, float]] = {}
        for variant in GEN_VARIANTS:
            gen[variant] = {}
            for m in GEN_METRICS:
                metric = self.gen_metrics[f"test_{variant}_{m}"]
                if not metric.update_count:
                    continue
                stats = metric.compute()
                gen[variant][m] = float(stats["mean"])
                gen[variant][f"{m}_std"] = float(stats["std"])
                if results["num_test_clips"] is None:
                    results["num_test_clips"] = int(metric.count)
                metric.reset()
        drift = self.energy_drift.compute()
        self.energy_drift.reset()
        results["generation"] = gen
        results["ssim_breakdown"] = self._breakdown_results()
        results["energy_relative_drift"] = {"mean": float(drift["mean"]), "std": float(drift["std"])}
        for m in GEN_METRICS:
            if m in gen["gen"]:
                self.log(f"test/{m}", gen["gen"][m])
                self.log(f"test/{m}_clip_content", gen["gen_clip_content"][m])
                self.log(f"test/recon_{m}", gen["recon"][m])
        self.log("test/energy_drift", float(drift["mean"]))

        judge_rows = attr_rows = None
        if self._judge and self.judge_metrics is not None:
            judge_rows, attr_rows = self._judge_results(results)
        if self._latents:
            results["disentanglement"] = self._disentanglement_results()
        self._report(results, gen, judge_rows, attr_rows)

    def _example_grid(self, batch: dict[str, Tensor], num: int = 4) -> Tensor:
        """Rows per example clip: the clip repeated to ``generation_length`` frames, then the
        generation from its first frame with its own action, then with each other action."""
        frames, action = batch["frames"], batch["action"]
        idx = torch.linspace(0, frames.shape[0] - 1, min(num, frames.shape[0]), device=frames.device).round().long()
        L, K = self.generation_length, self.model.num_actions
        rows = []
        for i in idx.tolist():
            own = int(action[i])
            rows.append(repeat_clip(frames[i : i + 1], L)[0])
            for k in [own] + [k for k in range(K) if k != own]:
                rows.append(self.generate(frames[i : i + 1, 0], torch.tensor([k], device=frames.device), L)[0])
        return torch.cat(rows).float().cpu()  # (rows * L, 3, h, w)

    def _save_grid(self, out_dir: str | Path) -> Path | None:
        grid = getattr(self, "_grid_examples", None)
        if grid is None or self.global_rank != 0:
            return None
        from torchvision.utils import save_image

        path = Path(out_dir) / "test_generations.png"
        with atomic_output(path) as tmp:
            save_image(grid, tmp, nrow=self.generation_length, padding=1, pad_value=1.0)
        self._grid_examples = None
        if self._disentangle_examples is not None:
            images, length = self._disentangle_examples
            with atomic_output(Path(out_dir) / "test_prior_and_swap.png") as tmp:
                save_image(images, tmp, nrow=length, padding=1, pad_value=1.0)
            self._disentangle_examples = None
        return path

    def _gathered_latents(self) -> dict[str, Tensor]:
        """The test clips' latents of every rank, ``(n, ...)`` each."""
        out = {}
        for key, parts in self._latents.items():
            x = torch.cat(parts)
            if self.trainer.world_size > 1:
                x = self.all_gather(x).flatten(0, 1)
            out[key] = x.cpu()
        self._latents = {}
        return out

    def _training_latents(self, num_clips: int) -> dict[str, Tensor]:
        """``_clip_latents`` of ``num_clips`` training clips (seeded choice; val/test windows:
        ``num_frames`` frames from frame 0), for the probes' fit and the aggregate posterior."""
        dm = self.trainer.datamodule
        clips = dm.source.dataset("train", dm.assets_root, dm.cache_dir)
        view = dm.make_view(clips, "val")
        keys = torch.randperm(len(view), generator=torch.Generator().manual_seed(0))[:num_clips].tolist()
        parts: dict[str, list[Tensor]] = {}
        with self._eval_mode():
            for start in range(0, len(keys), 64):
                batch = default_collate([view[k] for k in keys[start : start + 64]])
                batch = {k: v.to(self.device) for k, v in batch.items() if isinstance(v, Tensor)}
                for k, v in self._clip_latents(batch).items():
                    parts.setdefault(k, []).append(v.cpu())
        return {k: torch.cat(v) for k, v in parts.items()}

    def _disentanglement_results(self) -> dict:
        """Leakage probes (attributes and view read linearly from ``s`` and from ``z``, fitted on
        training clips, scored on test clips) and the aggregate posterior of ``s`` against N(0, I)."""
        test = self._gathered_latents()
        train = getattr(self, "_train_latents", None) or self._training_latents(self.probe_clips)
        self._train_latents = None
        K = self.model.num_actions
        names = [*self._attribute_names(test["targets"].shape[1] - 1), "view"]
        probes: dict[str, dict[str, float]] = {"motion s": {}, "content z": {}, "chance": {}}
        for i, name in enumerate(names):
            classes = int(max(train["targets"][:, i].max(), test["targets"][:, i].max())) + 1
            ytr, yte = train["targets"][:, i], test["targets"][:, i]
            s_tr, s_te = embed_subspace(train["s_mu"], train["action"], K), embed_subspace(test["s_mu"], test["action"], K)
            probes["motion s"][name] = linear_probe_accuracy(s_tr, ytr, s_te, yte, classes)
            probes["content z"][name] = linear_probe_accuracy(train["z"], ytr, test["z"], yte, classes)
            probes["chance"][name] = float(torch.bincount(yte, minlength=classes).max()) / len(yte)
        spread = posterior_spread(
            train["s_all_mu"].flatten(0, 1), train["s_all_log_sigma"].flatten(0, 1),
            train["action"].repeat_interleave(train["s_all_mu"].shape[1]), K,
        )
        first = posterior_spread(train["s_mu"], train["s_log_sigma"], train["action"], K)
        return {
            "probe_train_clips": int(train["z"].shape[0]),
            "probe_test_clips": int(test["z"].shape[0]),
            "leakage_probe_accuracy": probes,
            "posterior_vs_prior_all_frames": spread,
            "posterior_vs_prior_first_frame": first,
            "rotation_modes_first_frame": mode_power(train["s_mu"], train["action"], self.model.operators.generator()),
        }

    def _attribute_names(self, count: int) -> list[str]:
        dm = getattr(self.trainer, "datamodule", None)
        names = list(getattr(dm, "attribute_names", ()) or ())
        return names if len(names) == count else [f"attribute_{i}" for i in range(count)]

    def _disentangle_grid(self, batch: dict[str, Tensor], num: int = 3) -> tuple[Tensor, int] | None:
        """Rows per example clip ``a`` (with the next example ``b``): ``a``; prior motion ``s_1 ~ N(0, I)``
        of every action with ``a``'s content; ``b``; content ``a`` + motion ``b`` (motion swap)."""
        frames, action = batch["frames"], batch["action"]
        n = min(num + 1, frames.shape[0])
        if n < 2:
            return None
        idx = torch.linspace(0, frames.shape[0] - 1, n, device=frames.device).round().long()
        a, b = frames[idx[:-1]], frames[idx[1:]]
        act_a, act_b = action[idx[:-1]], action[idx[1:]]
        gen = torch.Generator(device=self.device).manual_seed(0)
        with self._eval_mode():
            z = self.model.content(self.model.encode_frames(a)).mu
            T = a.shape[1]
            priors = [self.model.prior_motion(z, torch.full_like(act_a, k), T, gen) for k in range(self.model.num_actions)]
            ab, _ = self.model.swap_motion(a, b, act_a, act_b)
        rows = [torch.stack([a[i], *[p[i] for p in priors], b[i], ab[i]]) for i in range(a.shape[0])]
        return torch.cat(rows).flatten(0, 1).clamp(0, 1).float().cpu(), T  # (rows * T, 3, h, w), frames per row


    def _is_sprites(self) -> bool:
        return isinstance(getattr(self.datamodule, "source", None), DSVAESprites)
