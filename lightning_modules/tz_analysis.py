"""§4.6 of paper 000: analyse the learned ``T_Z`` against the ground-truth ``T_X`` on Moving MNIST.

Command::

    python -m lightning_modules.tz_analysis --ckpt runs/.../last.ckpt --out tz_out [--pairs 40000 --digit 5 8]

For each digit class (the first test-set instance of that class, on test background 0 by
default) it gathers ``--pairs`` frame pairs of that one digit on that one background (each from
its own fresh clip), computes ``T_Z(fc(x_i), fc(x_j))`` and the ground-truth ``T_X``, and writes:

* ``tz_analysis.json``: per digit, the r² of the linear regression from flattened ``T_X`` to
  flattened ``T_Z`` (numpy ``lstsq``, scored like sklearn's ``LinearRegression.score``; paper:
  0.992 for a 5, 0.993 for an 8), the angle fit (``T_Z``'s angle is that of the nearest
  rotation ``R = U V^T`` from the SVD ``T_Z = U S V^T``), translation-norm statistics, …;
* ``tz_digit<k>.npz``: the per-pair arrays (``theta_x``, ``theta_z``, angles, norms, …);
* figures drawn with PIL (no plotting dependency): ``tz_angle_scatter_digit<k>.png`` (Fig.
  13: angle of ``T_Z`` vs angle of ``T_X``), ``tz_translation_density_digit<k>.png`` (Fig. 12:
  density of the translation norms, ``T_Z`` on y, ``T_X`` on x) and
  ``tz_densities_digit<k>.png`` (Fig. 11: densities of the largest singular value and of the
  top-left entry, ``T_Z`` and ``T_X``).

Translation norms are the norm of the third column in ``affine_grid``'s normalised
coordinates (``T_X``'s is also given in pixels, ``* image_size / 2``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from utils.checkpoints import CheckpointError, load_module_checkpoint
from utils.io import atomic_write_text, save_image_atomic
from utils.report import format_table
from lightning_modules.evaluation.tz import tz_analysis
from utils.io import write_npz

# ============================================================================ PIL plotting
BLUE, ORANGE, GRAY_LINE = (31, 119, 180), (255, 127, 14), (150, 150, 150)
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    step = 10.0 ** np.floor(np.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * step:
            step *= m
            break
    start = np.ceil(lo / step) * step
    return [float(v) for v in np.arange(start, hi + step * 1e-6, step)]


def _tick_label(value: float, lim: tuple[float, float]) -> str:
    """Enough decimals to tell neighbouring ticks apart."""
    span = abs(lim[1] - lim[0])
    if span >= 1e4 or span < 1e-6:
        return f"{value:.3g}"
    decimals = max(0, int(-np.floor(np.log10(span / 5))) + 1)
    return f"{value:.{decimals}f}"


def _limits(values: np.ndarray, pad: float = 0.05) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return 0.0, 1.0
    lo, hi = np.percentile(v, 0.5), np.percentile(v, 99.5)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    span = hi - lo
    return float(lo - pad * span), float(hi + pad * span)


class Axes:
    """A minimal PIL plot: a frame with ticks, labels and a title; data -> pixel mapping."""

    def __init__(self, xlim, ylim, xlabel: str, ylabel: str, title: str, size=(560, 460), margin=(70, 40, 20, 55)):
        from PIL import Image, ImageDraw

        self.image = Image.new("RGB", size, "white")
        self.draw = ImageDraw.Draw(self.image)
        self.left, self.top, self.right, self.bottom = margin[0], margin[1], size[0] - margin[2], size[1] - margin[3]
        self.xlim, self.ylim = xlim, ylim
        d = self.draw
        d.rectangle([self.left, self.top, self.right, self.bottom], outline=(0, 0, 0))
        for x in _nice_ticks(*xlim):
            px = self.px(x, ylim[0])[0]
            d.line([px, self.bottom, px, self.bottom + 4], fill=(0, 0, 0))
            d.text((px - 12, self.bottom + 7), _tick_label(x, xlim), fill=(0, 0, 0))
        for y in _nice_ticks(*ylim):
            py = self.px(xlim[0], y)[1]
            d.line([self.left - 4, py, self.left, py], fill=(0, 0, 0))
            d.text((4, py - 6), _tick_label(y, ylim), fill=(0, 0, 0))
        d.text(((self.left + self.right) // 2 - 3 * len(xlabel), size[1] - 20), xlabel, fill=(0, 0, 0))
        d.text((4, 8), ylabel, fill=(0, 0, 0))
        d.text((self.left + 140, 8), title, fill=(0, 0, 0))

    def px(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        fx = (np.asarray(x, dtype=np.float64) - self.xlim[0]) / (self.xlim[1] - self.xlim[0])
        fy = (np.asarray(y, dtype=np.float64) - self.ylim[0]) / (self.ylim[1] - self.ylim[0])
        return self.left + fx * (self.right - self.left), self.bottom - fy * (self.bottom - self.top)

    def inside(self, px, py) -> np.ndarray:
        return (px >= self.left) & (px <= self.right) & (py >= self.top) & (py <= self.bottom)

    def scatter(self, x, y, color=BLUE, radius: int = 1) -> None:
        px, py = self.px(x, y)
        keep = self.inside(px, py)
        for a, b in zip(px[keep], py[keep]):
            self.draw.ellipse([a - radius, b - radius, a + radius, b + radius], fill=color)

    def line(self, x, y, color=ORANGE, width: int = 2) -> None:
        px, py = self.px(x, y)
        py = np.clip(py, self.top, self.bottom)
        self.draw.line(list(zip(px.tolist(), py.tolist())), fill=color, width=width)

    def legend(self, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> None:
        for k, (name, color) in enumerate(entries):
            y = self.top + 8 + 14 * k
            self.draw.rectangle([self.right - 150, y, self.right - 140, y + 8], fill=color)
            self.draw.text((self.right - 135, y - 2), name, fill=(0, 0, 0))

    def heatmap(self, density: np.ndarray) -> None:
        """``density`` (ny, nx) over the axes' limits (row 0 = lowest y), drawn with a viridis-like map."""
        from PIL import Image

        d = density / density.max() if density.max() > 0 else density
        pos = d * (len(_VIRIDIS) - 1)
        lo = np.floor(pos).astype(int).clip(0, len(_VIRIDIS) - 2)
        frac = (pos - lo)[..., None]
        rgb = _VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac
        rgb[d <= 0] = 255.0
        img = Image.fromarray(rgb[::-1].astype(np.uint8)).resize((int(self.right - self.left) - 1, int(self.bottom - self.top) - 1))
        self.image.paste(img, (int(self.left) + 1, int(self.top) + 1))

    def save(self, path) -> Path:
        return save_image_atomic(self.image, path)


