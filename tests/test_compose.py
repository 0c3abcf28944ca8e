"""Issue 15, compose new scenes: ``cli.py predict`` on every CPU config, your own videos end to end,
the studio's engine, and the studio in a real browser (headless Debian chromium + Selenium)."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest
import torch
from PIL import Image

import cli
from config_list import HAMILTONIAN_CPU, SCENE_CPU
from callbacks.prediction_writer import has_video_backend, write_mp4
from datamodules import DSVAESprites
from utils.checkpoints import MODEL_TAG_KEY
from lightning_modules.composer import StudioError, load_composer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
H_TINY = ["--model.init_args.content_dim", "16", "--model.init_args.frame_dim", "16", "--model.init_args.encoder_channels", "[8, 8, 8, 8]",
          "--model.init_args.decoder_channels", "[8, 8, 8, 8]", "--model.init_args.encoder_hidden", "[32]", "--model.init_args.decoder_hidden", "[32]",
          "--model.init_args.motion_hidden", "8"]
E_TINY = ["--model.init_args.channels", "[8, 16, 16]", "--model.init_args.feature_channels", "8", "--model.init_args.tz_channels", "[8]",
          "--model.init_args.tz_hidden", "16"]
J_TINY = ["--model.init_args.channels", "[8, 8]", "--model.init_args.feature_dim", "16", "--model.init_args.hidden", "8"]
MNIST_SMALL = ["--data.init_args.source.init_args.val_clips", "16", "--data.init_args.source.init_args.test_clips", "16",
               "--data.init_args.source.init_args.train_clips_per_epoch", "64"]
FPS_MS = 100  # the writer's default 10 fps
ACTIONS = ("walk", "spellcast", "slash")


@pytest.fixture(autouse=True)
def _cli_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cli.py"])


def tiny_args(config: str) -> list[str]:
    return H_TINY if "hamiltonian" in config else J_TINY if "judge" in config else E_TINY


def fit_tiny(config: str, root: Path, cache_dir: str, extra: list[str] = ()) -> Path:
    """A one-step run of ``config`` with a tiny model: its ``last.ckpt``."""
    cli.main(["fit", "--config", str(CONFIGS / config), "--trainer.max_steps", "1", "--trainer.limit_train_batches", "1",
              "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(root), "--trainer.max_time", "null",
              "--data.init_args.cache_dir", cache_dir, "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "4",
              *tiny_args(config), *(MNIST_SMALL if config.startswith("mnist") else []), *extra])
    return next(root.rglob("last.ckpt"))


def predict(config: str, ckpt: Path, root: Path, cache_dir: str, extra: list[str] = ()) -> Path:
    cli.main(["predict", "--config", str(CONFIGS / config), "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(root),
              "--trainer.limit_predict_batches", "1", "--data.init_args.eval_batch_size", "3", "--data.init_args.num_workers", "0",
              "--data.init_args.cache_dir", cache_dir, *tiny_args(config), *(MNIST_SMALL if config.startswith("mnist") else []), *extra])
    return root / "predictions"


def check_clip_files(folder: Path, items: int, frames: int, size: int = 64) -> None:
    """GIF and (with PyAV) MP4 of every item: ``frames`` frames of ``size x size``."""
    gifs = sorted(folder.glob("*.gif"))
    assert len(gifs) == items, (folder, gifs)
    for gif in gifs:
        with Image.open(gif) as im:
            assert im.size == (size, size)
            total = 0
            for k in range(im.n_frames):  # Pillow merges identical consecutive frames and adds their durations
                im.seek(k)
                total += im.info["duration"]
        assert total == frames * FPS_MS, (gif, total)
    if has_video_backend():
        import av

        mp4s = sorted(folder.glob("*.mp4"))
        assert len(mp4s) == items
        with av.open(str(mp4s[0])) as container:
            decoded = [f for f in container.decode(video=0)]
        assert len(decoded) == frames and (decoded[0].width, decoded[0].height) == (size, size)


def grid_size(rows: int, cols: int, side: int = 64, pad: int = 2) -> tuple[int, int]:
    return cols * (side + pad) + pad, rows * (side + pad) + pad


# ------------------------------------------------------------------------------ predict, every CPU config
SCENE = SCENE_CPU


@pytest.mark.slow
@pytest.mark.parametrize("config", HAMILTONIAN_CPU)
def test_predict_hamiltonian_writes_generation_swap_and_samples(config, tmp_path, cache_dir):
    ckpt = fit_tiny(config, tmp_path / "run", cache_dir)
    out = predict(config, ckpt, tmp_path / "pred", cache_dir, ["--model.init_args.predict", "{length: 5}"])
    for action in ACTIONS:
        check_clip_files(out / f"generate_{action}", items=3, frames=5)
        check_clip_files(out / f"sample_{action}", items=3, frames=5)
    check_clip_files(out / "swap_content_with_partner_motion", items=3, frames=8)
    check_clip_files(out / "swap_partner_with_own_motion", items=3, frames=8)
    with Image.open(out / "generate" / "batch0000.png") as im:  # per item: input (8 frames) + 3 actions (5)
        assert im.size == grid_size(rows=3 * 4, cols=8)
    with Image.open(out / "swap" / "batch0000.png") as im:
        assert im.size == grid_size(rows=3 * 4, cols=8)


@pytest.mark.slow
@pytest.mark.parametrize("config", SCENE)
def test_predict_equivariant_writes_the_four_manipulations(config, tmp_path, cache_dir):
    ckpt = fit_tiny(config, tmp_path / "run", cache_dir)
    frames = 5 if config.startswith("mnist") else 4  # Moving MNIST: its 5-frame clips (the default); sprites: asked for
    extra = [] if config.startswith("mnist") else ["--data.init_args.predict_num_frames", "4"]
    out = predict(config, ckpt, tmp_path / "pred", cache_dir, extra)
    rows = {"swap_background": 3, "transfer_animation": 3, "swap_background_and_animation": 4, "remove_background": 2}
    for task, n in rows.items():
        check_clip_files(out / task, items=3, frames=frames)
        with Image.open(out / task / "batch0000.png") as im:
            assert im.size == grid_size(rows=3 * n, cols=frames)


@pytest.mark.slow
def test_predict_judge_writes_class_probabilities(tmp_path, cache_dir):
    ckpt = fit_tiny("sprites_judge_cpu.yaml", tmp_path / "run", cache_dir)
    out = predict("sprites_judge_cpu.yaml", ckpt, tmp_path / "pred", cache_dir)
    rows = json.loads((out / "probabilities.json").read_text())
    assert [r["index"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert len(r["probabilities"]) == 9 and abs(sum(r["probabilities"].values()) - 1) < 1e-3
        assert r["predicted"] in r["probabilities"] and "/" in r["predicted"]  # action/view names
        assert len(r["attribute_hair_probabilities"]) == 6


def test_predict_options_are_checked():
    from lightning_modules.prediction import PredictOptions

    with pytest.raises(ValueError, match="not tasks of this model"):
        PredictOptions.parse({"tasks": ["swap_background"]}, "hamiltonian")
    with pytest.raises(ValueError, match="Unknown predict option"):
        PredictOptions.parse({"lenght": 3}, "hamiltonian")
    assert PredictOptions.parse(None, "equivariant").tasks[0] == "swap_background"


# ------------------------------------------------------------------------------ your own videos
@pytest.fixture(scope="module")
def video_root(tmp_path_factory, cache_dir):
    """Clips written from DSVAE test clips: root/<action>/<clip> as frame folders, GIFs and (with PyAV) MP4."""
    root = tmp_path_factory.mktemp("my_videos")
    src = DSVAESprites()
    src.prepare(cache_dir=cache_dir)
    ds = src.dataset("test", cache_dir=cache_dir)
    by_action = {a: [i for i in range(0, 600, 7) if int(ds.get(i, [0])["action"]) == a][:3] for a in range(3)}
    for a, indices in by_action.items():
        folder = root / ACTIONS[a]
        for n, i in enumerate(indices):
            clip = ds.get(i)["frames"]
            frames = [Image.fromarray((f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for f in clip]
            if n == 0 or (n == 2 and not has_video_backend()):
                (folder / f"clip{n}").mkdir(parents=True)
                for k, f in enumerate(frames):
                    f.save(folder / f"clip{n}" / f"{k:03d}.png")
            elif n == 1:
                frames[0].save(folder / f"clip{n}.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
            else:
                write_mp4(clip, folder / f"clip{n}.mp4")
    return root


@pytest.mark.slow
def test_your_own_videos_train_and_predict_hamiltonian(video_root, tmp_path, cache_dir):
    config = "video_folder_hamiltonian_cpu.yaml"
    rootarg = ["--data.init_args.source.init_args.root", str(video_root)]
    ckpt = fit_tiny(config, tmp_path / "run", cache_dir, rootarg)
    out = predict(config, ckpt, tmp_path / "pred", cache_dir, [*rootarg, "--data.init_args.predict_split", "train",
                                                                "--model.init_args.predict", "{length: 6}"])
    for action in ACTIONS:  # the action folder names
        check_clip_files(out / f"generate_{action}", items=3, frames=6)
    check_clip_files(out / "swap_content_with_partner_motion", items=3, frames=8)
    # single images of your own: still clips; no action labels, so no swap
    for k in range(2):
        Image.open(next((video_root / "walk" / "clip0").glob("*.png"))).save(tmp_path / f"me{k}.png")
    images = ["--data.init_args.source", "datamodules.FrameFiles", "--data.init_args.source.init_args.paths",
              f"[{tmp_path / 'me0.png'}, {tmp_path / 'me1.png'}]"]
    out = predict(config, ckpt, tmp_path / "pred_images", cache_dir, [*images, "--model.init_args.predict", "{length: 4, tasks: [generate, swap]}"])
    check_clip_files(out / "generate_action0", items=2, frames=4)
    assert not (out / "swap").exists()


@pytest.mark.slow
def test_your_own_videos_train_and_predict_equivariant(video_root, tmp_path, cache_dir):
    config = "video_folder_equivariant_cpu.yaml"
    rootarg = ["--data.init_args.source.init_args.root", str(video_root)]
    ckpt = fit_tiny(config, tmp_path / "run", cache_dir, rootarg)
    out = predict(config, ckpt, tmp_path / "pred", cache_dir, [*rootarg, "--data.init_args.predict_split", "train"])
    check_clip_files(out / "transfer_animation", items=3, frames=8)
    check_clip_files(out / "remove_background", items=3, frames=8)


def test_video_config_without_root_says_so(tmp_path):
    with pytest.raises(SystemExit):  # jsonargparse: root is required
        cli.main(["fit", "--config", str(CONFIGS / "video_folder_equivariant_cpu.yaml"), "--trainer.fast_dev_run", "1"])


# ------------------------------------------------------------------------------ the studio
@pytest.fixture(scope="module")
def scene_ckpt(tmp_path_factory, cache_dir):
    return fit_tiny("mnist_equivariant_cpu.yaml", tmp_path_factory.mktemp("scene_run"), cache_dir)


def test_studio_refuses_other_checkpoints(tmp_path):
    torch.save({"state_dict": {}, MODEL_TAG_KEY: "SequenceJudgeModule"}, tmp_path / "judge.ckpt")
    with pytest.raises(StudioError, match="judge classifier.*EquivariantSceneModule.*HamiltonianMotionModule"):
        load_composer(tmp_path / "judge.ckpt")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(StudioError, match="not a PyTorch Lightning checkpoint"):
        load_composer(tmp_path / "notes.ckpt")
    with pytest.raises(StudioError, match="No checkpoint"):
        load_composer(tmp_path / "missing.ckpt")


def test_studio_handlers_compose_and_export(scene_ckpt, tmp_path):
    from studio import Handlers

    h = Handlers(load_composer(scene_ckpt, num_examples=3), str(tmp_path))
    a, b, c = list(h.examples)
    image, result, n = h.compose(a, None, b, None, c, None, False, 0)
    assert result.shape == (5, 64, 64, 3) and n == 5 and image.shape == (256, 256, 3)
    other = h.compose(a, None, c, None, c, None, False, 0)[1]
    assert not np.array_equal(result, other)  # another background, another picture
    removed = h.compose(a, None, b, None, None, None, True, 0)[1]
    assert removed.shape == (5, 64, 64, 3)
    with Image.open(h.export(result, "gif")) as im:
        assert im.format == "GIF" and im.size == (64, 64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_studio_in_a_real_browser(scene_ckpt, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    log = open(tmp_path / "studio.log", "w")
    server = subprocess.Popen([sys.executable, str(ROOT / "studio.py"), "--ckpt", str(scene_ckpt), "--port", str(port), "--examples", "3"],
                              stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "studio.log").read_text()
                time.sleep(0.5)
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400"):
            options.add_argument(arg)
        browser = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            browser.get(url)
            wait = WebDriverWait(browser, 60)

            def result_src():
                imgs = browser.find_elements(By.CSS_SELECTOR, "#scene_result img")
                return imgs[0].get_attribute("src") if imgs else None

            first = wait.until(lambda _: result_src())
            frame = tmp_path / "my_background.png"
            Image.new("RGB", (64, 64), (200, 40, 160)).save(frame)
            browser.find_element(By.CSS_SELECTOR, "#background_upload input[type=file]").send_keys(str(frame))  # upload
            uploaded = wait.until(lambda _: (s := result_src()) not in (None, first) and s)
            browser.find_element(By.CSS_SELECTOR, "#remove_background input").click()  # change a choice
            wait.until(lambda _: (s := result_src()) not in (None, uploaded) and s)
            browser.find_element(By.ID, "scene_export_gif").click()
            link = wait.until(lambda _: [a for a in browser.find_elements(By.CSS_SELECTOR, "#scene_download a") if a.get_attribute("href")])
            data = urllib.request.urlopen(urljoin(url, link[0].get_attribute("href")), timeout=10).read()
            assert data[:4] == b"GIF8"
            browser.save_screenshot(str(tmp_path / "studio.png"))
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
