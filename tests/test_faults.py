"""The fault matrix (issue 14): what bad input and faults do, in one place.

| fault                                              | behaviour                                                   |
|----------------------------------------------------|-------------------------------------------------------------|
| 1. ``fast_dev_run`` after a real ``fit``           | writes no checkpoint; ``last`` never resolves to a smoke    |
|                                                    | test's or another model's checkpoint; no ``last-vN`` copies |
| 2. kill while a checkpoint is written              | temp file beside the target, then rename; a corrupt         |
|                                                    | ``last`` falls back to the newest intact checkpoint, says so|
| 3. cache without meta / truncated / flipped bytes  | rebuilt with a message (sizes on every open, checksums in   |
|    / interrupted build                             | ``assets verify``); stale temp folders removed              |
| 4. 16-bit grayscale PNG frames                     | decoded with their real values                              |
| 5. bad option values on the command line           | ``error: <message>``, exit 2; ``SCENEMOTION_TRACEBACK=1``   |
|                                                    | for the traceback; zero widths are refused by name          |
| 6. wrong-model / truncated / random / malicious    | one message naming the file and what it is, on every load   |
|    checkpoint                                      | path; weights-only loads; the pickle runs nothing           |
| 7. ``datamodules.preview`` arguments               | checked; the real clip count is reported                    |
| 8. file permissions                                | the umask is respected (not 0600 / 0700)                    |
| 9. YAML errors, ``assets verify``, sweep messages  | name the file; all bad files; no empty hints; no duplicates |

Everything runs in temporary folders on copies of the assets, with tiny models and data.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import cli
from callbacks.resume import AtomicCheckpointIO, resolve_last_checkpoint
from datamodules import MovingMNIST, assets
from datamodules import cache as cache_mod
from datamodules.cache import cache_key, cached_arrays, verify_caches
from datamodules.mnist import load_mnist
from datamodules.video_folder import VideoFolder, read_clip
from utils.checkpoints import MODEL_TAG_KEY, CheckpointError, read_checkpoint
from utils.errors import user_error_message
from utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
SCENE = [
    "--config", "configs/mnist_equivariant_cpu.yaml",
    "--data.init_args.num_workers=0", "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=8",
    "--data.init_args.source.init_args.train_clips_per_epoch=8", "--data.init_args.source.init_args.val_clips=8",
    "--data.init_args.source.init_args.test_clips=8", "--model.init_args.channels=[4, 8]", "--model.init_args.feature_channels=4",
    "--model.init_args.tz_channels=[4]", "--model.init_args.tz_hidden=8", "--model.init_args.channels_last=false",
    "--model.init_args.fig3_examples=8", "--model.init_args.fig3_chunk=8", "--model.init_args.tz_pairs=0",
    "--trainer.callbacks=[]", "--trainer.max_time=null", "--trainer.logger=false",
]
CKPT_CALLBACKS = [  # the configs' two checkpoints, at a test's scale: best by val/scene, and last every 2 steps
    "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.filename=best-{step}", "--trainer.callbacks.monitor=val/scene",
    "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.save_last=true", "--trainer.callbacks.every_n_train_steps=2",
    "--trainer.callbacks.save_on_train_epoch_end=false", "--trainer.callbacks+=callbacks.LastCheckpointAtEnd",
]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["cli.py"])


def scene_cli(subcommand: str | None, root: Path, cache_dir: str, *extra: str):
    """The CLI on the tiny scene config; ``subcommand=None`` only builds the trainer and model (``run=False``)."""
    return cli.main([*([subcommand] if subcommand else []), *SCENE, *CKPT_CALLBACKS, f"--data.init_args.cache_dir={cache_dir}",
                     f"--trainer.default_root_dir={root}", *QUIET, *extra], run=subcommand is not None)


@pytest.fixture(scope="module")
def scene_run(tmp_path_factory, cache_dir):
    """A real 4-step ``fit`` of a tiny scene model (2 epochs of 2 steps, validation after each)."""
    root = tmp_path_factory.mktemp("scene_run")
    scene_cli("fit", root, cache_dir, "--trainer.max_steps=4")
    return root


def copy_run(scene_run: Path, tmp_path: Path) -> Path:
    root = tmp_path / "run"
    shutil.copytree(scene_run, root)
    return root


def checkpoints(root: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (root / "checkpoints").glob("*.ckpt")}


def retagged(source: Path, dest: Path, **changes) -> Path:
    """A copy of a checkpoint with some top-level entries changed (another model's tag, a step)."""
    checkpoint = torch.load(source, weights_only=True)
    checkpoint.update(changes)
    torch.save(checkpoint, dest)
    return dest


class Evil:
    """Unpickling this runs ``touch <marker>``: a weights-only load must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "global_step": 10**6, MODEL_TAG_KEY: "EquivariantSceneModule", "x": Evil(marker)}, path)
    return path


def truncated(source: Path, dest: Path) -> Path:
    data = source.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


# ============================================================================ 1. smoke tests and `last`
def test_fast_dev_run_writes_no_checkpoint_and_reruns_overwrite_last(scene_run, tmp_path, cache_dir):
    root = copy_run(scene_run, tmp_path)
    before = checkpoints(root)
    assert "last.ckpt" in before and any(n.startswith("best-step=") for n in before)
    scene_cli("fit", root, cache_dir, "--trainer.fast_dev_run=true")
    assert checkpoints(root) == before  # Lightning wrote last-v1.ckpt at step 1 here
    scene_cli("fit", root, cache_dir, "--trainer.max_steps=2")  # a fresh run in the same folder
    names = set(checkpoints(root))
    assert not [n for n in names if "-v" in n], names  # no last-v1.ckpt / best-step=2-v1.ckpt pile-up
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_last_skips_smoke_tests_and_other_models(scene_run, tmp_path, cache_dir, capsys):
    root = copy_run(scene_run, tmp_path)
    last = root / "checkpoints" / "last.ckpt"
    retagged(last, root / "checkpoints" / "last-v1.ckpt", global_step=1)  # an old smoke test's copy (newest file)
    retagged(last, root / "checkpoints" / "last-v2.ckpt", global_step=999, **{MODEL_TAG_KEY: "HamiltonianMotionModule"})
    run = scene_cli(None, root, cache_dir)
    assert resolve_last_checkpoint(run.trainer, "EquivariantSceneModule") == str(last)
    assert "last-v2.ckpt was saved by HamiltonianMotionModule" in capsys.readouterr().err
    resumed = scene_cli("fit", root, cache_dir, "--trainer.max_steps=5", "--ckpt_path=last")
    assert resumed.trainer.global_step == 5  # 4 restored + 1, not 1 + 4


# ============================================================================ 2. atomic writes, corrupt `last`
def test_checkpoints_are_written_beside_the_target_and_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    elsewhere = tmp_path / "tmpdir"  # $TMPDIR on another filesystem: nothing may be staged there
    elsewhere.mkdir()
    monkeypatch.setenv("TMPDIR", str(elsewhere))
    monkeypatch.setattr("tempfile.tempdir", str(elsewhere))
    target = tmp_path / "ckpts" / "last.ckpt"
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((Path(a), Path(b))), real_replace(a, b))[1])
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, target)
    assert renames and all(a.parent == b.parent == target.parent for a, b in renames)
    assert not list(elsewhere.iterdir())

    def killed(obj, f, *args, **kwargs):  # the process dies half-way through the write
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, target)
    assert read_checkpoint(target)["global_step"] == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_corrupt_last_falls_back_to_the_newest_intact_checkpoint(scene_run, tmp_path, cache_dir, capsys):
    root = copy_run(scene_run, tmp_path)
    ckpts = root / "checkpoints"
    last = ckpts / "last.ckpt"
    intact = retagged(last, ckpts / "epoch=1-step=4.ckpt")
    truncated(last, last)
    run = scene_cli(None, root, cache_dir)
    assert resolve_last_checkpoint(run.trainer, "EquivariantSceneModule") == str(intact)
    err = capsys.readouterr().err
    assert "last.ckpt is truncated" in err and f"Resuming from {intact} (step 4)" in err
    for path in ckpts.glob("*.ckpt"):  # nothing intact left: an error, not a silent fresh start
        truncated(path, path)
    with pytest.raises(CheckpointError, match="found no intact EquivariantSceneModule checkpoint"):
        resolve_last_checkpoint(run.trainer, "EquivariantSceneModule")


# ============================================================================ 3. dataset caches
def _toy():
    calls = []

    def build():
        calls.append(1)
        return {"frames": np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8), "labels": np.arange(4, dtype=np.int64)}

    return build, calls


def test_cache_meta_records_sizes_and_checksums(tmp_path):
    build, _ = _toy()
    cached_arrays("toy", {"n": 4}, build, tmp_path)
    folder = tmp_path / f"toy-{cache_key({'n': 4})}"
    meta = json.loads((folder / "meta.json").read_text())
    for key, info in meta["files"].items():
        path = folder / f"{key}.npy"
        assert info["bytes"] == path.stat().st_size
        assert info["sha256"] == assets.sha256_of(path)
        assert info["shape"] == list(np.load(path).shape)


@pytest.mark.parametrize("fault", ["no meta.json", "truncated frames.npy", "missing labels.npy"])
def test_broken_cache_is_rebuilt_with_a_message(fault, tmp_path, capsys):
    build, calls = _toy()
    good = {k: np.array(v) for k, v in cached_arrays("toy", {"n": 4}, build, tmp_path).items()}
    folder = tmp_path / f"toy-{cache_key({'n': 4})}"
    if fault == "no meta.json":
        (folder / "meta.json").unlink()
    elif fault == "truncated frames.npy":
        data = (folder / "frames.npy").read_bytes()
        (folder / "frames.npy").write_bytes(data[:-10])
    else:
        (folder / "labels.npy").unlink()
    again = cached_arrays("toy", {"n": 4}, build, tmp_path)
    assert calls == [1, 1]
    assert all(np.array_equal(again[k], good[k]) for k in good)
    assert f"{folder}: " in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # nothing left beside it


def test_real_cache_with_a_truncated_array_is_rebuilt(tmp_path, capsys):
    source = MovingMNIST(num_digits=1, num_frames=3, train_clips_per_epoch=4, val_clips=4, test_clips=4)
    first = np.array(source.dataset("test", cache_dir=tmp_path).get(0)["frames"])
    (frames,) = [f / "frames.npy" for f in tmp_path.glob("moving_mnist-*")
                 if json.loads((f / "meta.json").read_text())["params"].get("split") == "test"]
    frames.write_bytes(frames.read_bytes()[: frames.stat().st_size // 2])
    again = np.array(source.dataset("test", cache_dir=tmp_path).get(0)["frames"])
    assert np.array_equal(first, again)
    assert "frames.npy has" in capsys.readouterr().err


def test_assets_verify_finds_flipped_bytes_in_a_cache_and_removes_it(tmp_path, monkeypatch, capsys):
    build, calls = _toy()
    cache = tmp_path / "cache"
    cached_arrays("toy", {"n": 4}, build, cache)
    frames = next(cache.glob("toy-*/frames.npy"))
    data = bytearray(frames.read_bytes())
    data[-5] ^= 0xFF  # same size: every open still serves it, only the checksum sees it
    frames.write_bytes(bytes(data))
    monkeypatch.setenv("SCENEMOTION_CACHE", str(cache))
    assets.main(["verify"])  # the real assets are intact; only the cache is bad
    out = capsys.readouterr().out
    assert f"BAD cache {frames.parent}: frames.npy does not match its SHA-256" in out and "removed" in out
    assert verify_caches(cache) == []
    cached_arrays("toy", {"n": 4}, build, cache)
    assert calls == [1, 1] and [p for _, p in verify_caches(cache)] == [None]


def test_temporary_folders_of_interrupted_builds_are_removed(tmp_path):
    key = cache_key({"n": 4})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname().replace(".", "_")
    stale_pid = tmp_path / f".toy-{key}.{host}-{dead.pid}.x1"
    stale_old = tmp_path / f".toy-{key}.a1b2c3"  # no owner tag, two days old
    live = tmp_path / f".toy-{key}.{host}-{os.getpid()}.x2"  # a build in progress in this process
    for folder in (stale_pid, stale_old, live):
        folder.mkdir()
        (folder / "frames.npy").write_bytes(b"partial")
    os.utime(stale_old, (0, os.path.getmtime(stale_old) - 2 * 86400))
    build, _ = _toy()
    cached_arrays("toy", {"n": 4}, build, tmp_path)
    assert not stale_pid.exists() and not stale_old.exists() and live.exists()


# ============================================================================ 4. 16-bit frames
def test_16_bit_grayscale_png_frames_keep_their_values(tmp_path):
    digits, _ = load_mnist("test")
    clip = tmp_path / "videos" / "clip0"
    clip.mkdir(parents=True)
    for t, digit in enumerate(digits[:3]):
        Image.fromarray(digit.astype(np.uint16) * 257).save(clip / f"{t:03d}.png")  # 16-bit PNG, same values
        assert Image.open(clip / f"{t:03d}.png").mode.startswith("I")
    frames = read_clip(clip, image_size=28)
    assert frames.shape == (3, 28, 28, 3)
    for t in range(3):
        assert np.array_equal(frames[t, :, :, 0], digits[t]) and np.array_equal(frames[t, :, :, 2], digits[t])
    source = VideoFolder(tmp_path / "videos", image_size=28, val_fraction=0.0, test_fraction=0.0)
    item = source.dataset("train", cache_dir=tmp_path / "cache").get(0)
    assert item["frames"].shape == (3, 3, 28, 28) and 0.05 < float(item["frames"].mean()) < 0.5  # not all white


# ============================================================================ 5. command-line messages
HAMILTONIAN = ["--config", "configs/sprites_hamiltonian_cpu.yaml"]
EQUIVARIANT = ["--config", "configs/mnist_equivariant_cpu.yaml"]
BAD_VALUES = {  # option -> (config, the message)
    "--data.init_args.batch_size=-1": (EQUIVARIANT, "batch_size must be >= 1, got -1"),
    "--data.init_args.source.init_args.actions=[jump]": (HAMILTONIAN, "unknown action 'jump'"),
    "--data.init_args.source.init_args.image_size=4": (HAMILTONIAN, "image_size must be an integer between 8 and 1024"),
    "--data.init_args.source.init_args.num_digits=0": (EQUIVARIANT, "num_digits must be an integer >= 1, got 0"),
    "--model.init_args.alpha_equiv=-1": (EQUIVARIANT, "alpha_equiv must be >= 0"),
    "--model.init_args.content_dim=0": (HAMILTONIAN, "content_dim must be an integer >= 1, got 0"),
    "--model.init_args.frame_dim=0": (HAMILTONIAN, "frame_dim must be an integer >= 1, got 0"),
    "--model.init_args.position_dim=0": (HAMILTONIAN, "position_dim must be an integer >= 1, got 0"),
    "--model.init_args.motion_hidden=0": (HAMILTONIAN, "motion_hidden must be an integer >= 1, or null"),
    "--model.init_args.tz_hidden=0": (EQUIVARIANT, "tz_hidden must be an integer >= 1"),
}


@pytest.mark.parametrize("option", list(BAD_VALUES))
def test_a_bad_value_prints_one_message_and_exits_2(option, tmp_path, capsys):
    config, message = BAD_VALUES[option]
    code = cli.run(["fit", *config, option, f"--trainer.default_root_dir={tmp_path}", "--trainer.fast_dev_run=true", *QUIET])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines[-1].startswith("error: ") and message in lines[-1], err
    assert "Traceback" not in err and "Namespace(" not in err


def test_the_entry_point_exits_2_and_shows_the_traceback_only_on_request(tmp_path, monkeypatch):
    args = ["fit", *EQUIVARIANT, "--data.init_args.batch_size=-1", f"--trainer.default_root_dir={tmp_path}"]
    proc = subprocess.run([sys.executable, "cli.py", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SCENEMOTION_TRACEBACK": ""})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: batch_size must be >= 1, got -1."
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        cli.run(args)


def test_bugs_keep_their_traceback():
    with pytest.raises(ValueError) as info:
        np.zeros(2).reshape(3)  # raised inside numpy, not a project check
    assert user_error_message(info.value) is None
    with pytest.raises(KeyError) as info:
        cache_mod.cache_problem.__globals__["no such name"]
    assert user_error_message(info.value) is None


# ============================================================================ 6. checkpoint messages
@pytest.fixture
def bad_checkpoints(scene_run, tmp_path):
    """``{kind: path}``: another model's, truncated, random bytes and a malicious pickle (with its marker)."""
    good = scene_run / "checkpoints" / "last.ckpt"
    files = {
        "another model": retagged(good, tmp_path / "motion.ckpt", **{MODEL_TAG_KEY: "HamiltonianMotionModule"}),
        "truncated": truncated(good, tmp_path / "truncated.ckpt"),
        "random bytes": tmp_path / "random.ckpt",
        "malicious": malicious(tmp_path / "evil.ckpt", tmp_path / "pwned"),
    }
    files["random bytes"].write_bytes(np.random.default_rng(0).bytes(4096))
    return files


EXPECTED = {
    "another model": "was saved by HamiltonianMotionModule",
    "truncated": "is truncated or damaged",
    "random bytes": "is not a PyTorch checkpoint",
    "malicious": "holds Python objects (posix.system) beyond tensors and plain data, so it was not loaded",
}


def _load_paths(cache_dir, tmp_path):
    from lightning_modules.judge_module import load_judge
    from lightning_modules.tz_analysis import load_scene

    def cli_test(path):
        code = cli.run(["test", *SCENE, f"--ckpt_path={path}", f"--data.init_args.cache_dir={cache_dir}",
                        f"--trainer.default_root_dir={tmp_path / 'cli'}", *QUIET])
        assert code == 2
        raise CheckpointError("reported")

    return {
        "read_checkpoint": lambda p: read_checkpoint(p, expected="EquivariantSceneModule"),
        "checkpoint io": lambda p: AtomicCheckpointIO().load_checkpoint(p),
        "judge_checkpoint": lambda p: load_judge(str(p)),
        "tz_analysis --ckpt": lambda p: load_scene(p, torch.device("cpu")),
        "cli --ckpt_path": cli_test,
    }


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_every_load_path_names_the_file_and_what_it_is(kind, bad_checkpoints, cache_dir, tmp_path, capsys):
    path = bad_checkpoints[kind]
    for name, load in _load_paths(cache_dir, tmp_path).items():
        if kind == "another model" and name in ("checkpoint io",):
            continue  # the IO reads files; the model check is the module's (CheckpointGuardMixin)
        with pytest.raises(CheckpointError) as info:
            load(path)
        message = capsys.readouterr().err.strip() if name == "cli --ckpt_path" else str(info.value)
        assert str(path) in message and EXPECTED[kind] in message, (name, message)
        assert "weights_only" not in message and "arbitrary code" not in message, (name, message)
    assert not (tmp_path / "pwned").exists()


def test_a_malicious_last_checkpoint_runs_nothing(scene_run, tmp_path, cache_dir, capsys):
    root = copy_run(scene_run, tmp_path)
    malicious(root / "checkpoints" / "last-v9.ckpt", tmp_path / "pwned")
    run = scene_cli(None, root, cache_dir)
    assert resolve_last_checkpoint(run.trainer, "EquivariantSceneModule") == str(root / "checkpoints" / "last.ckpt")
    assert "last-v9.ckpt holds Python objects" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()


# ============================================================================ 7. preview arguments
def _preview(*args):
    from datamodules import preview

    return preview.main(list(args))


@pytest.mark.parametrize("args, message", [
    (["--source", "datamodules.MovingMNIST", "--clips", "0"], "--clips must be >= 1"),
    (["--source", "datamodules.MovingMNIST", "--frames", "0"], "--frames must be >= 1"),
    (["--source", "datamodules.MovingMNIST", "--clips", "-3"], "--clips must be >= 1"),
    (["--config", "configs/no_such.yaml"], "config configs/no_such.yaml does not exist"),
    (["--config", "configs/mnist_equivariant_cpu.yaml", "--source", "datamodules.DSVAESprites"], "--source and --config both"),
])
def test_preview_checks_its_arguments(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        _preview(*args, "--out", str(tmp_path / "p.png"))
    assert info.value.code not in (0, None)
    assert message in (capsys.readouterr().err + str(info.value.code))
    assert not (tmp_path / "p.png").exists()


def test_preview_reports_the_real_clip_count_and_config_overrides(tmp_path, capsys):
    out = _preview("--config", "configs/mnist_equivariant_cpu.yaml", "--source.init_args.test_clips", "3",
                   "--clips", "5", "--frames", "2", "--cache_dir", str(tmp_path / "cache"), "--out", str(tmp_path / "p.png"))
    printed = capsys.readouterr().out
    assert "3 clips of the test split of MovingMNIST (the split has only 3)" in printed
    assert Image.open(out).size[1] == 3 * 66 + 2  # three rows of 64-pixel frames with 2-pixel padding


# ============================================================================ 8. permissions
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_follow_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        text = atomic_write_text(tmp_path / "out" / "results.json", "{}")
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "out" / "last.ckpt")
        build, _ = _toy()
        cached_arrays("toy", {"n": 4}, build, tmp_path / "cache")
        folder = next((tmp_path / "cache").glob("toy-*"))
    finally:
        os.umask(old)
    for path in (text, tmp_path / "out" / "last.ckpt", folder / "meta.json", folder / "frames.npy"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask


# ============================================================================ 9. minor messages
def test_yaml_syntax_error_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: [1, 2\nmodel: {\n")
    assert cli.run(["fit", "--config", str(bad)]) == 2
    assert f"error: {bad} is not valid YAML (line 3, column 6)" in capsys.readouterr().err


def test_assets_verify_reports_every_bad_file(tmp_path, monkeypatch, capsys):
    root = assets.resolve_assets_root()
    shutil.copytree(root / "mnist", tmp_path / "mnist")
    monkeypatch.setenv("SCENEMOTION_CACHE", str(tmp_path / "cache"))
    bad = ["train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    for name in bad:
        (tmp_path / "mnist" / name).write_bytes(b"not mnist")
    with pytest.raises(SystemExit, match="more problem"):
        assets.main(["verify", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert all(f"{tmp_path / 'mnist' / name} is corrupt" in out for name in bad)
    assert "Asset folder" in out and "lpc" in out  # the groups after the first bad one are checked too


def test_sweep_schema_problems_are_listed_once():
    sweep = pytest.importorskip("sweep")
    pytest.importorskip("sweeps")
    problems = sweep.schema_violations({"method": "random", "program": "cli.py", "parameters": {"x": {"min": 1, "max": 0.5}}})
    assert len(problems) == len(set(problems)) and any("min 1 is not less than max 0.5" in p for p in problems)
    assert sweep.schema_violations({"method": "grid", "program": "cli.py", "parameters": {"x": 3}})  # a list, not a traceback


def test_sweep_prints_no_sync_hint_without_offline_runs(tmp_path, monkeypatch, capsys):
    sweep = pytest.importorskip("sweep")
    pytest.importorskip("sweeps")
    program = tmp_path / "trial.py"
    program.write_text("import json, os\njson.dump({'summary': {'val/x': 1.0}, 'history': [{'val/x': 1.0}]}, "
                       f"open(os.environ['{sweep.METRICS_FILE_ENV}'], 'w'))\n")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"method": "grid", "program": str(program), "metric": {"name": "val/x", "goal": "minimize"},
                                    "parameters": {"a": {"values": [1]}}}))
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    trials = sweep.run_sweep(path, count=1, out=tmp_path / "out", name="s")
    assert [t.state for t in trials] == ["finished"]
    assert "wandb sync" not in capsys.readouterr().out