def _smooth_hist(values: np.ndarray, lo: float, hi: float, bins: int = 200, sigma: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import gaussian_filter1d

    hist, edges = np.histogram(values, bins=bins, range=(lo, hi), density=True)
    return 0.5 * (edges[1:] + edges[:-1]), gaussian_filter1d(hist.astype(np.float64), sigma)


def plot_angle_scatter(arrays, results, path) -> Path:
    """Fig. 13: angle of ``T_Z``'s nearest rotation against ``T_X``'s angle (with the linear fit)."""
    x, y = arrays["angle_x"], arrays["angle_z"]
    ax = Axes(_limits(x), _limits(y), "angle of T_X (degrees)", "angle of T_Z (SVD nearest rotation, degrees)",
              f"digit {results['digit_label']}: r2(angle) = {results['r2_angle']:.3f}")
    ax.scatter(x, y)
    xs = np.linspace(*ax.xlim, 50)
    ax.line(xs, results["angle_slope"] * xs + results["angle_intercept"])
    ax.legend([("pairs", BLUE), ("linear fit", ORANGE)])
    return ax.save(path)


def plot_translation_density(arrays, results, path, bins: int = 120) -> Path:
    """Fig. 12: joint density of the translation norms (``T_X`` on x, ``T_Z`` on y)."""
    from scipy.ndimage import gaussian_filter

    x, y = arrays["translation_norm_x"], arrays["translation_norm_z"]
    xlim, ylim = _limits(x), _limits(y)
    hist, _, _ = np.histogram2d(y, x, bins=bins, range=[ylim, xlim])
    ax = Axes(xlim, ylim, "|translation| of T_X (normalised)", "|translation| of T_Z (normalised)",
              f"digit {results['digit_label']}: density, pearson = {results['pearson_translation_norm']:.3f}")
    ax.heatmap(gaussian_filter(hist, 1.5))
    return ax.save(path)


def plot_densities(arrays, results, path) -> Path:
    """Fig. 11: densities of the largest singular value and of the top-left entry, ``T_Z`` vs ``T_X``."""
    from PIL import Image

    panels = []
    for key, label in (("largest_singular_value", "largest singular value"), ("top_left", "top-left entry")):
        z, x = arrays[f"{key}_z"], arrays[f"{key}_x"]
        lo, hi = _limits(np.concatenate([z, x]))
        cz, dz = _smooth_hist(z, lo, hi)
        cx, dx = _smooth_hist(x, lo, hi)
        ax = Axes((lo, hi), (0.0, float(max(dz.max(), dx.max()) * 1.05 or 1.0)), label, "density",
                  f"digit {results['digit_label']}: {label}")
        ax.line(cz, dz, BLUE)
        ax.line(cx, dx, ORANGE)
        ax.legend([("T_Z", BLUE), ("T_X", ORANGE)])
        panels.append(ax.image)
    canvas = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), "white")
    offset = 0
    for p in panels:
        canvas.paste(p, (offset, 0))
        offset += p.width
    return save_image_atomic(canvas, path)


