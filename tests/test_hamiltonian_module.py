"""HamiltonianMotionModule: configs, training on real DSVAE Sprites clips, inference, checkpoints."""

import json
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, Timer
from torchmetrics.functional.image import structural_similarity_index_measure

import cli
from config_list import CONFIGS, TINY_HAMILTONIAN
from callbacks import LastCheckpointAtEnd, ProgressBar
from datamodules import ActionSequenceDataModule, DSVAESprites
from utils.trainer import run_progress
from lightning_modules.evaluation.motion import repeat_clip
from lightning_modules.hamiltonian_module import HamiltonianMotionModule
from lightning_modules.evaluation.sequence_metrics import ssim_per_image


@pytest.fixture(autouse=True)
def _cli_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cli.py"])  # the CLI reads `args`, not pytest's command line
TINY = dict(content_dim=16, frame_dim=16, image_size=64, encoder_channels=[8, 8, 8, 8], encoder_strides=[2, 2, 2, 2],
            encoder_hidden=[32], decoder_hidden=[32], decoder_channels=[8, 8, 8, 8], decoder_strides=[2, 2, 2, 2],
            kernel_size=3)  # fmt: skip
TINY_ARGS = ["--config", str(TINY_HAMILTONIAN)]  # the widths of TINY


def common_args(tmp_path, cache_dir, batch_size: int) -> list[str]:
    return [
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--data.init_args.cache_dir", str(cache_dir), "--data.init_args.num_workers", "0",
        "--data.init_args.batch_size", str(batch_size),
    ]  # fmt: skip


def real_clips(cache_dir, n: int = 6, split: str = "train") -> dict[str, torch.Tensor]:
    src = DSVAESprites()
    src.prepare(cache_dir=cache_dir)
    ds = src.dataset(split, cache_dir=cache_dir)
    items = [ds.get(9 * i + (4 * i) % 9) for i in range(n)]  # one clip per character, mixed actions and views
    return {k: torch.stack([it[k] for it in items]) for k in ("frames", "action", "view", "attributes")}


@pytest.mark.slow
@pytest.mark.parametrize(
    "config,batch",
    [
        ("sprites_hamiltonian_cpu.yaml", 4),
        ("sprites_hamiltonian_skew_cpu.yaml", 4),
        # paper scale (108 M parameters): only the batch is lowered, to keep one CPU step ~10 s
        ("sprites_hamiltonian.yaml", 2),
        ("sprites_hamiltonian_skew.yaml", 2),
    ],
)
def test_config_fast_dev_run(config, batch, tmp_path, cache_dir):
    args = ["fit", "--config", str(CONFIGS / config), "--trainer.fast_dev_run", "1", *common_args(tmp_path, cache_dir, batch)]
    if config in ("sprites_hamiltonian.yaml", "sprites_hamiltonian_skew.yaml"):
        with pytest.warns(UserWarning, match="GPU-scale .* configs/sprites_hamiltonian_cpu.yaml"):
            run = cli.main(args)
        assert sum(p.numel() for p in run.model.parameters()) > 100e6  # the paper's architecture
    else:
        run = cli.main(args)
    assert isinstance(run.model, HamiltonianMotionModule)
    assert run.model.hparams.operator == ("skew-H" if "skew" in config else "H")
    assert bool(run.trainer.lr_scheduler_configs) == ("_cpu" in config)  # cosine decay in the CPU configs only
    logged = run.trainer.logged_metrics
    for key in ("train/loss", "train/kl_z", "train/kl_q", "train/kl_p", "train/nll", "train/mse", "val/loss", "val/ssim"):
        assert key in logged and torch.isfinite(logged[key]), key


@pytest.fixture(scope="module")
def judge_checkpoint(tmp_path_factory, cache_dir):
    """A judge trained for a few steps by its CPU config (real clips), saved as a checkpoint."""
    root = tmp_path_factory.mktemp("judge")
    cli.main([
        "fit", "--config", str(CONFIGS / "sprites_judge_cpu.yaml"), *common_args(root, cache_dir, 8),
        "--trainer.max_steps", "3", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "0.03",
    ])  # fmt: skip
    ckpts = sorted(root.rglob("last.ckpt"))
    assert ckpts, "the judge fit wrote no checkpoint"
    return ckpts[0]


