"""EquivariantSceneModule on real data: training, every config, checkpoints, evaluation protocols."""

import json
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

import cli
from config_list import BY_MODEL, CONFIGS, TINY_EQUIVARIANT
from datamodules import MovingMNIST, PairFramesDataModule, ReedSprites, SpritesOnBackgrounds
from lightning_modules.evaluation import scene as ev
from lightning_modules.evaluation import scene_metrics
from lightning_modules.evaluation import tz
from lightning_modules.base import SceneMotionModule
from lightning_modules.equivariant_module import EquivariantSceneModule

ALL_CONFIGS = BY_MODEL["equivariant"]
TINY = yaml.safe_load(TINY_EQUIVARIANT.read_text())["model"]["init_args"]
TINY_ARGS = ["--config", str(TINY_EQUIVARIANT)]


MNIST_EVAL_ARGS = ["--model.init_args.fig3_examples", "24", "--model.init_args.fig3_chunk", "10", "--model.init_args.tz_pairs", "40"]


def small_mnist(**kw) -> MovingMNIST:
    return MovingMNIST(num_digits=1, train_clips_per_epoch=64, val_clips=16, test_clips=16, **kw)


def run_cli(args: list[str]) -> None:
    cli.main(args=args)


def data_args(cache_dir: str, config: str) -> list[str]:
    args = ["--data.init_args.num_workers", "0", "--data.init_args.cache_dir", cache_dir]
    if config.startswith("mnist"):  # small fixed val/test sets (fast cache builds)
        args += ["--data.init_args.source.init_args.val_clips", "16", "--data.init_args.source.init_args.test_clips", "16",
                 "--data.init_args.source.init_args.train_clips_per_epoch", "64"]
    return args


# ---------------------------------------------------------------------------- training
def test_short_cpu_training_lowers_scene_loss_on_real_pairs(cache_dir):
    pl.seed_everything(0)
    dm = PairFramesDataModule(small_mnist(), batch_size=8, num_workers=0, cache_dir=cache_dir)
    dm.prepare_data()
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))  # 8 fixed real pairs
    model = EquivariantSceneModule(**TINY, lr=3e-3)

    def scene_loss() -> float:
        with torch.no_grad():
            return model.scene.losses(batch["x1"], batch["x2"]).scene.item()

    before = scene_loss()
    loader = DataLoader([{k: v[i] for k, v in batch.items()} for i in range(8)], batch_size=8)
    trainer = pl.Trainer(max_steps=60, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    trainer.fit(model, train_dataloaders=loader)
    after = scene_loss()
    assert after < 0.5 * before, (before, after)
    logged = trainer.callback_metrics
    for key in ("train/loss", "train/scene", "train/equiv", "train/inv"):
        assert key in logged and math.isfinite(float(logged[key]))


# ---------------------------------------------------------------------------- configs
@pytest.mark.parametrize("config", ALL_CONFIGS)
def test_every_config_runs_with_fast_dev_run(config, cache_dir, tmp_path, recwarn):
    args = ["fit", "--config", str(CONFIGS / config), "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    args += data_args(cache_dir, config)
    if not config.endswith("_cpu.yaml"):  # paper (GPU) scale: real widths, a CPU-sized batch
        args += ["--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0", "--data.init_args.pin_memory", "false"]
    run_cli(args)
    if not config.endswith("_cpu.yaml") and not torch.cuda.is_available():
        messages = [str(w.message) for w in recwarn]
        assert any("paper-scale (GPU) configuration" in m and "_cpu.yaml" in m for m in messages), messages


@pytest.fixture(scope="module")
def mnist_checkpoint(tmp_path_factory, cache_dir):
    """A 2-step CPU-config run with a tiny model and small evaluation settings (stored as hparams)."""
    root = tmp_path_factory.mktemp("mnist_run")
    config = "mnist_equivariant_cpu.yaml"
    run_cli(["fit", "--config", str(CONFIGS / config), "--trainer.max_steps", "2", "--trainer.default_root_dir", str(root),
             *TINY_ARGS, *data_args(cache_dir, config)])
    ckpt = next(root.rglob("last.ckpt"))
    return root, ckpt


def test_checkpoint_loads_for_test_and_writes_fig3_and_tz_results(mnist_checkpoint, cache_dir):
    root, ckpt = mnist_checkpoint
    config = "mnist_equivariant_cpu.yaml"
    run_cli(["test", "--config", str(CONFIGS / config), "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(root / "test"),
             *MNIST_EVAL_ARGS, *TINY_ARGS, *data_args(cache_dir, config)])
    out = next((root / "test").rglob("fig3.json")).parent
    fig3 = json.loads((out / "fig3.json").read_text())
    for row in ("transformation", "background", "video_frames", "no_object"):
        assert fig3[row]["mse"]["n"] == 24
        assert fig3[row]["mse_255"]["mean"] == pytest.approx(fig3[row]["mse"]["mean"] * 255**2)
        assert -1.0 <= fig3[row]["ssim"]["mean"] <= 1.0
    per = np.load(out / "fig3_per_example.npz")
    assert per["background/mse"].shape == (24,) and np.isfinite(per["background/mse"]).all()
    tz = json.loads((out / "tz_analysis.json").read_text())
    assert tz["pairs"] == 40 and math.isfinite(tz["r2_tx_to_tz"])
    for png in ("fig3_examples.png", "manipulations.png"):
        assert (out / png).stat().st_size > 1000


def test_tz_analysis_command_writes_json_and_figures(mnist_checkpoint, tmp_path):
    from lightning_modules import tz_analysis

    _, ckpt = mnist_checkpoint
    report = tz_analysis.main(["--ckpt", str(ckpt), "--out", str(tmp_path), "--pairs", "30", "--digit", "8", "--chunk", "16", "--no-progress"])
    saved = json.loads((tmp_path / "tz_analysis.json").read_text())
    assert saved["digits"]["8"]["digit_label"] == 8 and saved["digits"]["8"]["pairs"] == 30
    assert report["digits"]["8"]["r2_tx_to_tz"] == pytest.approx(saved["digits"]["8"]["r2_tx_to_tz"])
    for name in ("tz_angle_scatter_digit8.png", "tz_translation_density_digit8.png", "tz_densities_digit8.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert np.load(tmp_path / "tz_digit8.npz")["theta_z"].shape == (30, 2, 3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tz_analysis.main(["--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path)])


