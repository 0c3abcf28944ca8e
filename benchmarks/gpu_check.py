"""One-shot GPU readiness check (issue 17); ``benchmarks/gpu_check.sh`` runs it.

Installs nothing. In one process, in well under 8 minutes on a CUDA GPU:

1. times the paper-scale training steps of both models (``configs/sprites_hamiltonian.yaml``,
   ``configs/mnist_equivariant.yaml``) at ``32`` (fp32; TF32 matmuls as ``cli.py`` sets
   ``float32_matmul_precision("high")``), ``bf16-mixed`` and ``16-mixed``, with
   ``benchmarks/train_speed.py``'s bare loop (autocast like the Trainer's precision plugins);
   each row also gives the share of a matmul peak of the same dtype measured in the same run;
2. trains ``configs/sprites_hamiltonian.yaml`` with the real ``Trainer.fit`` for ``--minutes``
   (checkpoints off, in-loop validation off, ``max_time`` = ``--minutes``; the config's model,
   data, optimiser, schedule, step budget and callbacks otherwise) and writes the learning curve (``learning_curve.csv`` / ``.svg``) and a
   generation grid of the test split (``GenerationGrid``: every action from each first frame);
3. prints one table and writes ``gpu_check.json``, all under ``--out``.

    benchmarks/gpu_check.sh                        # auto: cuda when available, else cpu
    benchmarks/gpu_check.sh --device cuda --minutes 4
    benchmarks/gpu_check.sh --device cpu --minutes 0.2 --tiny   # the CPU fallback (CI)

``--tiny`` swaps in the CPU-scale configs with batch 2, one timed step and a small peak
matmul, so the whole path runs in well under a minute on a CPU (tests/test_gpu_check.py).
A row that fails (e.g. a precision the device lacks) is reported with its error; the exit
status is 1 when any row failed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402
from benchmarks import train_speed  # noqa: E402

PAPER_CONFIGS = ["configs/sprites_hamiltonian.yaml", "configs/mnist_equivariant.yaml"]
TINY_CONFIGS = ["configs/sprites_hamiltonian_cpu.yaml", "configs/mnist_equivariant_cpu.yaml"]
PRECISIONS = ["32", "bf16-mixed", "16-mixed"]
PEAK_DTYPES = {"32": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--minutes", type=float, default=3.0, help="training time of the fit (default 3)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per (config, precision)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotuning, allocator)")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=PRECISIONS)
    p.add_argument("--configs", nargs="+", default=None, help=f"timed configs (default: {' '.join(PAPER_CONFIGS)})")
    p.add_argument("--fit-config", default=None, help="the trained config (default: the first timed config)")
    p.add_argument("--fit-precision", choices=PRECISIONS, default="32", help="precision of the fit (default 32)")
    p.add_argument("--batch-size", type=int, default=None, help="override every config's batch size")
    p.add_argument("--peak-size", type=int, default=None, help="matmul size of the peak (default 8192 on cuda, 2048 on cpu)")
    p.add_argument("--tiny", action="store_true", help="CPU-scale configs, batch 2, 1 timed step: the fast CPU fallback test")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check")
    a = p.parse_args(argv)
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False)")
    if a.tiny:
        a.configs = a.configs or TINY_CONFIGS
        a.batch_size = a.batch_size or 2
        a.steps, a.warmup = min(a.steps, 1), min(a.warmup, 1)
        a.peak_size = a.peak_size or 256
    a.configs = a.configs or PAPER_CONFIGS
    a.fit_config = a.fit_config or a.configs[0]
    a.peak_size = a.peak_size or (8192 if a.device == "cuda" else 2048)
    if a.minutes <= 0 or a.steps < 1 or a.warmup < 1:
        p.error("--minutes must be > 0, --steps and --warmup >= 1")
    return a


def device_name(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    return f"CPU, {torch.get_num_threads()} thread(s) (torch {torch.__version__})"


def time_steps(a: argparse.Namespace, peaks: dict[str, float]) -> list[dict]:
    rows = []
    for config in a.configs:
        for precision in a.precisions:
            name = f"{Path(config).stem} {precision}"
            print(f"... timing {name}", flush=True)
            if a.device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                r = train_speed.benchmark(ROOT / config, a.steps, a.warmup, a.batch_size, a.device, [], precision)
            except Exception as error:  # reported in the table, the other rows still run
                traceback.print_exc()
                rows.append({"row": name, "error": f"{type(error).__name__}: {error}"[:200]})
                continue
            peak = peaks.get(precision) or float("nan")
            r.update(row=name, peak_gflops=peak, pct_of_peak=100 * r["gflops_achieved"] / peak,
                     data_pct=100 * r["data_s"] / r["step_s"])
            if a.device == "cuda":
                r["max_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30
            rows.append(r)
    return rows


class LearningCurve:
    """Callback recording (step, seconds since the first step, training loss) without a
    device sync per step (losses are kept on the device and read at the end)."""

    def __new__(cls):
        from pytorch_lightning.callbacks import Callback

        class _Curve(Callback):
            def __init__(self) -> None:
                self.steps: list[int] = []
                self.seconds: list[float] = []
                self.losses: list[torch.Tensor] = []
                self.t0: float | None = None

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                now = time.perf_counter()
                self.t0 = now if self.t0 is None else self.t0
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                if loss is None:
                    return
                self.steps.append(trainer.global_step)
                self.seconds.append(now - self.t0)
                self.losses.append(loss.detach().float().reshape(()))

            def rows(self) -> list[tuple[int, float, float]]:
                losses = torch.stack(self.losses).cpu().tolist() if self.losses else []
                return list(zip(self.steps, self.seconds, losses))

        return _Curve()


def write_curve(rows: list[tuple[int, float, float]], out: Path, title: str) -> None:
    (out / "learning_curve.csv").write_text("step,seconds,train_loss\n" + "".join(f"{s},{t:.3f},{l:.6g}\n" for s, t, l in rows))
    w, h, pad = 640, 360, 48
    finite = [(s, l) for s, _, l in rows if math.isfinite(l)]
    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/><text x="{pad}" y="20">{title}</text>']
    if len(finite) >= 2:
        s0, s1 = finite[0][0], max(finite[-1][0], finite[0][0] + 1)
        lo, hi = min(l for _, l in finite), max(l for _, l in finite)
        hi = hi if hi > lo else lo + 1.0
        pts = " ".join(f"{pad + (s - s0) / (s1 - s0) * (w - 2 * pad):.1f},{h - pad - (l - lo) / (hi - lo) * (h - 2 * pad):.1f}" for s, l in finite)
        lines += [f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{pts}"/>',
                  f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
                  f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
                  f'<text x="{pad}" y="{h - pad + 16}">step {s0}</text><text x="{w - pad - 60}" y="{h - pad + 16}">step {s1}</text>',
                  f'<text x="4" y="{pad + 4}">{hi:.4g}</text><text x="4" y="{h - pad}">{lo:.4g}</text>',
                  f'<text x="{w // 2 - 40}" y="{h - 8}">training loss</text>']
    (out / "learning_curve.svg").write_text("\n".join(lines + ["</svg>"]) + "\n")


def train(a: argparse.Namespace) -> dict:
    from pytorch_lightning.callbacks import ModelCheckpoint

    from callbacks import GenerationGrid

    seconds = max(1, round(a.minutes * 60))
    fit_dir = a.out / "fit"
    args = ["--config", str(ROOT / a.fit_config), "--trainer.logger", "false", "--trainer.default_root_dir", str(fit_dir),
            "--trainer.max_time", f"00:00:{seconds // 60:02d}:{seconds % 60:02d}",
            "--trainer.accelerator", a.device, "--trainer.devices", "1", "--trainer.precision", a.fit_precision,
            "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    if a.batch_size:
        args += ["--data.init_args.batch_size", str(a.batch_size)]
    print(f"... training {Path(a.fit_config).name} for {seconds} s at {a.fit_precision}", flush=True)
    run = cli.main(args=args, run=False)
    trainer = run.trainer
    # No checkpoints (a paper-scale one is 1.3 GB with Adam state); the grid is rendered once, below.
    trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, ModelCheckpoint) and type(cb).__name__ != "LastCheckpointAtEnd"]
    grid = next((cb for cb in trainer.callbacks if isinstance(cb, GenerationGrid)), None) or GenerationGrid(num_examples=2, length=16)
    curve = LearningCurve()
    trainer.callbacks.append(curve)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(run.model, datamodule=run.datamodule)
        wall = time.perf_counter() - t0
        grid.setup(trainer, run.model, "test")
        grid.gif = False
        grid.render(trainer, run.model.to(trainer.strategy.root_device), "test")
    rows = curve.rows()
    write_curve(rows, a.out, f"{Path(a.fit_config).name}, {a.fit_precision}, {a.device}: {len(rows)} steps")
    losses = [l for _, _, l in rows]
    k = max(1, len(losses) // 10)
    train_s = rows[-1][1] if rows else 0.0
    return {
        "row": f"fit {Path(a.fit_config).stem} {a.fit_precision}", "steps": trainer.global_step, "fit_wall_s": wall,
        "steps_per_s": (len(rows) - 1) / train_s if train_s > 0 else float("nan"),
        "loss_first_10pct": sum(losses[:k]) / k if losses else float("nan"),
        "loss_last_10pct": sum(losses[-k:]) / k if losses else float("nan"),
        "finite": all(math.isfinite(l) for l in losses),
        "grid": [str(p) for p in grid.last_files],
        "curve": str(a.out / "learning_curve.csv"),
    }


def table(rows: list[dict], fit: dict | None, title: str) -> str:
    cols = ["step_s", "images_per_s", "data_pct", "gflops_achieved", "peak_gflops", "pct_of_peak", "max_memory_GiB"]
    out = [title, f"{'row':<36}" + "".join(f"{c:>16}" for c in cols)]
    for r in rows:
        if "error" in r:
            out.append(f"{r['row']:<36}  FAILED: {r['error']}")
            continue
        out.append(f"{r['row']:<36}" + "".join(f"{r[c]:>16.4g}" if isinstance(r.get(c), float) else f"{'-':>16}" for c in cols))
    if fit is not None:
        if "error" in fit:
            out.append(f"{fit['row']:<36}  FAILED: {fit['error']}")
        else:
            out.append(f"{fit['row']:<36}  {fit['steps']} steps in {fit['fit_wall_s']:.0f} s ({fit['steps_per_s']:.3g} steps/s); "
                       f"train loss {fit['loss_first_10pct']:.4g} -> {fit['loss_last_10pct']:.4g}; grid {', '.join(fit['grid']) or '-'}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"gpu_check: {device_name(a.device)}; out {a.out}", flush=True)
    torch.set_float32_matmul_precision("high")  # as cli.main() sets it for every run: the fp32 peak is TF32 on a GPU
    peaks = {}
    for precision in a.precisions:
        try:
            peaks[precision] = train_speed.matmul_peak(a.peak_size, 3, a.device, PEAK_DTYPES[precision])
        except Exception as error:  # e.g. a dtype the device lacks: the rows say so
            print(f"matmul peak {precision}: {type(error).__name__}: {error}", flush=True)
    rows = time_steps(a, peaks)
    try:
        fit = train(a)
    except Exception as error:
        traceback.print_exc()
        fit = {"row": f"fit {Path(a.fit_config).stem} {a.fit_precision}", "error": f"{type(error).__name__}: {error}"[:200]}
    total = time.perf_counter() - start
    peak_text = ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
    title = f"GPU check on {device_name(a.device)}: matmul peaks (GFLOP/s) {peak_text}; {a.steps} timed steps per row; total {total:.0f} s"
    print(table(rows, fit, title), flush=True)
    (a.out / "gpu_check.json").write_text(json.dumps({"device": device_name(a.device), "peaks_gflops": peaks, "rows": rows,
                                                      "fit": fit, "total_s": total}, indent=2, default=str) + "\n")
    failed = any("error" in r for r in rows) or "error" in fit or not fit.get("finite", False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