@pytest.mark.slow
def test_fit_then_test_from_checkpoint_with_judge(tmp_path, cache_dir, judge_checkpoint):
    base = ["--config", str(CONFIGS / "sprites_hamiltonian_cpu.yaml"), *common_args(tmp_path, cache_dir, 6), *TINY_ARGS]
    cli.main(["fit", *base, "--trainer.max_steps", "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0.03"])
    ckpt = sorted(tmp_path.rglob("last.ckpt"))[0]
    assert torch.load(ckpt, weights_only=False)["scenemotion_model"] == "HamiltonianMotionModule"
    run = cli.main([
        "test", *base, "--ckpt_path", str(ckpt), "--trainer.limit_test_batches", "0.003", "--data.init_args.eval_batch_size", "6",
        "--model.init_args.judge_checkpoint", str(judge_checkpoint), "--model.init_args.eval_seeds", "[0, 1]",
        "--model.init_args.probe_clips", "48",
    ])  # fmt: skip
    results = json.loads((Path(run.trainer.log_dir) / "test_results.json").read_text())
    assert (Path(run.trainer.log_dir) / "test_generations.png").is_file()
    assert (Path(run.trainer.log_dir) / "test_prior_and_swap.png").is_file()
    assert results["num_test_clips"] == 6 and results["generation_length"] == 16
    for variant in ("gen", "gen_one_frame", "gen_clip_content", "recon"):
        g = results["generation"][variant]
        assert 0 <= g["mse"] <= 1 and -1 <= g["ssim"] <= 1 and g["psnr"] > 0
    assert results["energy_relative_drift"]["mean"] < 1e-3
    # the breakdown re-weights the headline SSIM: per action by clip counts, and halves of 8 + 8 frames
    breakdown, headline = results["ssim_breakdown"], results["generation"]["gen"]["ssim"]
    actions = {k: v for k, v in breakdown.items() if k.startswith("action_")}
    assert "action_0 (walk)" in actions and sum(v["clips"] for v in actions.values()) == 6
    assert sum(v["mean"] * v["clips"] for v in actions.values()) / 6 == pytest.approx(headline, abs=1e-5)
    halves = (breakdown["frames_in_clip"]["mean"] + breakdown["frames_beyond_clip"]["mean"]) / 2
    assert halves == pytest.approx(headline, abs=1e-5)
    judge = results["judge"]
    assert judge["eval_seeds"] == [0, 1]
    scores = judge["generated_prior_motion"]
    assert 0 <= scores["accuracy"]["mean"] <= 1 and len(scores["accuracy"]["per_seed"]) == 2
    assert 1 - 1e-4 <= scores["inception_score"]["mean"] <= 9 + 1e-4  # IS >= 1 up to float round-off
    assert 0 <= scores["entropy_marginal"]["mean"] <= torch.log(torch.tensor(9.0)).item() + 1e-4
    assert set(judge["attribute_accuracy_motion_changed"]["swap"]) == {"skin", "pants", "top", "hair"}
    # where disentanglement fails: action x view of prior motion, the judge's ceilings, leakage, prior vs posterior
    confusion = judge["prior_motion_action_view"]
    assert set(confusion) == {"action_0", "action_1", "action_2"}
    assert sum(c["generations"] for c in confusion.values()) == 6 * 3 * 2  # clips x actions x seeds
    assert all(abs(sum(c["judged_action"]) - 1) < 1e-6 and 0 <= c["accuracy"] <= c["action_accuracy"] for c in confusion.values())
    assert set(judge["ceilings"]["attributes_own_reconstruction"]) == {"skin", "pants", "top", "hair"}
    assert 0 <= judge["ceilings"]["own_reconstruction"]["accuracy"] <= 1
    diag = results["disentanglement"]
    assert diag["probe_train_clips"] == 48 and diag["probe_test_clips"] == 6
    assert set(diag["leakage_probe_accuracy"]["motion s"]) == {"skin", "pants", "top", "hair", "view"}
    assert all(0 <= v <= 1 for row in diag["leakage_probe_accuracy"].values() for v in row.values())
    for stats in diag["posterior_vs_prior_all_frames"].values():
        assert len(stats["mean_eigenvalues"]) == 12 and stats["kl_per_dim"] >= 0  # 2d = 12 per subspace
    fitted = judge["extra_generated_fitted_prior_motion"]  # labelled extra row, beside the paper's N(0, I)
    assert 0 <= fitted["accuracy"]["mean"] <= 1 and len(fitted["accuracy"]["per_seed"]) == len(judge["eval_seeds"])
    for modes in diag["rotation_modes_first_frame"].values():  # 6 conjugate pairs (or fewer, if degenerate)
        assert 1 <= len(modes) <= 12 and all(m["posterior_power"] >= 0 and m["prior_power"] > 0 for m in modes)
    assert "test/judge_accuracy" in run.trainer.logged_metrics and "test/ssim" in run.trainer.logged_metrics