@pytest.mark.parametrize("config,background_rows", [("sprites_equivariant_cpu.yaml", True), ("reed_sprites_equivariant_cpu.yaml", False)])
def test_sprite_configs_test_from_checkpoint_with_analogy_tables(config, background_rows, cache_dir, tmp_path):
    common = [*TINY_ARGS, *data_args(cache_dir, config)]
    run_cli(["fit", "--config", str(CONFIGS / config), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
             "--trainer.default_root_dir", str(tmp_path), *common])
    ckpt = next(tmp_path.rglob("last.ckpt"))
    run_cli(["test", "--config", str(CONFIGS / config), "--ckpt_path", str(ckpt), "--trainer.limit_test_batches", "1",
             "--trainer.default_root_dir", str(tmp_path / "test"), "--model.init_args.analogy_clips", "6", *common])
    result = json.loads(next((tmp_path / "test").rglob("sprite_analogy.json")).read_text())
    expected = {"analogy", "static_baseline"} | ({"background_only", "character_only", "gray_canvas"} if background_rows else set())
    assert expected <= set(result) and (background_rows or "character_only" not in result)
    assert result["pairs"] == 6
    assert result["analogy"]["all"]["mse"]["n"] > 6 and "ssim" in result["analogy"]["all"]
    assert set(result["analogy"]) - {"all"} <= set(result["actions"])
    assert result["static_baseline"]["all"]["mse"]["n"] == result["analogy"]["all"]["mse"]["n"]


# ---------------------------------------------------------------------------- clear errors
class OtherModule(SceneMotionModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).mean()

    def optimizer(self):
        return torch.optim.SGD(self.parameters(), 0.1)


def test_checkpoint_of_another_model_fails_with_a_clear_message(tmp_path, cache_dir):
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(OtherModule(), DataLoader(TensorDataset(torch.rand(4, 2)), batch_size=2))
    path = tmp_path / "other.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(ValueError, match="saved by OtherModule, but the config builds EquivariantSceneModule"):
        EquivariantSceneModule.load_from_checkpoint(path)
    config = "mnist_equivariant_cpu.yaml"
    with pytest.raises(ValueError, match="saved by OtherModule"):
        run_cli(["test", "--config", str(CONFIGS / config), "--ckpt_path", str(path), "--trainer.default_root_dir", str(tmp_path),
                 *data_args(cache_dir, config)])