# ============================================================================ command
def load_scene(ckpt: str | Path, device: torch.device):
    """The ``EquivariantScene`` of an ``EquivariantSceneModule`` checkpoint (clear errors otherwise)."""
    from lightning_modules.equivariant_module import EquivariantSceneModule

    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist: pass --ckpt <run>/checkpoints/last.ckpt of an equivariant run.")
    module = load_module_checkpoint(EquivariantSceneModule, path, device, needs="tz_analysis needs an EquivariantSceneModule checkpoint",
                                    advice="Pass --ckpt <run>/checkpoints/last.ckpt of an equivariant run.")
    if module.hparams.use_ground_truth_transform:
        raise ValueError(
            f"{path} is a T_Z := T_X ablation checkpoint (use_ground_truth_transform: true): its T_Z network was never trained, "
            f"so there is nothing to analyse. Use a checkpoint of configs/mnist_equivariant*.yaml."
        )
    return module.scene.to(device).eval()


def run(ckpt: str | Path, out: str | Path, pairs: int = 40_000, digits: Sequence[int] = (5, 8), occurrence: int = 0,
        background: int = 0, chunk: int = 1000, seed: int = 0, num_frames: int = 5, num_backgrounds: int = 64,
        data_seed: int = 0, device: str = "auto", assets_root: str | None = None, progress: bool = True) -> dict:
    """Run the analysis for each digit class and write JSON, NPZ and PNG files into ``out``."""
    from datamodules.moving_mnist import MovingMNIST, find_digit

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    scene = load_scene(ckpt, dev)
    source = MovingMNIST(num_digits=1, num_frames=num_frames, num_backgrounds=num_backgrounds, seed=data_seed)
    out = Path(out)
    report: dict = {"checkpoint": str(ckpt), "pairs": pairs, "paper_r2": {"5": 0.992, "8": 0.993}, "digits": {}}
    rows = {}
    for digit in digits:
        index = find_digit(int(digit), "test", occurrence, assets_root)
        res = tz_analysis(scene, source, index, background, pairs=pairs, chunk=chunk, seed=seed, device=dev,
                          assets_root=assets_root, progress=progress)
        results, arrays = res["results"], res["arrays"]
        tag = f"digit{digit}"
        write_npz(out / f"tz_{tag}.npz", arrays)
        results["figures"] = [
            str(plot_angle_scatter(arrays, results, out / f"tz_angle_scatter_{tag}.png")),
            str(plot_translation_density(arrays, results, out / f"tz_translation_density_{tag}.png")),
            str(plot_densities(arrays, results, out / f"tz_densities_{tag}.png")),
        ]
        report["digits"][str(digit)] = results
        rows[f"digit {digit}"] = {
            "r2 T_X->T_Z": results["r2_tx_to_tz"], "paper r2": report["paper_r2"].get(str(digit)), "r2 angle": results["r2_angle"],
            "angle slope": results["angle_slope"], "pearson |t|": results["pearson_translation_norm"],
            "|t_X| px mean": results["translation_norm_x_px"]["mean"], "|t_Z| mean": results["translation_norm_z"]["mean"],
        }
    table = format_table(f"T_Z analysis (paper 000 §4.6), {pairs} pairs per digit", rows, list(next(iter(rows.values()))))
    print("\n" + table + "\n", flush=True)
    atomic_write_text(out / "tz_analysis.json", json.dumps(report, indent=2, default=float) + "\n")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m lightning_modules.tz_analysis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint of an EquivariantSceneModule trained on Moving MNIST")
    parser.add_argument("--out", required=True, help="output folder (JSON, NPZ, PNG)")
    parser.add_argument("--pairs", type=int, default=40_000, help="frame pairs per digit (paper: 40,000)")
    parser.add_argument("--digit", type=int, nargs="+", default=[5, 8], help="digit classes (paper: 5 and 8)")
    parser.add_argument("--occurrence", type=int, default=0, help="which test-set instance of the class")
    parser.add_argument("--background", type=int, default=0, help="test background index")
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-frames", type=int, default=5, help="clip length M of the generator (paper: 5)")
    parser.add_argument("--num-backgrounds", type=int, default=64, help="backgrounds per split B (paper: 64)")
    parser.add_argument("--data-seed", type=int, default=0, help="MovingMNIST seed (backgrounds)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--assets-root", default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.pairs < 3:
        parser.error(f"--pairs must be >= 3 for a regression, got {args.pairs}")
    return run(args.ckpt, args.out, args.pairs, args.digit, args.occurrence, args.background, args.chunk, args.seed,
               args.num_frames, args.num_backgrounds, args.data_seed, args.device, args.assets_root, not args.no_progress)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (CheckpointError, FileNotFoundError) as exc:  # one line naming the file (CheckpointError says what it is)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