def test_checkpoint_of_another_model_is_refused(tmp_path, cache_dir, judge_checkpoint):
    model = HamiltonianMotionModule(**TINY)
    dm = ActionSequenceDataModule(DSVAESprites(), batch_size=4, num_workers=0, cache_dir=str(cache_dir))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path, limit_test_batches=1)
    with pytest.raises(ValueError, match="saved by SequenceJudgeModule, but the config builds HamiltonianMotionModule"):
        trainer.test(model, datamodule=dm, ckpt_path=str(judge_checkpoint))


def test_missing_judge_checkpoint_is_a_clear_error(tmp_path, cache_dir):
    model = HamiltonianMotionModule(**TINY, judge_checkpoint=str(tmp_path / "nope.ckpt"))
    dm = ActionSequenceDataModule(DSVAESprites(), batch_size=4, num_workers=0, cache_dir=str(cache_dir))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path, limit_test_batches=1)
    with pytest.raises(FileNotFoundError, match="nope.ckpt.*does not exist.*sprites_judge_cpu.yaml"):
        trainer.test(model, datamodule=dm)


def test_data_with_other_actions_is_refused(tmp_path, cache_dir):
    model = HamiltonianMotionModule(**TINY)
    dm = ActionSequenceDataModule(DSVAESprites(actions=["walk", "slash"]), batch_size=4, num_workers=0, cache_dir=str(cache_dir))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path, fast_dev_run=1)
    with pytest.raises(ValueError, match=r"2 actions \['walk', 'slash'\].*num_actions 2"):
        trainer.fit(model, datamodule=dm)


def test_diverged_training_stops_with_a_clear_error(tmp_path, cache_dir):
    """A non-finite loss stops ``fit`` at once, naming the step and the ELBO terms, before the
    optimiser step (the weights stay finite)."""
    model = HamiltonianMotionModule(**TINY)
    with torch.no_grad():
        model.model.operators.A.mul_(1e4)  # an exploding exp(τH): the rollout overflows
    dm = ActionSequenceDataModule(DSVAESprites(), batch_size=4, num_workers=0, cache_dir=str(cache_dir))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path, fast_dev_run=1)
    with pytest.raises(FloatingPointError, match=r"not finite at step 0 \(train/nll .*training diverged.*gradient_clip_val"):
        trainer.fit(model, datamodule=dm)
    assert all(torch.isfinite(p).all() for n, p in model.named_parameters() if "operators" not in n)


class TenSecondsPerStep(Timer):
    """``trainer.max_time`` of 40 s on a clock that advances 10 s per training step."""

    def __init__(self) -> None:
        super().__init__(duration={"seconds": 40}, interval="step")
        self.steps = 0

    def time_elapsed(self, stage: str = "train") -> float:
        return 10.0 * self.steps

    def on_train_batch_start(self, trainer, *args, **kwargs) -> None:
        self.steps += 1


def test_run_progress_takes_steps_or_the_time_budget_whichever_is_further():
    timer = TenSecondsPerStep()
    assert run_progress(5, 10) == 0.5 and run_progress(20, 10) == 1.0
    timer.steps = 3  # 30 of 40 s
    assert run_progress(1, 10, timer) == 0.75 and run_progress(9, 10, timer) == 0.9
    timer.steps = 5
    assert run_progress(1, 10, timer) == 1.0


