"""Rendering rate of the equivariant scene manipulations (paper 000 promises real time).

    python benchmarks/render_speed.py                       # CPU-scale model, 1 and 2 threads, tables
    python benchmarks/render_speed.py --config configs/mnist_equivariant.yaml --threads 1 2
    python benchmarks/render_speed.py --ckpt runs/mnist_equivariant_cpu/checkpoints/last.ckpt --json out.json

For each manipulation it measures composed 64x64 frames per second in batches (``--batch``)
and the latency of one composed frame (batch 1, median of ``--repeats`` calls). The model is
built from a config's ``model.init_args`` (weights do not change the speed; ``--ckpt`` loads
real ones). Rows:

* ``swap_background``: ``h(x_c, x_c, x_t2, x_b)`` from images (3 encoder passes + ``T_Z`` + ``g``).
* ``transfer_animation`` / ``swap_background_and_animation``: ``h`` with 4 distinct images.
* ``remove_background``: character on a gray canvas.
* ``render_cached``: the interactive case: ``fc(x_c)``, ``fb(x_b)`` and ``T_Z`` computed once,
  only ``g(T_Z ∘ fc(x_c) + fb(x_b))`` per frame (e.g. scrubbing through an animation).
* ``animate (8 frames)``: ``animate`` over an 8-frame clip, counted per output frame.

Everything runs in eval mode under ``torch.inference_mode`` (what the manipulations do).

A second table times the studio's own code path (``studio.Handlers`` over
``lightning_modules.composer``: the functions the web app calls, including the conversion to
the displayed picture), for the scene model and the motion model (``--motion-config`` /
``--motion-ckpt``; ``--no-studio`` skips it):

* ``choice change, 1-frame result``: a new background for a single-image character: ``fb`` of the
  new background, then ``g``; the latency of one interactive frame (target < 50 ms).
* ``new animation, 64 frames``: a new 64-frame animation source: ``fc`` + ``T_Z`` of every frame
  and ``g`` of every frame, batched (frames/s; target >= 200).
* ``cached re-render, 64 frames``: the same composition again (encodings cached).
* ``frame slider``: showing another frame of the current result.
* ``motion: new image, 16 frames``: image -> sequence from a new image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbone.scene import EquivariantScene, apply_affine  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.report import format_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCENE_ARGS = ("image_size", "channels", "feature_channels", "blocks_per_stage", "tz_channels", "tz_hidden", "norm", "tz_keypoints")


def build_scene(config: str | None, ckpt: str | None) -> tuple[EquivariantScene, bool, str]:
    """The scene model of a config (or checkpoint), and whether it runs channels-last."""
    if ckpt:
        from lightning_modules.equivariant_module import EquivariantSceneModule

        module = EquivariantSceneModule.load_from_checkpoint(ckpt, map_location="cpu")
        return module.scene, bool(module.hparams.channels_last), f"checkpoint {ckpt}"
    path = Path(config or ROOT / "configs" / "mnist_equivariant_cpu.yaml")
    args = load_config(path)["model"]["init_args"]
    scene = EquivariantScene(**{k: args[k] for k in SCENE_ARGS if k in args})
    channels_last = bool(args.get("channels_last", False))
    if channels_last:
        scene = scene.to(memory_format=torch.channels_last)
    return scene, channels_last, str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def timed(fn, repeats: int, min_seconds: float = 0.5) -> list[float]:
    """Per-call seconds: one warm-up call, then ``repeats`` calls (more until ``min_seconds``)."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def benchmark(scene: EquivariantScene, channels_last: bool, batch: int, repeats: int) -> dict[str, dict[str, float]]:
    scene.eval()
    size = scene.image_size
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def frames(n: int, t: int | None = None) -> torch.Tensor:
        shape = (n, 3, size, size) if t is None else (n, t, 3, size, size)
        x = torch.rand(*shape)
        return x.contiguous(memory_format=fmt) if t is None else x

    rows: dict[str, dict[str, float]] = {}

    def add(name: str, make_call, per_call_frames: int = 1) -> None:
        big, one = make_call(batch), make_call(1)
        t_big, t_one = timed(big, repeats), timed(one, repeats)
        rows[name] = {
            f"frames/s (batch {batch})": batch * per_call_frames / median(t_big),
            "latency 1 frame (ms)": 1000 * median(t_one) / per_call_frames,
            "frames/s (batch 1)": per_call_frames / median(t_one),
        }

    def manip(method: str, n_inputs: int):
        def make(n: int):
            xs = [frames(n) for _ in range(n_inputs)]
            fn = getattr(scene, method)
            return lambda: fn(*xs)

        return make

    add("swap_background", lambda n: (lambda xs: lambda: scene.swap_background(xs[0], xs[1], xs[2]))([frames(n) for _ in range(3)]))
    add("transfer_animation", manip("transfer_animation", 3))
    add("swap_background_and_animation", manip("swap_background_and_animation", 4))
    add("remove_background", manip("remove_background", 3))

    def cached(n: int):
        with torch.inference_mode():
            x_c, x_t1, x_t2, x_b = (frames(n) for _ in range(4))
            z_c, z_b = scene.encode_character(x_c), scene.encode_background(x_b)
            theta = scene.transform(scene.encode_character(x_t1), scene.encode_character(x_t2))

        def call():
            with torch.inference_mode():
                return scene.g(apply_affine(z_c, theta) + z_b)

        return call

    add("render_cached", cached)
    add("animate (8 frames)", lambda n: (lambda x, clip: lambda: scene.animate(x, x, clip))(frames(n), frames(n, 8)), per_call_frames=8)
    return rows