def test_checkpoint_of_other_widths_fails_with_a_clear_message(mnist_checkpoint):
    _, ckpt = mnist_checkpoint
    wider = EquivariantSceneModule(**{**TINY, "feature_channels": 12, "tz_head": "rigid"})  # the CPU config's head
    with pytest.raises(ValueError, match=r"different EquivariantSceneModule architecture \(feature_channels: checkpoint 8 vs config 12\)"):
        wider.on_load_checkpoint(torch.load(ckpt, weights_only=False))
    other_head = EquivariantSceneModule(**{**TINY, "tz_head": "affine"})
    with pytest.raises(ValueError, match=r"tz_head: checkpoint 'rigid' vs config 'affine'"):
        other_head.on_load_checkpoint(torch.load(ckpt, weights_only=False))


def test_wrong_image_size_fails_with_a_clear_message(cache_dir, tmp_path):
    dm = PairFramesDataModule(small_mnist(), batch_size=4, num_workers=0, cache_dir=cache_dir)
    trainer = pl.Trainer(fast_dev_run=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, accelerator="cpu")
    with pytest.raises(ValueError, match=r"data has 64x64 frames but the model is built for image_size=32: set model.init_args.image_size: 64"):
        trainer.fit(EquivariantSceneModule(image_size=32, **TINY), datamodule=dm)


def test_ground_truth_transform_ablation_uses_T_X_and_rejects_data_without_poses(cache_dir, tmp_path):
    model = EquivariantSceneModule(use_ground_truth_transform=True, **TINY)
    assert not any(p.requires_grad for p in model.scene.tz.parameters())
    t_x = torch.tensor([[[[0.9, -0.2, 0.1], [0.2, 0.9, -0.3]]]]).expand(2, 1, 2, 3)
    torch.testing.assert_close(model._ground_truth_theta({"T_X": t_x}), t_x[:, 0])
    with pytest.raises(ValueError, match="needs the batch key 'T_X'"):
        model._ground_truth_theta({"x1": torch.rand(2, 3, 64, 64)})
    with pytest.raises(ValueError, match="one character per clip.*num_digits: 1"):
        model._ground_truth_theta({"T_X": torch.rand(2, 2, 2, 3)})
    dm = PairFramesDataModule(ReedSprites(), batch_size=4, num_workers=0, cache_dir=cache_dir)
    trainer = pl.Trainer(fast_dev_run=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, accelerator="cpu")
    with pytest.raises(ValueError, match="needs ground-truth poses.*ReedSpritesDataset.*MovingMNIST"):
        trainer.fit(model, datamodule=dm)


def test_bad_hyperparameters_fail_clearly():
    with pytest.raises(ValueError, match="alpha_equiv must be >= 0"):
        EquivariantSceneModule(alpha_equiv=-1.0, **TINY)
    with pytest.raises(ValueError, match="lr must be > 0"):
        EquivariantSceneModule(lr=0.0, **TINY)


# ---------------------------------------------------------------------------- evaluation maths
def rotation(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)


def test_nearest_rotation_angle_recovers_the_rotation_of_a_polar_decomposition():
    g = torch.Generator().manual_seed(0)
    angles = [-40.0, -15.0, 0.0, 3.0, 12.0, 90.0]
    thetas = []
    for deg in angles:
        a = torch.randn(2, 2, generator=g, dtype=torch.float64)
        spd = a @ a.T + 0.5 * torch.eye(2, dtype=torch.float64)  # symmetric positive definite stretch
        thetas.append(torch.cat([rotation(deg) @ spd, torch.randn(2, 1, generator=g, dtype=torch.float64)], dim=1))
    got = tz.nearest_rotation_angle(torch.stack(thetas))
    torch.testing.assert_close(got, torch.tensor(angles, dtype=torch.float64), atol=1e-6, rtol=0)


def test_linear_regression_r2_is_one_for_linear_data_and_near_zero_for_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6))
    y = x @ rng.normal(size=(6, 6)) + rng.normal(size=6)
    assert tz.linear_regression_r2(x, y)["r2"] == pytest.approx(1.0, abs=1e-9)
    noise = tz.linear_regression_r2(x, rng.normal(size=(500, 6)))["r2"]
    assert 0.0 <= noise < 0.05
    # one output: matches 1 - SS_res / SS_tot computed by hand
    y1 = 2 * x[:, 0] + rng.normal(size=500)
    coef = np.polyfit(x[:, 0], y1, 1)
    manual = 1 - ((y1 - np.polyval(coef, x[:, 0])) ** 2).sum() / ((y1 - y1.mean()) ** 2).sum()
    assert tz.linear_regression_r2(x[:, 0], y1)["r2"] == pytest.approx(manual)


