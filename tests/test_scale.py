"""Scale and resume through the real CLI: DDP parity (2 gloo processes vs 1), bf16-mixed training,
and a crashed run resumed with ``--ckpt_path last`` ending exactly where an uninterrupted run ends."""

import copy
import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from cli import main

ROOT = Path(__file__).resolve().parents[1]

SCENE = [
    "--config", "configs/mnist_equivariant_cpu.yaml",
    "--data.init_args.num_workers=0", "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=8",
    "--data.init_args.source.init_args.train_clips_per_epoch=16", "--data.init_args.source.init_args.val_clips=8",
    "--data.init_args.source.init_args.test_clips=16", "--model.init_args.channels=[4, 8]", "--model.init_args.feature_channels=4",
    "--model.init_args.tz_channels=[4]", "--model.init_args.tz_hidden=8", "--model.init_args.channels_last=false",
    "--model.init_args.fig3_examples=16", "--model.init_args.fig3_chunk=8", "--model.init_args.tz_pairs=0",
]
MOTION = [
    "--config", "configs/sprites_hamiltonian_cpu.yaml",
    "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2", "--trainer.check_val_every_n_epoch=1",  # 1 would parse as 1.0 = 100%
    "--data.init_args.num_workers=0", "--data.init_args.batch_size=4", "--data.init_args.num_frames=4",
    "--data.init_args.source.init_args.image_size=32", "--model.init_args.image_size=32",
    "--model.init_args.encoder_channels=[4, 8]", "--model.init_args.encoder_strides=[2, 2]", "--model.init_args.encoder_hidden=[16]",
    "--model.init_args.decoder_hidden=[16]", "--model.init_args.decoder_channels=[8, 4]", "--model.init_args.decoder_strides=[2, 2]",
    "--model.init_args.frame_dim=16", "--model.init_args.content_dim=8", "--model.init_args.position_dim=2",
    "--model.init_args.channels_last=false", "--model.init_args.generation_length=4",
]
MODELS = {"scene": SCENE, "motion": MOTION}
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


class CrashAtStep(pl.Callback):
    """Simulates a killed job: raises after optimizer step ``step`` (checkpoints written so far stay)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"simulated crash after step {trainer.global_step}")


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["cli.py"])  # the CLI gets its arguments from `args`, not pytest's argv


def cli(*args: str, run: bool = True):
    return main([*args, *QUIET], run=run)


DDP_CHECKS = {  # model -> (extra arguments, metrics that must be there)
    "scene": ([], {"test/mse", "test/ssim", "test/loss", "test/fig3_transformation_mse"}),  # + the rank-0 Fig. 3 protocol
    "motion": (["--data.init_args.eval_batch_size=8", "--trainer.limit_test_batches=2"], {"test/ssim", "test/psnr", "test/recon_mse"}),
}


@pytest.mark.parametrize("model", ["scene", "motion"])
def test_ddp_two_gloo_processes_give_the_same_test_metrics_as_one(model, tmp_path, cache_dir):
    extra, expected = DDP_CHECKS[model]
    data = [*MODELS[model], f"--data.init_args.cache_dir={cache_dir}", *extra]
    cli("fit", *data, "--trainer.max_steps=4", f"--trainer.default_root_dir={tmp_path / 'fit'}")
    (ckpt,) = glob.glob(str(tmp_path / "fit" / "**" / "last.ckpt"), recursive=True)
    single = cli("test", *data, f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={tmp_path / 'one'}")
    one = {k: float(v) for k, v in single.trainer.callback_metrics.items() if k.startswith("test/")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SCENEMOTION_METRICS_FILE": str(tmp_path / "ddp.json"), "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "cli.py", "test", *data, *QUIET, f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={tmp_path / 'two'}",
         "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.callbacks+=callbacks.MetricsJSON"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    two = {k: v for k, v in json.loads((tmp_path / "ddp.json").read_text())["summary"].items() if k.startswith("test/")}
    assert expected <= set(one)
    assert set(two) == set(one)
    for key, value in one.items():
        assert two[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_ddp_fit_with_a_time_budget_keeps_the_ranks_in_step(tmp_path, cache_dir):
    """2 gloo processes fit the Hamiltonian CPU config, whose ``max_time`` makes the cosine decay
    broadcast rank 0's clock at every scheduler step: the run must not hang, and ``last.ckpt``
    (``LastCheckpointAtEnd``) holds the final step with the decay at its 5% floor."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "cli.py", "fit", *MOTION, *QUIET, f"--data.init_args.cache_dir={cache_dir}", "--trainer.max_steps=3",
         "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path}", "--trainer.accelerator=cpu",
         "--trainer.devices=2", "--trainer.strategy=ddp"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (ckpt,) = glob.glob(str(tmp_path / "**" / "last.ckpt"), recursive=True)
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 3
    assert [g["lr"] for g in state["optimizer_states"][0]["param_groups"]] == pytest.approx([0.05 * 2e-3, 0.05 * 1e-2])