def studio_benchmark(scene: EquivariantScene, channels_last: bool, motion_config: str | None, motion_ckpt: str | None, repeats: int) -> dict[str, dict[str, float]]:
    """The studio's handlers (module docstring): ms per call, ms per frame and frames/s."""
    from lightning_modules.composer import MotionComposer, SceneComposer
    from lightning_modules.equivariant_module import EquivariantSceneModule
    from studio import Handlers

    size = scene.image_size
    module = EquivariantSceneModule(image_size=size, channels_last=channels_last)  # a holder for the scene (hparams: canvas colour)
    module.scene = scene
    clips = {"character": torch.rand(1, 3, size, size), "animation": torch.rand(64, 3, size, size)}
    h = Handlers(SceneComposer(module, [(k, v, None) for k, v in clips.items()]))
    rows: dict[str, dict[str, float]] = {}

    def add(name: str, fn, frames: int) -> None:
        t = median(timed(fn, repeats))
        rows[name] = {"ms per call": 1000 * t, "ms per frame": 1000 * t / frames, "frames/s": frames / t}

    def new_background():
        h.examples["background"] = torch.rand(1, 3, size, size)  # a cache miss every call, like a new upload
        return h.compose("character", None, "background", None, None, None, False, 0)

    add("scene: choice change, 1-frame result", new_background, 1)

    def new_animation():
        h.examples["animation"] = torch.rand(64, 3, size, size)
        return h.compose("character", None, "background", None, "animation", None, False, 0)

    add("scene: new animation, 64 frames", new_animation, 64)
    add("scene: cached re-render, 64 frames", lambda: h.compose("character", None, "background", None, "animation", None, False, 0), 64)
    result = h.compose("character", None, "background", None, "animation", None, False, 0)[1]
    add("frame slider", lambda: h.frame(result, 10), 1)
    if motion_config or motion_ckpt:
        from lightning_modules.hamiltonian_module import HamiltonianMotionModule

        if motion_ckpt:
            hm = HamiltonianMotionModule.load_from_checkpoint(motion_ckpt, map_location="cpu")
        else:
            args = load_config(motion_config)["model"]["init_args"]
            hm = HamiltonianMotionModule(**{k: v for k, v in args.items() if k not in ("judge_checkpoint",)})
        m = Handlers(MotionComposer(hm, [("image", torch.rand(1, 3, hm.model.image_size, hm.model.image_size), 0)]))

        def new_image():
            m.examples["image"] = torch.rand(1, 3, hm.model.image_size, hm.model.image_size)
            return m.generate("image", None, m.c.action_names[0], 16, 0)

        add("motion: new image, 16 frames", new_image, 16)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python benchmarks/render_speed.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="config whose model.init_args build the model (default: mnist_equivariant_cpu.yaml)")
    parser.add_argument("--ckpt", default=None, help="load a trained EquivariantSceneModule checkpoint instead")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads (each gets its own table; on a busy 2-core box 2 threads thrash)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--no-studio", action="store_true", help="skip the studio code-path table")
    parser.add_argument("--motion-config", default=str(ROOT / "configs" / "sprites_hamiltonian_cpu.yaml"),
                        help="motion model of the studio table (its model.init_args)")
    parser.add_argument("--motion-ckpt", default=None, help="a trained HamiltonianMotionModule checkpoint instead")
    args = parser.parse_args(argv)
    scene, channels_last, label = build_scene(args.config, args.ckpt)
    params = sum(p.numel() for p in scene.parameters())
    results = {"model": label, "parameters": params, "channels_last": channels_last, "batch": args.batch, "tables": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows = benchmark(scene, channels_last, args.batch, args.repeats)
        title = (f"Manipulation rendering, {label} ({params / 1e6:.2f} M parameters), {scene.image_size}x{scene.image_size}, "
                 f"{threads} thread(s), load {os.getloadavg()[0]:.1f}")
        print("\n" + format_table(title, rows, list(next(iter(rows.values())))) + "\n", flush=True)
        results["tables"][str(threads)] = rows
        if not args.no_studio:
            rows = studio_benchmark(scene, channels_last, args.motion_config, args.motion_ckpt, args.repeats)
            title = f"Studio code path (studio.Handlers), {label}, {threads} thread(s), load {os.getloadavg()[0]:.1f}"
            print("\n" + format_table(title, rows, list(next(iter(rows.values())))) + "\n", flush=True)
            results["tables"][f"studio_{threads}"] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
