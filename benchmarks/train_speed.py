"""Training speed of any config: images/s, step-time split and achieved GFLOP/s vs a matmul peak.

Builds the model and DataModule exactly as ``python cli.py fit --config X`` would
(``cli.main(args=[...], run=False)``), then runs a plain loop of training steps and times
each phase: data (waiting for the next batch), forward (``training_step`` -> loss), backward
and optimiser step. FLOPs of one forward + backward are counted with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions; element-wise ops are
not counted) during the warm-up step; the machine's peak is a large fp32 matmul.

    python benchmarks/train_speed.py --model hamiltonian            # CPU + paper configs
    python benchmarks/train_speed.py --config configs/sprites_hamiltonian_cpu.yaml --steps 10
    python benchmarks/train_speed.py --model equivariant            # configs/*equivariant*.yaml
    python benchmarks/train_speed.py --model all --json speed.json

The paper-scale configs take about a minute per step on a 2-core CPU; lower ``--steps`` or
override the batch with ``--batch-size``. Any other config value: ``--set key=value`` with
LightningCLI keys (e.g. ``--set model.init_args.channels_last=false``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402
from lightning_modules.common import atomic_write_text, format_table  # noqa: E402

MODEL_CONFIGS = {
    "hamiltonian": ["sprites_hamiltonian_cpu.yaml", "sprites_hamiltonian_skew_cpu.yaml", "sprites_hamiltonian.yaml"],
    "equivariant": None,  # every configs/*equivariant*.yaml (CPU ones first)
}


def default_configs(model: str) -> list[Path]:
    names: list[Path] = []
    for key in (["hamiltonian", "equivariant"] if model == "all" else [model]):
        listed = MODEL_CONFIGS[key]
        if listed is None:
            found = sorted((ROOT / "configs").glob(f"*{key}*.yaml"), key=lambda p: ("_cpu" not in p.name, p.name))
            names += found
        else:
            names += [ROOT / "configs" / n for n in listed]
    return names


def matmul_peak(n: int = 2048, reps: int = 5, device: str = "cpu") -> float:
    """Best fp32 GFLOP/s of an ``n x n`` matmul (``2 n³`` FLOPs)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(reps + 1):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _to(batch, device: str):
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch.to(device, non_blocking=True) if torch.is_tensor(batch) else batch


def _images(batch) -> int:
    """Images in a batch: frames of ``b t c h w`` clips, or every ``b c h w`` image tensor."""
    if isinstance(batch, dict):
        if "frames" in batch and batch["frames"].dim() == 5:
            return batch["frames"].shape[0] * batch["frames"].shape[1]
        return sum(v.shape[0] for k, v in batch.items() if torch.is_tensor(v) and v.dim() == 4 and v.shape[1] == 3)
    return 0


def _optimizer(model) -> torch.optim.Optimizer:
    opt = model.configure_optimizers()
    if isinstance(opt, dict):
        opt = opt["optimizer"]
    if isinstance(opt, (list, tuple)):
        opt = opt[0]
        if isinstance(opt, (list, tuple)):
            opt = opt[0]
    return opt


def _loss(out) -> torch.Tensor:
    return out["loss"] if isinstance(out, dict) else out


def benchmark(config: Path, steps: int, warmup: int, batch_size: int | None, device: str, extra: list[str]) -> dict:
    args = ["--config", str(config), "--trainer.logger", "false"]
    if batch_size:
        args += ["--data.init_args.batch_size", str(batch_size)]
    for kv in extra:
        key, _, value = kv.partition("=")
        args += [f"--{key}", value]
    run = cli.main(args=args, run=False)
    model, dm = run.model, run.datamodule
    dm.prepare_data()
    dm.setup("fit")
    model.setup("fit")
    model.to(device).train()
    opt = _optimizer(model)
    loader = iter(dm.train_dataloader())
    params = sum(p.numel() for p in model.parameters())
    times = {"data": [], "forward": [], "backward": [], "optimiser": []}
    flops, images = 0, 0
    from torch.utils.flop_counter import FlopCounterMode

    for step in range(warmup + steps):
        t0 = time.perf_counter()
        batch = _to(next(loader), device)
        _sync(device)
        t1 = time.perf_counter()
        counter = FlopCounterMode(display=False) if step == 0 else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log() without a Trainer
            if counter is not None:
                with counter:
                    loss = _loss(model.training_step(batch, step))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                flops = counter.get_total_flops()
                opt.step()
                continue
            loss = _loss(model.training_step(batch, step))
        _sync(device)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _sync(device)
        t3 = time.perf_counter()
        opt.step()
        _sync(device)
        t4 = time.perf_counter()
        if step >= warmup:
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[k].append(v)
            images = _images(batch)
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    step_time = sum(mean.values())
    compute = mean["forward"] + mean["backward"]
    return {
        "config": config.name,
        "model": type(model).__name__,
        "params_M": params / 1e6,
        "images_per_step": images,
        "step_s": step_time,
        "images_per_s": images / step_time,
        **{f"{k}_s": v for k, v in mean.items()},
        "gflop_per_step": flops / 1e9,
        "gflops_achieved": flops / 1e9 / compute if compute > 0 else float("nan"),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["hamiltonian", "equivariant", "all"], default="hamiltonian")
    parser.add_argument("--config", action="append", type=Path, help="config file(s); default: the --model's configs")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per config")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (the first also counts FLOPs)")
    parser.add_argument("--batch-size", type=int, default=None, help="override data.init_args.batch_size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra LightningCLI overrides")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    a = parser.parse_args(argv)
    if a.warmup < 1:
        parser.error("--warmup must be >= 1 (the first step counts FLOPs and is not timed)")
    configs = a.config or default_configs(a.model)
    missing = [str(c) for c in configs if not Path(c).is_file()]
    if missing:
        parser.error(f"config file(s) not found: {', '.join(missing)}")
    peak = matmul_peak(device=a.device)
    print(f"device {a.device}, {torch.get_num_threads()} thread(s); fp32 matmul peak {peak:.1f} GFLOP/s", flush=True)
    rows = []
    for config in configs:
        print(f"... {config.name}", flush=True)
        r = benchmark(Path(config), a.steps, a.warmup, a.batch_size, a.device, a.set)
        r["pct_of_matmul_peak"] = 100 * r["gflops_achieved"] / peak
        rows.append(r)
    cols = ["params_M", "images_per_step", "step_s", "images_per_s", "data_s", "forward_s", "backward_s",
            "optimiser_s", "gflop_per_step", "gflops_achieved", "pct_of_matmul_peak"]  # fmt: skip
    title = f"Training speed ({a.device}, {torch.get_num_threads()} threads, fp32 matmul peak {peak:.1f} GFLOP/s, mean of {a.steps} steps)"
    print(format_table(title, {r["config"]: r for r in rows}, cols), flush=True)
    if a.json:
        atomic_write_text(a.json, json.dumps({"matmul_peak_gflops": peak, "threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