def test_masked_mse_averages_over_the_selected_pixels_only():
    pred, target = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    target[:, :, :2] = 1.0  # error 1 in the top half, 0 in the bottom half
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2] = 1.0
    torch.testing.assert_close(scene_metrics.per_example_mse(pred, target, mask), torch.ones(2))
    torch.testing.assert_close(scene_metrics.per_example_mse(pred, target, 1 - mask), torch.zeros(2))
    torch.testing.assert_close(scene_metrics.per_example_mse(pred, target), torch.full((2,), 0.5))
    assert torch.isnan(scene_metrics.per_example_mse(pred, target, torch.zeros(2, 1, 4, 4))).all()


def test_fig3_protocol_streams_chunks_and_computes_the_baselines(cache_dir):
    source = small_mnist()
    scene = EquivariantSceneModule(**TINY).scene
    result = ev.fig3_protocol(scene, source, count=12, chunk=5, seed=3, progress=False)
    per = result["per_example"]
    assert per["transformation/mse"].shape == per["no_object/mse"].shape == (12,)
    # the baselines are the paper's: a background alone vs the frame, another frame of the video vs the frame
    ex = source.fig3_examples(5, seed=3, start=5)
    np.testing.assert_allclose(per["no_object/mse"][5:10], scene_metrics.per_example_mse(ex["background1"], ex["x1_j"]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(per["video_frames/mse"][5:10], scene_metrics.per_example_mse(ex["other_frame"], ex["x1_j"]).numpy(), rtol=1e-6)
    assert (per["no_object/mse"] > 0).all()
    # the T_Z := T_X variant runs on the same examples
    gt = ev.fig3_protocol(scene, source, count=5, chunk=5, seed=3, use_ground_truth_transform=True, progress=False)
    assert gt["per_example"]["background/mse"].shape == (5,)


def test_tz_analysis_uses_the_generators_angle_convention(cache_dir):
    source = small_mnist()
    scene = EquivariantSceneModule(**TINY).scene
    res = tz.tz_analysis(scene, source, digit_index=0, background_index=1, pairs=20, chunk=8, progress=False)
    angles = np.concatenate([source.tz_analysis_pairs(n, 0, 1, start=s)["angle_deg"].numpy() for s, n in ((0, 8), (8, 8), (16, 4))])
    np.testing.assert_allclose(res["arrays"]["angle_x"], angles, atol=1e-3)
    # identity T_Z at initialisation: zero angle, zero translation, top-left entry 1
    np.testing.assert_allclose(res["arrays"]["angle_z"], 0.0, atol=1e-6)
    np.testing.assert_allclose(res["arrays"]["translation_norm_z"], 0.0, atol=1e-6)


def test_analogy_pairs_share_animation_and_view_but_not_the_character(cache_dir):
    source = SpritesOnBackgrounds(ReedSprites(), num_train_backgrounds=64)
    source.prepare(cache_dir=cache_dir)
    dataset = source.dataset("test", cache_dir=cache_dir)
    pairs = ev.analogy_pairs(dataset, seed=0, max_clips=40)
    assert len(pairs) == 40
    for a, b in pairs:
        assert dataset.clip_action[a] == dataset.clip_action[b] and dataset.clip_view[a] == dataset.clip_view[b]
        assert dataset.clip_character[a] != dataset.clip_character[b]
        assert dataset.clip_length(a) == dataset.clip_length(b)


def test_transform_noise_decays_linearly_and_is_off_for_the_ablation():
    model = EquivariantSceneModule(transform_noise=0.1, transform_noise_steps=100, **TINY)

    class FakeTrainer:
        global_step = 50

    model._trainer = FakeTrainer()
    assert model.current_transform_noise() == pytest.approx(0.05)
    FakeTrainer.global_step = 250
    assert model.current_transform_noise() == 0.0
    ablation = EquivariantSceneModule(transform_noise=0.1, use_ground_truth_transform=True, **TINY)
    assert ablation.current_transform_noise() == 0.0
    with pytest.raises(ValueError, match="transform_noise"):
        EquivariantSceneModule(transform_noise=-0.1, **TINY)
