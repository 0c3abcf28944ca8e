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
    python benchmarks/train_speed.py --config configs/sprites_hamiltonian.yaml --precision bf16-mixed --device cuda
    python benchmarks/train_speed.py --config configs/sprites_hamiltonian_cpu.yaml --fit 60   # + a real fit

``--precision`` (``32``, ``bf16-mixed``, ``16-mixed``) runs the forward under ``torch.autocast``
like the Trainer's mixed-precision plugins (``16-mixed`` with a gradient scaler). ``--fit N``
also runs ``N`` steps of the real ``fit`` loop (the config's callbacks: logging, progress bar,
checkpoints, one validation with its image grids at the end) and reports its cost over the
bare loop, extrapolated to the config's whole run (``fit_overhead_pct``, see ``fit_overhead``).

The paper-scale configs take about a minute per step on a 2-core CPU; lower ``--steps`` or
override the batch with ``--batch-size``. Any other config value: ``--set key=value`` with
LightningCLI keys (e.g. ``--set model.init_args.channels_last=false``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402
from utils.io import atomic_write_text  # noqa: E402
from utils.report import format_table  # noqa: E402

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


def matmul_peak(n: int = 2048, reps: int = 5, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s of an ``n x n`` matmul (``2 n³`` FLOPs), fp32 by default."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
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


PRECISIONS = {"32": None, "32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def _overrides(config: Path, batch_size: int | None, extra: list[str]) -> list[str]:
    args = ["--config", str(config), "--trainer.logger", "false"]
    if batch_size:
        args += ["--data.init_args.batch_size", str(batch_size)]
    for kv in extra:
        key, _, value = kv.partition("=")
        args += [f"--{key}", value]
    return args


def benchmark(config: Path, steps: int, warmup: int, batch_size: int | None, device: str, extra: list[str],
              precision: str = "32") -> dict:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    dev_type = torch.device(device).type
    autocast = (lambda: torch.autocast(dev_type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    scaler = torch.amp.GradScaler(dev_type) if dtype == torch.float16 else None
    run = cli.main(args=_overrides(config, batch_size, extra), run=False)
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
                    with autocast():
                        loss = _loss(model.training_step(batch, step))
                    opt.zero_grad(set_to_none=True)
                    (scaler.scale(loss) if scaler else loss).backward()
                flops = counter.get_total_flops()
                scaler.step(opt) if scaler else opt.step()
                if scaler:
                    scaler.update()
                continue
            with autocast():
                loss = _loss(model.training_step(batch, step))
        _sync(device)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        _sync(device)
        t3 = time.perf_counter()
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
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
        "precision": precision,
        "model": type(model).__name__,
        "params_M": params / 1e6,
        "images_per_step": images,
        "step_s": step_time,
        "images_per_s": images / step_time,
        **{f"{k}_s": v for k, v in mean.items()},
        "gflop_per_step": flops / 1e9,
        "gflops_achieved": flops / 1e9 / compute if compute > 0 else float("nan"),
    }


def _config_run_length(trainer, step_s: float) -> float:
    """Training steps of the config's whole run: ``max_steps``, or what ``max_time`` allows at ``step_s``."""
    steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else float("inf")
    timer = next((cb for cb in trainer.callbacks if type(cb).__name__ == "Timer"), None)
    seconds = timer._duration if timer is not None and timer._duration else None
    if seconds:
        steps = min(steps, seconds / step_s)
    if steps == float("inf"):
        steps = (trainer.max_epochs or 1) * 1000
    return float(steps)


def fit_overhead(config: Path, steps: int, batch_size: int | None, device: str, extra: list[str], bare_step_s: float,
                 root: Path | None = None) -> dict:
    """Cost of the real ``fit`` loop over the bare training step, for the config's whole run.

    Runs ``steps`` training steps through ``Trainer.fit`` with the config's callbacks and
    logger (into a temporary ``default_root_dir``), one validation at the end (its metrics,
    image grids, best-checkpoint save), then saves one checkpoint. Measured: ``fit_step_s`` (mean
    wall time per step between the 2nd and the last, validation excluded), ``in_step_s`` (the
    part between ``on_train_batch_start`` and ``on_train_batch_end``: forward, backward,
    optimiser; the rest is data wait, logging, progress bar, callbacks), ``val_s`` (one
    validation with its callbacks), ``checkpoint_s`` (one save). On a shared machine the bare
    loop and the fit run at different moments, so ``fit_loop_pct`` (fit step vs bare step) is
    noisy; ``fit_overhead_pct`` is load-robust: everything outside the step, over the run, as a
    share of ``in_step_s`` measured in the same fit. Extrapolated to the config's run
    (``run_steps``: ``max_steps`` or what ``max_time`` allows; validations every
    ``check_val_every_n_epoch`` epochs / ``val_check_interval``; the every-N-steps checkpoint, the
    last one and a best-checkpoint save per validation): ``fit_overhead_pct`` = extra time / the
    bare loop's time for the same steps.
    """
    import tempfile

    from pytorch_lightning.callbacks import Callback, ModelCheckpoint

    class Clock(Callback):
        def __init__(self) -> None:
            self.marks: list[float] = []
            self.inside: list[float] = []
            self.val_s = 0.0
            self._v = self._b = 0.0

        def on_train_batch_start(self, *args, **kwargs) -> None:
            self._b = time.perf_counter()

        def on_train_batch_end(self, *args, **kwargs) -> None:
            self.marks.append(time.perf_counter())
            self.inside.append(self.marks[-1] - self._b)

        def on_validation_start(self, *args, **kwargs) -> None:
            self._v = time.perf_counter()

        def on_validation_end(self, trainer, *args, **kwargs) -> None:
            if not trainer.sanity_checking:
                self.val_s += time.perf_counter() - self._v

    base = _overrides(config, batch_size, extra)
    base = [a for a in base if a not in ("--trainer.logger", "false")]
    reference = cli.main(args=base, run=False).trainer  # the config's own schedule
    every_epochs = reference.check_val_every_n_epoch
    interval = reference.val_check_interval
    ckpt_every = [cb._every_n_train_steps for cb in reference.checkpoint_callbacks if getattr(cb, "_every_n_train_steps", 0)]
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        args = base + ["--trainer.default_root_dir", tmp, "--trainer.max_steps", str(steps), "--trainer.max_time", "null",
                       "--trainer.val_check_interval", str(steps), "--trainer.check_val_every_n_epoch", "null",
                       "--trainer.num_sanity_val_steps", "0", "--trainer.accelerator", torch.device(device).type, "--trainer.devices", "1"]
        run = cli.main(args=args, run=False)
        clock = Clock()
        run.trainer.callbacks.append(clock)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run.trainer.fit(run.model, datamodule=run.datamodule)
            t = time.perf_counter()
            run.trainer.save_checkpoint(str(Path(tmp) / "probe.ckpt"))
            checkpoint_s = time.perf_counter() - t
        steps_per_epoch = run.trainer.num_training_batches
    marks = clock.marks
    fit_step_s = (marks[-1] - marks[1]) / (len(marks) - 2) if len(marks) > 2 else float("nan")  # validation runs after the last mark
    run_steps = _config_run_length(reference, fit_step_s)
    if isinstance(interval, int) and every_epochs is None:
        vals = run_steps / interval
    else:
        per_epoch = 1.0 / interval if isinstance(interval, float) else max(1, steps_per_epoch // max(1, interval))
        vals = run_steps / (steps_per_epoch * (every_epochs or 1)) * per_epoch
    saves = sum(run_steps / n for n in ckpt_every) + 1 + vals
    in_step_s = sum(clock.inside[2:]) / max(1, len(clock.inside) - 2)
    extra_s = (fit_step_s - in_step_s) * run_steps + vals * clock.val_s + saves * checkpoint_s
    return {
        "fit_step_s": fit_step_s, "in_step_s": in_step_s, "val_s": clock.val_s, "checkpoint_s": checkpoint_s, "run_steps": run_steps,
        "run_validations": vals, "run_checkpoints": saves,
        "fit_loop_pct": 100 * (fit_step_s / bare_step_s - 1),
        "fit_overhead_pct": 100 * extra_s / (in_step_s * run_steps),
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
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="32", help="autocast like the Trainer's precision")
    parser.add_argument("--fit", type=int, default=0, metavar="N", help="also time N steps of the real fit loop (see fit_overhead)")
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
        r = benchmark(Path(config), a.steps, a.warmup, a.batch_size, a.device, a.set, a.precision)
        r["pct_of_matmul_peak"] = 100 * r["gflops_achieved"] / peak
        r["data_pct"] = 100 * r["data_s"] / r["step_s"]
        if a.fit:
            r.update(fit_overhead(Path(config), a.fit, a.batch_size, a.device, a.set, r["step_s"]))
        rows.append(r)
    cols = ["params_M", "images_per_step", "step_s", "images_per_s", "data_s", "data_pct", "forward_s", "backward_s",
            "optimiser_s", "gflop_per_step", "gflops_achieved", "pct_of_matmul_peak"]  # fmt: skip
    if a.fit:
        cols += ["fit_step_s", "in_step_s", "val_s", "checkpoint_s", "run_validations", "fit_loop_pct", "fit_overhead_pct"]
    title = f"Training speed ({a.device}, {torch.get_num_threads()} threads, fp32 matmul peak {peak:.1f} GFLOP/s, mean of {a.steps} steps)"
    print(format_table(title, {r["config"]: r for r in rows}, cols), flush=True)
    if a.json:
        atomic_write_text(a.json, json.dumps({"matmul_peak_gflops": peak, "threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
