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
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbone.scene import EquivariantScene, apply_affine  # noqa: E402
from lightning_modules.common import format_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCENE_ARGS = ("image_size", "channels", "feature_channels", "blocks_per_stage", "tz_channels", "tz_hidden", "norm", "tz_keypoints")


def build_scene(config: str | None, ckpt: str | None) -> tuple[EquivariantScene, bool, str]:
    """The scene model of a config (or checkpoint), and whether it runs channels-last."""
    if ckpt:
        from lightning_modules.equivariant_module import EquivariantSceneModule

        module = EquivariantSceneModule.load_from_checkpoint(ckpt, map_location="cpu")
        return module.scene, bool(module.hparams.channels_last), f"checkpoint {ckpt}"
    path = Path(config or ROOT / "configs" / "mnist_equivariant_cpu.yaml")
    args = yaml.safe_load(path.read_text())["model"]["init_args"]
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python benchmarks/render_speed.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="config whose model.init_args build the model (default: mnist_equivariant_cpu.yaml)")
    parser.add_argument("--ckpt", default=None, help="load a trained EquivariantSceneModule checkpoint instead")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads (each gets its own table; on a busy 2-core box 2 threads thrash)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the results here")
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
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