@pytest.mark.parametrize("model", ["scene", "motion"])
def test_bf16_mixed_precision_trains(model, tmp_path, cache_dir):
    run = cli(*MODELS[model], f"--data.init_args.cache_dir={cache_dir}", "--trainer.precision=bf16-mixed", "--trainer.max_steps=2",
              "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path}", run=False)
    before = copy.deepcopy(run.model.state_dict())
    run.trainer.fit(run.model, datamodule=run.datamodule)
    assert run.trainer.global_step == 2
    assert math.isfinite(float(run.trainer.callback_metrics["train/loss"]))
    after = run.model.state_dict()
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert changed and all(torch.isfinite(after[k]).all() for k in changed)
    assert all(after[k].dtype == torch.float32 for k in changed)  # mixed: weights stay fp32


RESUME_CASES = {  # checkpointing -> (extra ModelCheckpoint args, crash after step, checkpoint the resume starts from)
    "epoch_end": ({}, 10, "epoch=1-step=8.ckpt"),  # saved after each validation (every 4 steps)
    "mid_epoch": ({"every_n_train_steps": 2}, 11, "epoch=2-step=10.ckpt"),  # 2 batches into the third epoch
}


@pytest.mark.parametrize("checkpointing", ["epoch_end", "mid_epoch"])
@pytest.mark.parametrize("model", ["scene", "motion"])
def test_crashed_run_resumed_from_last_matches_the_uninterrupted_run(model, checkpointing, tmp_path, cache_dir):
    """12 steps of 4 batches per epoch; ``StepSeed`` makes the random draws a function of the step.
    The run crashes part-way and is resumed with ``--ckpt_path last``: same weights, same metrics.
    (``mid_epoch`` needs the DataModule to skip the batches the checkpoint has already trained on.)"""
    checkpoint_args, crash_step, resume_from = RESUME_CASES[checkpointing]

    def run(name: str, *extra: str, crash: bool = False):
        callbacks = [
            {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
             "init_args": {"dirpath": str(tmp_path / name / "checkpoints"), "save_last": True, "save_top_k": 1,
                           "save_on_train_epoch_end": False, **checkpoint_args}},
            "callbacks.StepSeed",
        ]
        if crash:
            callbacks.append({"class_path": f"{__name__}.CrashAtStep", "init_args": {"step": crash_step}})
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
        return cli("fit", *MODELS[model], "--config", str(tmp_path / f"{name}.yaml"), f"--data.init_args.cache_dir={cache_dir}",
                   "--trainer.max_steps=12", f"--trainer.default_root_dir={tmp_path / name}", *extra)

    whole = run("whole")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run("resumed", crash=True)
    assert sorted(Path(p).name for p in glob.glob(str(tmp_path / "resumed" / "checkpoints" / "*.ckpt"))) == [resume_from, "last.ckpt"]
    resumed = run("resumed", "--ckpt_path=last")
    assert resumed.trainer.global_step == whole.trainer.global_step == 12
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    metrics = [k for k in whole.trainer.callback_metrics if k.startswith("val/")]
    assert metrics
    for key in metrics:
        assert float(resumed.trainer.callback_metrics[key]) == float(whole.trainer.callback_metrics[key]), key
