"""Image-grid callbacks, the offline-safe W&B logger and the CI progress bar, on tiny real models."""

import glob
import time

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger

from callbacks import AnalogyGrid, GenerationGrid, ProgressBar, SwapGrid, WandbLogger
from callbacks.logging import wandb_offline_reason
from datamodules import ActionSequenceDataModule, DSVAESprites, MovingMNIST, PairFramesDataModule
from lightning_modules.equivariant_module import EquivariantSceneModule
from lightning_modules.hamiltonian_module import HamiltonianMotionModule

PAD = 2


def tiny_scene_model() -> EquivariantSceneModule:
    torch.manual_seed(0)
    return EquivariantSceneModule(image_size=64, channels=[4, 8], feature_channels=4, tz_channels=[4], tz_hidden=8, evaluate=False)


@pytest.fixture(scope="module")
def scene(cache_dir):
    dm = PairFramesDataModule(MovingMNIST(num_digits=1, train_clips_per_epoch=16, val_clips=16, test_clips=16),
                              batch_size=4, num_workers=0, cache_dir=cache_dir)
    return tiny_scene_model(), dm


@pytest.fixture(scope="module")
def motion(cache_dir):
    torch.manual_seed(0)
    model = HamiltonianMotionModule(
        num_actions=3, position_dim=2, content_dim=8, frame_dim=16, image_size=32,
        encoder_channels=[4, 8], encoder_strides=[2, 2], encoder_hidden=[16],
        decoder_hidden=[16], decoder_channels=[8, 4], decoder_strides=[2, 2], kernel_size=3, val_generation=False,
    )
    dm = ActionSequenceDataModule(DSVAESprites(image_size=32), num_frames=4, batch_size=4, num_workers=0, cache_dir=cache_dir)
    return model, dm


def validate(model, dm, callbacks, root, loggers=None):
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=loggers if loggers is not None else False, callbacks=callbacks,
        limit_val_batches=1, default_root_dir=str(root), enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.validate(model, datamodule=dm, verbose=False)
    return trainer


def grid_size(rows, columns, side):
    """Pixel size (width, height) of a make_grid of rows x columns images of side x side."""
    return columns * (side + PAD) + PAD, rows * (side + PAD) + PAD


def cell(image: np.ndarray, row: int, column: int, side: int) -> np.ndarray:
    y, x = PAD + row * (side + PAD), PAD + column * (side + PAD)
    return image[y : y + side, x : x + side]


def as_uint8(frame: torch.Tensor) -> np.ndarray:
    return (frame.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_swap_grid_motion_swap_layout_and_rows(motion, tmp_path):
    model, dm = motion
    grid = SwapGrid(num_examples=2, gif=True)
    validate(model, dm, [grid], tmp_path)
    assert grid.last_layout == (8, 4)  # 2 pairs x (a, b, ab, ba), 4 frames
    png, gif = grid.last_files
    assert png == tmp_path / "images" / "swap_grid_step0.png"
    image = np.asarray(Image.open(png))
    assert image.shape[:2][::-1] == grid_size(8, 4, 32)
    # rows 0/1 of a pair are the fixed ground-truth clips; rows 2/3 the model's swaps
    ex = grid.examples(None, "val")
    a, b = ex["frames"][:2], ex["frames"][2:]
    ab, ba = model.swap_motion(a, b, ex["action"][:2], ex["action"][2:])
    for pair in range(2):
        for t in range(4):
            assert np.array_equal(cell(image, 4 * pair, t, 32), as_uint8(a[pair, t]))
            assert np.array_equal(cell(image, 4 * pair + 1, t, 32), as_uint8(b[pair, t]))
            assert np.abs(cell(image, 4 * pair + 2, t, 32).astype(int) - as_uint8(ab[pair, t]).astype(int)).max() <= 1
            assert np.abs(cell(image, 4 * pair + 3, t, 32).astype(int) - as_uint8(ba[pair, t]).astype(int)).max() <= 1
    animation = Image.open(gif)
    assert animation.n_frames == 4 and animation.size == grid_size(8, 1, 32)


def test_generation_grid_has_one_row_per_action_and_logs_to_tensorboard(motion, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, dm = motion
    grid = GenerationGrid(num_examples=2, length=6)
    tb = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    validate(model, dm, [grid], tmp_path, loggers=[tb])
    assert grid.last_layout == (6, 6)  # 2 frames x 3 actions, 6 generated frames
    assert grid.row_labels == ["walk", "spellcast", "slash"]
    assert grid.last_files == [tmp_path / "tb" / "version_0" / "images" / "generation_grid_step0.png"]
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0}).Reload()
    (logged,) = events.Images("val/generation_grid")
    assert (logged.width, logged.height) == grid_size(6, 6, 32)