def test_run_stopped_by_max_time_ends_annealed_with_its_last_checkpoint(tmp_path, cache_dir, capsys):
    """With ``max_time`` the cosine decay follows the clock when it is ahead of the steps: a run of
    ``max_steps=1000`` stopped by time after 4 steps ends at the 5% floor, not at ~100%;
    ``LastCheckpointAtEnd`` writes ``last.ckpt`` at that step (the 250-step saves never ran), and
    the progress line's ETA is the time left."""
    torch.manual_seed(0)
    model = HamiltonianMotionModule(**TINY, lr=1e-3, operator_lr=1e-2, lr_schedule="cosine", val_generation=False)
    dm = ActionSequenceDataModule(DSVAESprites(), batch_size=4, num_workers=0, cache_dir=str(cache_dir))
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=1, every_n_train_steps=250)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_model_summary=False, max_steps=1000, limit_val_batches=0, default_root_dir=tmp_path,
        callbacks=[TenSecondsPerStep(), checkpoints, LastCheckpointAtEnd(), ProgressBar(mode="plain", log_every_n_steps=2)],
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 4
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[train]")]
    assert "step 2/1000 (0%)" in lines[0] and "eta 20s (max_time)" in lines[0]  # 20 of 40 s left
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == pytest.approx([0.05 * 1e-3, 0.05 * 1e-2])
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 4
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_short_training_lowers_the_loss_on_real_clips(cache_dir):
    """A few dozen Adam steps on six real DSVAE clips (overfitting) lower -ELBO and the MSE."""
    torch.manual_seed(0)
    batch = real_clips(cache_dir, 6)
    module = HamiltonianMotionModule(**TINY, operator_lr=1e-2)
    opt = module.configure_optimizers()
    for g in opt.param_groups[:1]:
        g["lr"] = 3e-3
    losses, mses = [], []
    for step in range(40):
        ref = torch.randint(0, 8, (6,))
        terms = module.elbo_terms(batch["frames"], batch["action"], ref)
        loss = (terms["nll"] + terms["kl_z"] + terms["kl_q"] + terms["kl_p"]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        mses.append((terms["recon"] - batch["frames"]).square().mean().item())
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
    assert sum(mses[-5:]) / 5 < 0.5 * mses[0]


def test_inference_methods_shapes_and_ranges(cache_dir):
    torch.manual_seed(0)
    batch = real_clips(cache_dir, 4, "test")
    module = HamiltonianMotionModule(**TINY, operator="skew-H")
    module.train()
    clips, action = batch["frames"], batch["action"]
    gen = module.generate(clips[:, 0], action, 16)  # image -> sequence, 16 from 8-frame training
    assert gen.shape == (4, 16, 3, 64, 64) and 0 <= gen.min() and gen.max() <= 1
    for k in range(3):  # any action, any length
        assert module.generate(clips[:2, 0], k, 5).shape == (2, 5, 3, 64, 64)
    assert module.model.training  # inference restored the training mode
    ab, ba = module.swap_motion(clips[:2], clips[2:], action[:2], action[2:])
    assert ab.shape == ba.shape == (2, 8, 3, 64, 64)
    assert module.sample(3, 1, 12, seed=0).shape == (3, 12, 3, 64, 64)
    torch.testing.assert_close(module.sample(3, 1, 12, seed=0), module.sample(3, 1, 12, seed=0))
    assert module.sample(4, action, 8, content_from=clips).shape == (4, 8, 3, 64, 64)
    assert module.reconstruct(clips, action).shape == (4, 8, 3, 64, 64)
    energy = module.energy(clips[:, 0], action, 16)
    assert energy.shape == (4, 16)
    torch.testing.assert_close(energy, energy[:, :1].expand(4, 16), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match=r"clips \(b, t, 3, 64, 64\)"):
        module.reconstruct(torch.rand(2, 8, 3, 32, 32), 0)
    with pytest.raises(ValueError, match=r"action indices must lie in \[0, 2\]"):
        module.generate(clips[:, 0], 3, 4)


def test_content_subclip_reads_the_chosen_frames(cache_dir):
    """``content_index`` makes q(z | .) read exactly those frames; the training sub-clips are
    contiguous runs inside the clip, and the option is off at the paper's default."""
    torch.manual_seed(0)
    clips = real_clips(cache_dir, 3)["frames"]
    module = HamiltonianMotionModule(**TINY, content_subclip_prob=1.0).eval()
    index = torch.tensor([[2, 3, 4], [0, 1, 2], [5, 6, 7]])
    picked = module.model.posterior(clips, torch.zeros(3, dtype=torch.long), content_index=index).z
    for i in range(3):
        alone = module.model.posterior(clips[i : i + 1, index[i]], torch.zeros(1, dtype=torch.long)).z
        torch.testing.assert_close(picked.mu[i : i + 1], alone.mu, rtol=1e-5, atol=1e-6)
    for _ in range(20):
        sub = module._content_subclip(3, 8, torch.device("cpu"))
        assert sub.shape[0] == 3 and 1 <= sub.shape[1] <= 8 and sub.min() >= 0 and sub.max() <= 7
        assert (sub.diff(dim=1) == 1).all()
    assert HamiltonianMotionModule(**TINY)._content_subclip(3, 8, torch.device("cpu")) is None
    with pytest.raises(ValueError, match="content_subclip_prob"):
        HamiltonianMotionModule(**TINY, content_subclip_prob=1.5)


def test_network_arguments_go_to_the_motion_vae_and_are_all_saved():
    """``**network`` is ``MotionVAE``'s: given values reach the network, every one (defaults included) is
    a saved hyper-parameter, and a misspelt name or schedule gets one clear message."""
    module = HamiltonianMotionModule(**TINY, operator="skew-H")
    assert module.model.operators.kind == "skew-H" and module.model.dim == 6  # MotionVAE's default position_dim
    assert {"num_actions", "position_dim", "operator", "in_channels", "kernel_size"} <= set(module.hparams)
    assert module.hparams.encoder_channels == TINY["encoder_channels"] and module.hparams.num_actions == 3
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['positon_dim'\].*position_dim"):
        HamiltonianMotionModule(**TINY, positon_dim=2)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        HamiltonianMotionModule(**TINY, lr_schedule="linear")


def test_single_frame_content_is_read_as_a_still_clip(cache_dir):
    """Image -> sequence reads the content of the frame repeated ``content_still_frames`` times
    (the LSTM's training length); 1 reads it once; the motion comes from the frame either way."""
    torch.manual_seed(0)
    clips = real_clips(cache_dir, 3)["frames"]
    frames0, action = clips[:, 0], torch.tensor([0, 1, 2])
    module = HamiltonianMotionModule(**TINY, content_still_frames=8)
    still = repeat_clip(frames0[:, None], 8)  # (3, 8, 3, 64, 64): the same frame 8 times
    expect = module.generate(frames0, action, 5, content=still)
    torch.testing.assert_close(module.generate(frames0, action, 5), expect)
    once = module.generate(frames0, action, 5, content=frames0[:, None])
    torch.testing.assert_close(module.eval().model.generate(frames0, action, 5), once)
    assert not torch.allclose(once, expect)
    with pytest.raises(ValueError, match="content_still_frames must be >= 1"):
        HamiltonianMotionModule(**TINY, content_still_frames=0)
    with pytest.raises(ValueError, match="still_frames must be >= 1"):
        module.model.generate(frames0, action, 5, still_frames=0)


def test_first_frame_generation_protocol(cache_dir):
    """Ground truth of the 16-frame test: the periodic 8-frame clip repeated (paper §4.1)."""
    clip = torch.arange(8.0).reshape(1, 8, 1, 1, 1).expand(2, 8, 3, 4, 4)
    rep = repeat_clip(clip, 16)
    assert rep.shape == (2, 16, 3, 4, 4)
    torch.testing.assert_close(rep[:, 8:], clip)
    torch.testing.assert_close(rep[:, :8], clip)


def test_fast_ssim_equals_torchmetrics(cache_dir):
    clips = real_clips(cache_dir, 2)["frames"].flatten(0, 1)  # (16, 3, 64, 64)
    noisy = (clips + 0.05 * torch.randn_like(clips)).clamp(0, 1)
    expect = structural_similarity_index_measure(noisy, clips, data_range=1.0, reduction="none")
    torch.testing.assert_close(ssim_per_image(noisy, clips), expect, atol=1e-5, rtol=1e-5)