def test_examples_are_fixed_by_the_seed(motion, tmp_path):
    model, dm = motion
    first, again, other = SwapGrid(num_examples=2), SwapGrid(num_examples=2), SwapGrid(num_examples=2, seed=1)
    validate(model, dm, [first, again, other], tmp_path)
    frames = [g.examples(None, "val")["frames"] for g in (first, again, other)]
    assert torch.equal(frames[0], frames[1])
    assert not torch.equal(frames[0], frames[2])


def test_background_swap_and_analogy_grids_of_the_scene_model(scene, tmp_path):
    model, dm = scene
    swap, analogy = SwapGrid(num_examples=2), AnalogyGrid(num_examples=1, gif=True)
    validate(model, dm, [swap, analogy], tmp_path)
    assert swap.last_layout == (8, 5)  # Moving MNIST clips have 5 frames
    assert analogy.last_layout == (6, 5)  # x1, x2, x3, background swap, animation transfer, both
    image = np.asarray(Image.open(analogy.last_files[0]))
    assert image.shape[:2][::-1] == grid_size(6, 5, 64)
    x1, x2, x3 = analogy.examples(None, "val")["frames"]
    expected = model.scene.swap_background_and_animation(x1[:1].expand(5, -1, -1, -1), x3[:1].expand(5, -1, -1, -1), x3, x2)
    for t in range(5):
        assert np.array_equal(cell(image, 2, t, 64), as_uint8(x3[t]))
        assert np.abs(cell(image, 5, t, 64).astype(int) - as_uint8(expected[t]).astype(int)).max() <= 1
    assert Image.open(analogy.last_files[1]).n_frames == 5


def test_grids_refuse_models_without_the_needed_methods(scene, motion, tmp_path):
    with pytest.raises(TypeError, match=r"AnalogyGrid needs a scene model \(swap_background, transfer_animation"):
        validate(*motion, [AnalogyGrid()], tmp_path)
    with pytest.raises(TypeError, match=r"GenerationGrid needs a motion model \(generate\); EquivariantSceneModule does not"):
        validate(*scene, [GenerationGrid()], tmp_path)
    with pytest.raises(ValueError, match="num_examples must be >= 1"):
        SwapGrid(num_examples=0)


def test_offline_wandb_logger_gets_the_grid_without_network_or_key(motion, tmp_path, monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert "no W&B API key" in wandb_offline_reason()
    model, dm = motion
    logger = WandbLogger(save_dir=str(tmp_path / "wb"), project="scenemotion-test")
    grid = SwapGrid(num_examples=1)
    start = time.monotonic()
    try:
        validate(model, dm, [grid], tmp_path, loggers=[logger])
    finally:
        wandb.finish()
    assert time.monotonic() - start < 60
    assert "no W&B API key" in logger.offline_reason
    (run,) = glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*"))
    media = glob.glob(f"{run}/files/media/images/val/swap_grid_*.png")
    assert len(media) == 1 and Image.open(media[0]).size == grid_size(4, 4, 32)
    assert grid.last_files == [tmp_path / "images" / "swap_grid_step0.png"]  # no TB/CSV logger: default_root_dir


def test_unreachable_wandb_host_means_offline_quickly(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: connection refused
    start = time.monotonic()
    reason = wandb_offline_reason(probe_timeout=2.0)
    assert reason is not None and "127.0.0.1:9 is not reachable" in reason
    assert time.monotonic() - start < 5


def test_plain_progress_bar_prints_readable_lines(scene, tmp_path, capsys):
    model, dm = tiny_scene_model(), scene[1]
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, max_steps=4, limit_val_batches=1, enable_model_summary=False,
        callbacks=[ProgressBar(mode="plain", log_every_n_steps=2)], default_root_dir=str(tmp_path), enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=dm)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert "\r" not in out and "it/s]" not in out  # no tqdm redraws
    assert lines[0].startswith("[train] epoch 0  step 2/4 (50%)") and "train/scene_mse=" in lines[0]
    assert any(line.startswith("[val] epoch") and "val/scene=" in line for line in lines)
    assert any(line.startswith("[train] epoch 0  step 4/4 (100%)") for line in lines)
    with pytest.raises(ValueError, match="mode must be"):
        ProgressBar(mode="fancy")


def test_outputs_are_written_atomically(tmp_path):
    """Result files appear whole or not at all: a failing writer leaves neither the target nor a
    temporary file behind, and a successful one replaces the target in one rename."""
    from utils.io import atomic_output, atomic_write_text, save_image_atomic

    target = tmp_path / "out" / "grid.png"
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert not target.exists() and list(target.parent.iterdir()) == []
    save_image_atomic(Image.new("RGB", (4, 4), "red"), target)
    assert Image.open(target).getpixel((0, 0)) == (255, 0, 0)
    atomic_write_text(tmp_path / "out" / "r.json", "{}\n")
    assert sorted(p.name for p in target.parent.iterdir()) == ["grid.png", "r.json"]
